"""Frame -> model inputs: the lidar BEV pillar statistics, the camera tensor, the lidar->image projection, and
the labelled boxes in the lidar frame. One sample dict per frame, keyed by modality (DESIGN section 2)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .io import Frame, label_to_lidar_box
from .boxes import encode_targets
from .models import DetectorConfig


def crop_points(points: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """Keep points inside the BEV grid first: everything after scales with what is left."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    keep = ((x >= cfg.x_range[0]) & (x < cfg.x_range[1]) & (y >= cfg.y_range[0]) & (y < cfg.y_range[1])
            & (z >= cfg.z_min) & (z < cfg.z_max))
    return points[keep]


def lidar_bev(points: np.ndarray, cfg: DetectorConfig) -> torch.Tensor:
    """[C, NX, NY] pillar statistics of the cropped cloud."""
    pts = torch.from_numpy(np.ascontiguousarray(crop_points(points, cfg), dtype=np.float32))
    n = cfg.nx * cfg.ny
    out = torch.zeros(cfg.lidar_channels, n)
    if len(pts):
        ix = ((pts[:, 0] - cfg.x_range[0]) / cfg.cell).long().clamp_(0, cfg.nx - 1)
        iy = ((pts[:, 1] - cfg.y_range[0]) / cfg.cell).long().clamp_(0, cfg.ny - 1)
        idx = ix * cfg.ny + iy
        zn = (pts[:, 2] - cfg.z_min) / (cfg.z_max - cfg.z_min)
        count = torch.bincount(idx, minlength=n).float()
        safe = count.clamp(min=1)
        out[0] = torch.log1p(count) / math.log(64.0)
        out[1].scatter_reduce_(0, idx, zn, "amax")
        out[2] = torch.bincount(idx, weights=zn, minlength=n) / safe
        out[3] = torch.bincount(idx, weights=pts[:, 3].clamp(0, 1), minlength=n) / safe
        edges = torch.tensor(cfg.slices)
        s = torch.bucketize(pts[:, 2].contiguous(), edges) - 1
        ok = (s >= 0) & (s < len(cfg.slices) - 1)
        occ = torch.bincount(s[ok] * n + idx[ok], minlength=n * (len(cfg.slices) - 1)).view(-1, n)
        out[4:] = (occ > 0).float()
    return out.view(cfg.lidar_channels, cfg.nx, cfg.ny)


def camera_input(image: np.ndarray, cfg: DetectorConfig) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, h, w] at the camera branch size, roughly zero-mean."""
    from PIL import Image

    h, w = cfg.image_size
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((w, h), Image.BILINEAR))
    t = torch.from_numpy(small.copy()).permute(2, 0, 1).float() / 255.0  # PIL resize: fast and antialiased
    return (t - 0.45) / 0.25


def projection(calib, image_shape) -> torch.Tensor:
    """[3, 4] lidar -> normalised image coordinates in [-1, 1] (grid_sample convention)."""
    H, W = image_shape[:2]
    P = calib.P2 @ calib.velo_to_rect  # 3x4 @ 4x4
    N = np.array([[2.0 / W, 0, -1.0], [0, 2.0 / H, -1.0], [0, 0, 1.0]])
    return torch.tensor(N @ P, dtype=torch.float32)


def gt_boxes(frame: Frame, cfg: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Lidar-frame boxes and class indices of the labelled objects of our classes."""
    boxes, cls = [], []
    for o in frame.labels or []:
        if o.type in cfg.classes:
            boxes.append(label_to_lidar_box(o, frame.calib))
            cls.append(cfg.classes.index(o.type))
    return np.array(boxes).reshape(-1, 7), np.array(cls, dtype=np.int64)


def make_sample(frame: Frame, cfg: DetectorConfig, targets: bool = False, flip: bool = False) -> dict:
    """Frame -> the model's sample dict; flip mirrors lidar (y -> -y), image and projection consistently."""
    points = frame.points
    image = frame.image
    proj = projection(frame.calib, image.shape)
    if flip:
        points = points * np.array([1, -1, 1, 1], np.float32)
        image = image[:, ::-1]
        # u' = -u for the mirrored point: flip the first output row and the input y column
        proj = proj.clone()
        proj[0] = -proj[0]
        proj[:, 1] = -proj[:, 1]
    sample = {"lidar": lidar_bev(points, cfg), "camera": camera_input(image, cfg), "proj": proj,
              "meta": {"frame": frame.id}}
    if targets:
        boxes, cls = gt_boxes(frame, cfg)
        if flip and len(boxes):
            boxes[:, 1] *= -1
            boxes[:, 6] *= -1
        sample["targets"] = encode_targets(boxes, cls, cfg)
    return sample

