"""Frame -> model inputs: the lidar BEV pillar statistics, the camera tensor, the lidar->image projection, and
the labelled boxes in the lidar frame. One sample dict per frame, keyed by modality (DESIGN section 2)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .io import Frame, label_to_lidar_box
from .boxes import encode_targets
from .models import DetectorConfig


def crop_points(points: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """Keep points inside the BEV grid first: everything after scales with what is left."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    keep = ((x >= cfg.x_range[0]) & (x < cfg.x_range[1]) & (y >= cfg.y_range[0]) & (y < cfg.y_range[1])
            & (z >= cfg.z_min) & (z < cfg.z_max))
    return points[keep]


def ground_map(z: torch.Tensor, idx: torch.Tensor, cfg: DetectorConfig) -> torch.Tensor:
    """[NX, NY] local ground height: the lowest point within ``ground_window`` cells (the road beside and under a
    car), a 3x wider window where that is empty, and the cloud's 2nd percentile where even that is empty."""
    n = cfg.nx * cfg.ny
    low = torch.full((n,), float("inf"))
    if len(z):
        low.scatter_reduce_(0, idx, z, "amin")
    grid = low.view(1, 1, cfg.nx, cfg.ny)
    k = cfg.ground_window | 1
    near = -_max_pool_separable(-grid, k)
    wide = -_max_pool_separable(-grid, 3 * k)
    fallback = float(torch.quantile(z, 0.02)) if len(z) else -1.73
    g = torch.where(torch.isfinite(near), near, torch.where(torch.isfinite(wide), wide, torch.full_like(wide, fallback)))
    return g.view(cfg.nx, cfg.ny)


def _max_pool_separable(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k max pool (stride 1, same size) as a k x 1 then a 1 x k pool: the same result (max is separable) for
    2k instead of k^2 comparisons per cell; the 27 x 27 ground window cost ~30 ms per frame the direct way."""
    x = F.max_pool2d(x, (k, 1), 1, (k // 2, 0))
    return F.max_pool2d(x, (1, k), 1, (0, k // 2))


def lidar_bev(points: np.ndarray, cfg: DetectorConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([C, NX, NY] pillar statistics of the cropped cloud, [NX/stride, NY/stride] ground height or None).

    With ``cfg.ground_relative`` every height (max, mean, slices) is measured above the local ground, so a slope,
    a pitched sensor or another mounting height do not move the features."""
    pts = torch.from_numpy(np.ascontiguousarray(crop_points(points, cfg), dtype=np.float32))
    n = cfg.nx * cfg.ny
    out = torch.zeros(cfg.lidar_channels, n)
    ix = ((pts[:, 0] - cfg.x_range[0]) / cfg.cell).long().clamp_(0, cfg.nx - 1)
    iy = ((pts[:, 1] - cfg.y_range[0]) / cfg.cell).long().clamp_(0, cfg.ny - 1)
    idx = ix * cfg.ny + iy
    ground_head = None
    if cfg.ground_relative:
        ground = ground_map(pts[:, 2], idx, cfg)
        height = pts[:, 2] - ground.view(-1)[idx]
        zn = height / 3.0
        ground_head = F.avg_pool2d(ground[None, None], cfg.stride)[0, 0]
    else:
        height = pts[:, 2]
        zn = (pts[:, 2] - cfg.z_min) / (cfg.z_max - cfg.z_min)
    if len(pts):
        count = torch.bincount(idx, minlength=n).float()
        safe = count.clamp(min=1)
        out[0] = torch.log1p(count) / math.log(64.0)
        out[1].scatter_reduce_(0, idx, zn, "amax")
        out[2] = torch.bincount(idx, weights=zn, minlength=n) / safe
        out[3] = torch.bincount(idx, weights=pts[:, 3].clamp(0, 1), minlength=n) / safe
        edges = torch.tensor(cfg.slices)
        s = torch.bucketize(height.contiguous(), edges) - 1
        ok = (s >= 0) & (s < len(cfg.slices) - 1)
        occ = torch.bincount(s[ok] * n + idx[ok], minlength=n * (len(cfg.slices) - 1)).view(-1, n)
        out[4:] = (occ > 0).float()
    return out.view(cfg.lidar_channels, cfg.nx, cfg.ny), ground_head


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


def augmentation(rng: np.random.Generator, rotation: float = math.pi / 4, scale=(0.95, 1.05),
                 translation=(0.5, 0.5, 0.1)) -> np.ndarray:
    """A random 4x4 lidar-frame transform: mirror y (p = 0.5), rotate about z (+-rotation), scale, translate."""
    T = np.eye(4)
    if rng.random() < 0.5:
        T[1, 1] = -1.0
    a, s = rng.uniform(-rotation, rotation), rng.uniform(*scale)
    c, si = math.cos(a), math.sin(a)
    R = np.eye(4)
    R[:2, :2] = [[c, -si], [si, c]]
    T = R @ T
    T[:3, :3] *= s
    T[:3, 3] = rng.normal(0, translation)
    return T


def transform_boxes(boxes: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Lidar boxes [N, 7] through a mirror/rotation/scale/translation ``T`` (no shear)."""
    if not len(boxes):
        return boxes
    out = boxes.copy()
    out[:, :3] = boxes[:, :3] @ T[:3, :3].T + T[:3, 3]
    s = float(np.cbrt(abs(np.linalg.det(T[:3, :3]))))
    out[:, 3:6] *= s
    # the heading direction (cos, sin) through the 2D linear part (handles the mirror too)
    d = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], 1) @ T[:2, :2].T
    out[:, 6] = np.arctan2(d[:, 1], d[:, 0])
    return out


def make_sample(frame: Frame, cfg: DetectorConfig, targets: bool = False, transform: np.ndarray | None = None,
                camera: bool = True) -> dict:
    """Frame -> the model's sample dict (``camera=False``: a blank image, for a model that will not look at it).

    ``transform`` (4x4, from ``augmentation``) moves the lidar points and boxes; the camera image stays as it is and
    the projection becomes ``proj @ inverse(transform)``, so every moved point still looks up the pixel it came from.
    """
    points = frame.points
    proj = projection(frame.calib, frame.image.shape)
    if transform is not None:
        points = points.copy()
        points[:, :3] = points[:, :3] @ transform[:3, :3].T.astype(np.float32) + transform[:3, 3].astype(np.float32)
        proj = proj @ torch.tensor(np.linalg.inv(transform), dtype=torch.float32)
    lidar, ground = lidar_bev(points, cfg)
    image = camera_input(frame.image, cfg) if camera else torch.zeros(3, *cfg.image_size)
    sample = {"lidar": lidar, "camera": image, "proj": proj, "meta": {"frame": frame.id}}
    if ground is not None:
        sample["ground"] = ground
    if targets:
        boxes, cls = gt_boxes(frame, cfg)
        if transform is not None:
            boxes = transform_boxes(boxes, transform)
        sample["targets"] = encode_targets(boxes, cls, cfg, ground)
    return sample
