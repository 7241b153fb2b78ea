"""Ground-truth sampling (SECOND / OpenPCDet's "gt_sampling"): paste labelled objects, with their lidar points,
from other training scenes into the current one. Rare classes (cyclists, pedestrians) appear in many more contexts
per epoch, and the detector sees objects next to walls and hedges it never saw them beside.

An object keeps its range and bearing from the sensor (so its point density and self-occlusion stay right), is
lowered or raised onto the target scene's local ground, and is refused when its bird's-eye footprint would touch a
labelled or already pasted object. Scene points inside a pasted box are removed. The camera image is not edited:
pasted objects are lidar-only, as in most lidar-camera detectors that use this augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .io import load_frame
from .preprocess import gt_boxes
from .models import DetectorConfig


def points_in_box(points: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Bool mask of the points [N, >=3] inside a lidar box [x, y, z, l, w, h, yaw] (centre z), grown by ``margin``."""
    d = points[:, :3] - box[:3]
    c, s = np.cos(box[6]), np.sin(box[6])
    u = d[:, 0] * c + d[:, 1] * s  # along the heading
    v = -d[:, 0] * s + d[:, 1] * c
    return ((np.abs(u) <= box[3] / 2 + margin) & (np.abs(v) <= box[4] / 2 + margin)
            & (np.abs(d[:, 2]) <= box[5] / 2 + margin))


@dataclass
class BankObject:
    cls: int
    box: np.ndarray  # [7] lidar frame of its source scene
    points: np.ndarray  # [N, 4] float32, relative to the box centre (x, y, z) + reflectance


class ObjectBank:
    """Labelled objects of the training frames with at least ``min_points`` lidar points each."""

    def __init__(self, objects: list[BankObject], classes):
        self.classes = tuple(classes)
        self.by_class = {c: [o for o in objects if o.cls == c] for c in range(len(self.classes))}

    @classmethod
    def from_frames(cls, split, ids, cfg: DetectorConfig, min_points: int = 10, per_class_cap: int = 3000,
                    seed: int = 0) -> "ObjectBank":
        rng = np.random.default_rng(seed)
        objects: list[BankObject] = []
        for fid in ids:
            frame = load_frame(split, fid)
            boxes, labels = gt_boxes(frame, cfg)
            for box, c in zip(boxes, labels):
                inside = points_in_box(frame.points, box)
                if inside.sum() >= min_points:
                    pts = frame.points[inside].astype(np.float32).copy()
                    pts[:, :3] -= box[:3].astype(np.float32)
                    objects.append(BankObject(int(c), box.astype(np.float64), pts))
        bank = cls(objects, cfg.classes)
        for c, objs in bank.by_class.items():  # bounded memory: a uniform subset of each class
            if len(objs) > per_class_cap:
                keep = rng.choice(len(objs), per_class_cap, replace=False)
                bank.by_class[c] = [objs[i] for i in sorted(keep)]
        return bank

    def __len__(self):
        return sum(len(v) for v in self.by_class.values())

    def counts(self) -> dict[str, int]:
        return {self.classes[c]: len(v) for c, v in self.by_class.items()}

    def paste(self, points: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
              per_class: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``per_class[c]`` objects of class c pasted into the scene (points [N, 4], boxes [M, 7], labels [M]).
        Returns the new (points, boxes, labels); the pasted boxes come after the scene's own."""
        placed = list(boxes)
        new_boxes, new_labels, new_points = [], [], []
        keep = np.ones(len(points), dtype=bool)
        for c, k in per_class.items():
            pool = self.by_class.get(c, [])
            if not pool or k <= 0:
                continue
            for i in rng.choice(len(pool), min(k, len(pool)), replace=False):
                obj = pool[int(i)]
                box = obj.box.copy()
                radius = 0.5 * float(np.hypot(box[3], box[4]))
                if any(np.hypot(*(box[:2] - p[:2])) < radius + 0.5 * float(np.hypot(p[3], p[4])) + 0.2 for p in placed):
                    continue  # would touch an object already there: real objects do not overlap
                near = np.hypot(points[:, 0] - box[0], points[:, 1] - box[1]) < max(radius, 1.0) + 1.0
                if near.any():  # stand on the target scene's local ground (slopes, other sensor heights)
                    box[2] = float(np.percentile(points[near, 2], 2)) + box[5] / 2
                keep &= ~points_in_box(points, box, margin=0.1)
                pts = obj.points.copy()
                pts[:, :3] += box[:3].astype(np.float32)
                placed.append(box)
                new_boxes.append(box)
                new_labels.append(c)
                new_points.append(pts)
        if not new_boxes:
            return points, boxes, labels
        points = np.concatenate([points[keep]] + new_points).astype(points.dtype, copy=False)
        boxes = np.concatenate([boxes.reshape(-1, 7), np.array(new_boxes)])
        labels = np.concatenate([labels, np.array(new_labels, dtype=labels.dtype)])
        return points, boxes, labels
