"""The classical baseline: open3d RANSAC ground removal + voxel downsampling + DBSCAN + oriented boxes + size rules.

It needs no checkpoint (``Pipeline.classical()``) and is the yardstick the learned detector must beat by 0.20 AP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClassicalConfig:
    voxel: float = 0.15
    ransac_threshold: float = 0.2
    eps: float = 0.6
    min_points: int = 5
    max_range: float = 70.0
    size_rules: dict = field(default_factory=lambda: {
        # class: (min l, max l, min w, max w, min h, max h)
        "Car": (2.5, 6.0, 1.2, 2.6, 1.0, 2.2),
        "Pedestrian": (0.2, 1.2, 0.2, 1.0, 1.0, 2.1),
        "Cyclist": (1.2, 2.2, 0.3, 1.0, 1.2, 2.1),
    })


def classical_detect(points: np.ndarray, cfg: ClassicalConfig | None = None) -> list[dict]:
    """open3d RANSAC ground removal -> voxel downsample -> DBSCAN -> oriented boxes -> size rules."""
    import open3d as o3d

    cfg = cfg or ClassicalConfig()
    pts = points[(points[:, 0] > 0) & (np.hypot(points[:, 0], points[:, 1]) < cfg.max_range)
                 & (points[:, 2] > -3) & (points[:, 2] < 1.5)]
    if len(pts) < 10:
        return []
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[:, :3].astype(np.float64)))
    pcd = pcd.voxel_down_sample(cfg.voxel)  # DBSCAN memory grows with density: thin the cloud first
    o3d.utility.random.seed(0)
    _, inliers = pcd.segment_plane(cfg.ransac_threshold, 3, 200)
    plane_pts = np.asarray(pcd.points)[inliers]
    ground_z = float(np.median(plane_pts[:, 2])) if len(plane_pts) else -1.73
    obj = pcd.select_by_index(inliers, invert=True)
    xyz = np.asarray(obj.points)
    xyz_keep = xyz[(xyz[:, 2] > ground_z + 0.15) & (xyz[:, 2] < ground_z + 2.5)]
    if len(xyz_keep) < cfg.min_points:
        return []
    obj = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz_keep))
    labels = np.asarray(obj.cluster_dbscan(cfg.eps, cfg.min_points))
    dets = []
    for k in range(labels.max() + 1 if len(labels) else 0):
        c = xyz_keep[labels == k]
        if len(c) < cfg.min_points:
            continue
        box = _oriented_box(c, ground_z)
        cls = _size_rule(box, cfg.size_rules)
        if cls is None:
            continue
        score = float(min(0.95, 0.3 + 0.1 * math.log1p(len(c))))
        dets.append({"class": cls, "score": score, "box3d": box})
    return dets


def _oriented_box(c: np.ndarray, ground_z: float) -> np.ndarray:
    """Minimum-area rectangle over a few headings (BEV), height from the ground to the top point."""
    xy = c[:, :2]
    best = None
    for a in np.linspace(0, np.pi / 2, 18, endpoint=False):
        R = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        p = xy @ R.T
        lo, hi = p.min(0), p.max(0)
        area = np.prod(hi - lo)
        if best is None or area < best[0]:
            best = (area, a, lo, hi)
    _, a, lo, hi = best
    ctr = (lo + hi) / 2
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    cxy = R @ ctr
    ext = hi - lo
    l, w, yaw = (ext[0], ext[1], a) if ext[0] >= ext[1] else (ext[1], ext[0], a + np.pi / 2)
    top = c[:, 2].max()
    h = top - ground_z
    return np.array([cxy[0], cxy[1], ground_z + h / 2, l, w, h, yaw])


def _size_rule(box, rules) -> str | None:
    l, w, h = box[3], box[4], box[5]
    for cls, (l0, l1, w0, w1, h0, h1) in rules.items():
        if l0 <= l <= l1 and w0 <= w <= w1 and h0 <= h <= h1:
            return cls
    return None
