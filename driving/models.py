"""The learned camera+lidar BEV fusion detector: its config, network and loss.

Built for <= 100 ms per full KITTI frame on one CPU core:
- lidar: hand-crafted pillar statistics per 0.4 m BEV cell (``driving.preprocess.lidar_bev``), one stride-2 conv;
- camera: a small CNN on a 320x96 copy of the image; its features are lifted into the same BEV grid by
  projecting every cell centre at a few heights into the image (orthographic feature transform), so the
  camera branch needs no lidar and camera-only is a true ablation;
- per-cell fusion with the core's ``get_fusion`` module over {"lidar", "camera"} on the flattened cells with the
  core ``present`` masks (cells outside the camera view have camera present=False) and the core
  ``modality_dropout``. It is not a core ``FusionModel``: that fuses one vector per sample, this fuses one per
  BEV cell (B x 88 x 100 cells), so the grid is flattened into the fusion module's batch axis instead;
- a small 2D CNN and a CenterPoint-style head (class heatmaps + offset, z, log-size, sin/cos yaw) at 0.8 m,
  decoded in ``driving.boxes``;
- optionally (``refine=True``) a second stage, ``BoxRefiner``: a PointNet on the raw points of each decoded box
  predicts a residual and the box's 3D IoU (``driving.refine``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmapps.fusion import get_fusion
from mmapps.model import modality_dropout

from .io import CLASSES

MODALITIES = ("lidar", "camera")


@dataclass
class DetectorConfig:
    x_range: tuple = (0.0, 70.4)
    y_range: tuple = (-40.0, 40.0)
    cell: float = 0.4
    z_min: float = -3.0
    z_max: float = 1.0
    # height-slice edges: above the local ground estimate when ground_relative, else lidar-frame z (ground ~ -1.73)
    slices: tuple = (0.1, 0.4, 0.8, 1.2, 1.6, 2.0, 2.6)
    lift_heights: tuple = (-1.5, -1.0, -0.5, 0.0)
    image_size: tuple = (96, 320)  # (H, W) of the camera branch input
    width: int = 32
    cam_width: int = 24
    fusion: str = "gated"
    modality_dropout: float = 0.15
    classes: tuple = CLASSES
    stride: int = 2  # head resolution = cell * stride
    # Position priors off (issue 11): no absolute x/y input channels; heights and box z relative to a local ground
    # estimate; heading as the box axis (sin/cos of 2 yaw) plus a front/back direction classifier. The first
    # bundled model (2026-11) has coords=True, ground_relative=False, heading="sincos" stored in its checkpoint.
    coords: bool = False
    ground_relative: bool = True
    ground_window: int = 9  # cells (0.4 m): the lowest point within 3.6 m is the local ground
    heading: str = "axis_dir"
    # Second stage (``driving.refine``): a PointNet on the raw points of each detected box predicts a box residual
    # and the box's 3D IoU. Off in models trained before it existed (their checkpoints lack the key).
    refine: bool = False
    refine_points: int = 128
    refine_passes: int = 2  # the refiner applied again to its own boxes (validation Car AP3D 0.776 -> 0.804)
    # RoI grid pooling (Part-A2's RoI-aware pooling): the grown box cut into cells along length x width x height,
    # point features max-pooled per cell, so the refiner knows where in the box its points lie (a bumper's points
    # at the front end, not just somewhere). Empty: the global max-pool alone (checkpoints before 2026-11-30, evening).
    refine_grid: tuple = ()

    def __post_init__(self):
        for k, v in list(vars(self).items()):
            if isinstance(v, list):
                setattr(self, k, tuple(v))

    def validate(self) -> None:
        from mmapps.config import check_range
        from mmapps.errors import UserError, check_choice
        from mmapps.fusion import FUSIONS

        check_choice("model.fusion", self.fusion, FUSIONS.names())
        check_range("model.cell", self.cell, 0.05)
        check_choice("model.heading", self.heading, ("sincos", "axis_dir"))
        check_range("model.ground_window", self.ground_window, 1, 64)
        # Bounds on every size the model allocates from, so a tampered checkpoint cannot ask for gigabytes
        # (the grids are built with numpy, outside the core's meta-device shape check).
        check_range("model.width", self.width, 4, 1024)
        check_range("model.cam_width", self.cam_width, 4, 1024)
        check_range("model.stride", self.stride, 1, 8)
        check_range("model.refine_points", self.refine_points, 8, 4096)
        check_range("model.refine_passes", self.refine_passes, 1, 5)
        if self.refine_grid:
            if len(self.refine_grid) != 3:
                raise UserError(f"model.refine_grid must hold 3 cell counts (length, width, height); got {list(self.refine_grid)}")
            for n in self.refine_grid:
                check_range("model.refine_grid", n, 1, 16)
        for name in ("x_range", "y_range", "image_size"):
            value = getattr(self, name)
            if len(value) != 2:
                raise UserError(f"model.{name} must hold 2 numbers; got {list(value)}")
        for name in ("x_range", "y_range"):
            lo, hi = getattr(self, name)
            check_range(f"model.{name}", lo, -200.0, 200.0)
            check_range(f"model.{name}", hi, lo + self.cell, 200.0)
        for side in self.image_size:
            check_range("model.image_size", side, 16, 2048)
        if self.nx * self.ny > 2048 * 2048:
            raise UserError(f"model: a {self.nx}x{self.ny} BEV grid is larger than the 2048x2048-cell limit")

    @property
    def regression_channels(self) -> int:
        """dx, dy, z, log l, log w, log h, sin, cos (of yaw, or of 2 yaw for axis_dir) [+ direction logit]."""
        return 9 if self.heading == "axis_dir" else 8

    @property
    def nx(self) -> int:
        return int(round((self.x_range[1] - self.x_range[0]) / self.cell))

    @property
    def ny(self) -> int:
        return int(round((self.y_range[1] - self.y_range[0]) / self.cell))

    @property
    def lidar_channels(self) -> int:
        return 4 + len(self.slices) - 1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------- model
def conv(cin, cout, stride=1, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CameraBranch(nn.Module):
    """Small image CNN + orthographic lift of its features into the BEV grid."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 32), conv(32, cfg.cam_width, 1, 1))
        self.lift = conv(cfg.cam_width * len(cfg.lift_heights), cfg.width, 1, 1)
        # lifted straight onto the fusion grid (cell * stride): the camera cannot resolve finer anyway
        self.hx, self.hy = cfg.nx // cfg.stride, cfg.ny // cfg.stride
        st = cfg.cell * cfg.stride
        # grids in numpy, then one tensor: torch ops here would run under the core's meta-device shape check, where
        # they pull in torch._dynamo (1.5 s of imports on every CLI call)
        xs = cfg.x_range[0] + (np.arange(self.hx) + 0.5) * st
        ys = cfg.y_range[0] + (np.arange(self.hy) + 0.5) * st
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        pts = np.stack([np.stack([gx, gy, np.full_like(gx, z), np.ones_like(gx)], -1) for z in cfg.lift_heights], 0)
        self.register_buffer("cells", torch.tensor(pts, dtype=torch.float32), persistent=False)  # [K, NX, NY, 4]
        self.out_dim = cfg.width

    def forward(self, image, proj):
        feat = self.cnn(image)  # [B, C, h, w]
        uvw = torch.einsum("knmj,bij->bknmi", self.cells, proj)  # [B, K, NX, NY, 3]
        depth = uvw[..., 2:3]
        uv = uvw[..., :2] / depth.clamp(min=0.1)
        inside = (depth[..., 0] > 0.5) & (uv.abs() <= 1).all(-1)  # [B, K, NX, NY]
        uv = torch.where(inside.unsqueeze(-1), uv, torch.full_like(uv, 2.0))  # outside -> zero padding
        B, K = uv.shape[:2]
        s = F.grid_sample(feat, uv.reshape(B, K * self.hx, self.hy, 2), align_corners=False)
        s = s.view(B, -1, K, self.hx, self.hy).flatten(1, 2)
        return self.lift(s), inside.any(1)


class BEVFusionDetector(nn.Module):
    """Lidar BEV + lifted camera features, fused per cell by a core fusion module, CenterPoint head."""

    def __init__(self, cfg: DetectorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DetectorConfig()
        w = cfg.width
        # Everything after the first lidar conv runs on the 0.8 m grid: 4x fewer cells, the latency budget.
        self.lidar = conv(cfg.lidar_channels, w, cfg.stride)
        self.camera = CameraBranch(cfg)
        self.fusion = get_fusion(cfg.fusion, {"lidar": w, "camera": w}, out_dim=w)
        self.b2 = conv(w + (2 if cfg.coords else 0), 48)
        self.b3 = nn.Sequential(conv(48, 64, 2), conv(64, 64))
        self.up = nn.Sequential(nn.ConvTranspose2d(64, 48, 2, 2, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
        self.neck = conv(48, 48)
        nc = len(cfg.classes)
        self.refiner = BoxRefiner(cfg) if cfg.refine else None
        self.heatmap = nn.Conv2d(48, nc, 1)
        self.regress = nn.Conv2d(48, cfg.regression_channels, 1)
        nn.init.constant_(self.heatmap.bias, -2.19)  # prior 0.1, as CenterNet
        if cfg.coords:  # absolute-position channels: only the first bundled model; they teach position priors
            gx, gy = np.meshgrid(np.linspace(-1, 1, cfg.nx // cfg.stride), np.linspace(-1, 1, cfg.ny // cfg.stride),
                                 indexing="ij")
            self.register_buffer("coords", torch.tensor(np.stack([gx, gy])[None], dtype=torch.float32), persistent=False)
        self.last_weights: dict[str, torch.Tensor] = {}

    def forward(self, batch: dict) -> dict:
        cfg = self.cfg
        lid = batch["lidar"]
        B = lid.shape[0]
        present = {m: batch.get("present", {}).get(m, torch.ones(B, dtype=torch.bool, device=lid.device)).bool()
                   for m in MODALITIES}
        if self.training and cfg.modality_dropout > 0:
            present = modality_dropout(present, cfg.modality_dropout)
        fl = self.lidar(lid)
        hx, hy = fl.shape[2], fl.shape[3]
        if self.training or bool(present["camera"].any()):
            fc, cam_valid = self.camera(batch["camera"], batch["proj"])
        else:  # no sample sees the camera: the fusion would mask its features out anyway (lidar-only default: ~4 ms)
            fc = torch.zeros_like(fl)
            cam_valid = torch.zeros(B, hx, hy, dtype=torch.bool, device=fl.device)
        cells = hx * hy
        flat = {"lidar": fl.permute(0, 2, 3, 1).reshape(B * cells, -1),
                "camera": fc.permute(0, 2, 3, 1).reshape(B * cells, -1)}
        pres = {"lidar": present["lidar"][:, None].expand(B, cells).reshape(-1),
                "camera": (present["camera"][:, None] & cam_valid.reshape(B, cells)).reshape(-1)}
        fused = self.fusion(flat, pres).view(B, hx, hy, -1).permute(0, 3, 1, 2)
        self.last_weights = {m: v.view(B, cells).mean(1) for m, v in self.fusion.last_weights.items()}
        x = torch.cat([fused, self.coords.expand(B, -1, -1, -1)], 1) if cfg.coords else fused
        x2 = self.b2(x)
        x3 = self.up(self.b3(x2))
        x3 = F.pad(x3, (0, x2.shape[3] - x3.shape[3], 0, x2.shape[2] - x3.shape[2]))
        h = self.neck(x2 + x3)
        out = {"heatmap": self.heatmap(h), "regression": self.regress(h), "weights": self.last_weights}
        if "targets" in batch:
            losses = detection_loss(out, batch["targets"], cfg)
            out["losses"] = losses
            out["loss"] = losses["heatmap"] + 2.0 * losses["regression"]
        return out


class BoxRefiner(nn.Module):
    """Second stage: the points around one detected box, in that box's own frame -> a box residual and its IoU.

    A shared per-point MLP and a masked max-pool (PointNet), then the box's log size, class and first-stage score;
    out: 7 residual channels (``driving.refine.encode_residual``) and one IoU logit. With ``cfg.refine_grid`` the
    point features are also max-pooled per cell of the grown box (RoI grid pooling), which keeps where the points are:
    the ends and sides a box is fitted to. ~61 k parameters without the grid, 491 k with 6 x 4 x 2 cells; two passes
    over all of a real frame's proposals cost ~30-35 ms on one core (the first stage ~32 ms); ``refine_detections``
    skips the second pass for boxes that cannot reach the caller's score floor."""

    POINT_FEATURES = 7  # u, v, z in the box frame (m), the same over the half sizes, reflectance
    MARGIN_XY = 0.6  # m around the box on each side where points are gathered (the true box can stick out)
    MARGIN_Z = 0.4
    GRID_CHANNELS = 32

    def __init__(self, cfg: DetectorConfig, width: int = 128):
        super().__init__()
        self.cfg = cfg
        nc = len(cfg.classes)

        def mlp1d(cin, cout):
            return nn.Sequential(nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True))

        self.points = nn.Sequential(mlp1d(self.POINT_FEATURES, 64), mlp1d(64, 128), mlp1d(128, width))
        self.grid = tuple(int(n) for n in cfg.refine_grid)
        self.cells = math.prod(self.grid) if self.grid else 0
        grid_dim = 0
        if self.grid:
            self.grid_points = mlp1d(width, self.GRID_CHANNELS)
            self.grid_cells = nn.Sequential(nn.Linear(self.cells * self.GRID_CHANNELS, 256), nn.ReLU(inplace=True))
            grid_dim = 256
        self.box = nn.Sequential(nn.Linear(width + grid_dim + 3 + nc + 2, 128), nn.ReLU(inplace=True),
                                 nn.Linear(128, 128), nn.ReLU(inplace=True))
        self.residual = nn.Linear(128, 7)
        self.iou = nn.Linear(128, 1)
        nn.init.zeros_(self.residual.weight)  # start as the identity: the first-stage box unchanged
        nn.init.zeros_(self.residual.bias)

    def cell_index(self, points, mask, sizes):
        """[K, P] cell of each point in the grown box (length-major), padding -> one extra cell past the end."""
        half = sizes.clamp(min=0.05) / 2 + sizes.new_tensor([self.MARGIN_XY, self.MARGIN_XY, self.MARGIN_Z])
        unit = (points[:, :, :3] / half[:, None, :] + 1) / 2  # 0..1 across the grown box
        n = points.new_tensor(self.grid)
        cell = (unit * n).floor().clamp(min=0).minimum(n - 1).long()
        flat = (cell[..., 0] * self.grid[1] + cell[..., 1]) * self.grid[2] + cell[..., 2]
        return torch.where(mask, flat, torch.full_like(flat, self.cells))

    def forward(self, points, mask, sizes, classes, scores) -> dict:
        """points [K, P, 7], mask [K, P] bool, sizes [K, 3] (l, w, h of the box), classes [K] long, scores [K]
        -> {"residual": [K, 7], "iou": [K] logits}."""
        per_point = self.points(points.transpose(1, 2))  # [K, C, P]
        f = per_point.masked_fill(~mask[:, None, :], float("-inf")).amax(2)
        f = torch.where(torch.isfinite(f), f, torch.zeros_like(f))  # a box without points: no point evidence
        count = mask.sum(1, keepdim=True).float()
        parts = [f]
        if self.grid:
            cell_features = self.grid_points(per_point)  # [K, Cg, P], >= 0 after the ReLU: an empty cell reads 0
            idx = self.cell_index(points, mask, sizes)[:, None, :].expand_as(cell_features)
            pooled = cell_features.new_zeros(*cell_features.shape[:2], self.cells + 1).scatter_reduce(
                2, idx, cell_features, "amax")  # padding lands in the spare last cell, dropped here
            parts.append(self.grid_cells(pooled[:, :, :self.cells].flatten(1)))
        g = torch.cat([*parts, sizes.clamp(min=0.05).log(), F.one_hot(classes, len(self.cfg.classes)).float(),
                       scores[:, None], torch.log1p(count) / 5.0], 1)
        h = self.box(g)
        return {"residual": self.residual(h), "iou": self.iou(h)[:, 0]}


# ----------------------------------------------------------------------------------------------- loss

def focal_loss(logits, target):
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * neg
    n = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / n


def detection_loss(out, targets, cfg: DetectorConfig):
    """Focal heatmap loss + L1 on the 8 box channels at the centres (+ BCE of the direction bit for axis_dir)."""
    heat = focal_loss(out["heatmap"], targets["heatmap"])
    m = targets["mask"].unsqueeze(1)
    pred, target = out["regression"], targets["regression"]
    reg = (F.l1_loss(pred[:, :8], target[:, :8], reduction="none") * m).sum() / (m.sum() * 8).clamp(min=1)
    if cfg.heading == "axis_dir":
        bce = F.binary_cross_entropy_with_logits(pred[:, 8:9], target[:, 8:9], reduction="none")
        reg = reg + 0.2 * (bce * m).sum() / m.sum().clamp(min=1)
    return {"heatmap": heat, "regression": reg}
