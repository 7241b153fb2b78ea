"""Evaluate a detector on a labelled KITTI split (official AP_R40 from ``driving.kitti_eval``, modality ablations),
and count found / missed / false objects per frame the way a user looks at a real frame."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

from .geometry import rotated_intersection
from .io import Object3D, list_frames, load_frame
from .kitti_eval import _bev, iou_3d, iou_bev, kitti_ap, overlap_over_detection


def recall_within(gt_frames, det_frames, cls="Car", max_range=40.0, iou_thr=0.5, metric="bev") -> dict:
    """Share of labelled ``cls`` objects closer than max_range (camera z) found at the given IoU."""
    iou = iou_3d if metric == "3d" else iou_bev
    found = total = 0
    for gts, dets in zip(gt_frames, det_frames):
        ds = [d for d in dets if d.type == cls]
        for g in gts:
            if g.type != cls or np.hypot(g.x, g.z) > max_range:
                continue
            total += 1
            found += any(iou(d, g) >= iou_thr for d in ds)
    return {"recall": found / total if total else None, "found": found, "total": total,
            "max_range_m": max_range, "iou": iou_thr, "metric": metric}


# ----------------------------------------------------------------------------------------------- a split
ABLATIONS = {"fusion": ("lidar", "camera"), "lidar_only": ("lidar",), "camera_only": ("camera",)}


def evaluate_split(split, pipe, ids=None, ablations: bool = True, workers: int = 1) -> dict:
    """KITTI AP of the pipeline on a labelled split, plus modality ablations for the learned model."""
    from mmapps.progress import track

    ids = list(ids) if ids is not None else list_frames(Path(split))
    # AP integrates over the whole score range: keep low-scored boxes too (perceive reports >= 0.3)
    pipe = copy.copy(pipe)
    pipe.score_thresh = min(pipe.score_thresh, 0.1)
    modes = ABLATIONS if (ablations and pipe.method == "learned") else {"fusion": ("lidar", "camera")}
    if workers > 1 and len(ids) > 1:
        from mmapps.parallel import parallel_map

        # each process rebuilds the pipeline from the same checkpoint; frames are split in chunks
        n = min(workers, len(ids))
        chunks = [(str(split), ids[i::n], pipe.path, pipe.method, pipe.score_thresh, modes) for i in range(n)]
        parts = parallel_map(_detect_chunk, chunks, n, "evaluating")
        order = {fid: k for k, fid in enumerate(ids)}
        rows = sorted((r for part in parts for r in part), key=lambda r: order[r[0]])
    else:
        rows = [_detect_one(split, fid, pipe, modes) for fid in track(ids, "evaluating")]
    gts = [r[1] for r in rows]
    dets = {m: [r[2][m] for r in rows] for m in modes}
    main = kitti_ap(gts, dets["fusion"])
    result = {"split": str(split), "frames": len(ids), "method": pipe.method, **main,
              "car_recall_40m": recall_within(gts, dets["fusion"], "Car", 40.0, 0.5, "bev")}
    if len(modes) > 1:
        result["ablations"] = {}
        for m in modes:
            ap = main if m == "fusion" else kitti_ap(gts, dets[m])
            result["ablations"][m] = {"ap3d": ap["ap3d"], "apbev": ap["apbev"]}
    else:
        result["ablations"] = {}
    return result


def _detect_one(split, fid, pipe, modes) -> tuple:
    frame = load_frame(split, fid)
    if frame.labels is None:
        raise UserError(f"{Path(split) / 'label_2' / (fid + '.txt')}: evaluation needs labels")
    return fid, frame.labels, {m: pipe.to_objects(frame, pipe.detect(frame, mods)) for m, mods in modes.items()}


def _detect_chunk(args) -> list[tuple]:
    split, ids, model_path, method, thresh, modes = args
    import torch

    from .pipeline import load_pipeline

    torch.set_num_threads(1)  # one process per core
    pipe = load_pipeline(model_path, "cpu", method, score_thresh=thresh)
    return [_detect_one(split, fid, pipe, modes) for fid in ids]


def frame_counts(gts: list[Object3D], dets: list[Object3D], cls: str = "Car", iou_thr: float = 0.5, metric: str = "bev",
                 max_range: float = 50.0) -> dict:
    """One frame, as a user would count it: labelled ``cls`` objects within ``max_range`` found / missed at the
    IoU, and detections within ``max_range`` (any class) that overlap no labelled object at all ("false").

    A detection overlaps a label when their BEV footprints intersect; detections whose 2D box lies mostly (> 50 %
    of its area) inside a DontCare region are not counted as false (the devkit's DontCare criterion)."""
    iou = iou_3d if metric == "3d" else iou_bev
    targets = [g for g in gts if g.type == cls and np.hypot(g.x, g.z) <= max_range]
    near = [d for d in dets if np.hypot(d.x, d.z) <= max_range]
    found = sum(any(d.type == cls and iou(d, g) >= iou_thr for d in near) for g in targets)
    labelled = [g for g in gts if g.type != "DontCare"]
    dont_care = [g.box2d for g in gts if g.type == "DontCare"]
    false = sum(not any(rotated_intersection(_bev(d), _bev(g)) > 0 for g in labelled)
                and not any(overlap_over_detection(d.box2d, dc) > 0.5 for dc in dont_care) for d in near)
    return {"found": found, "missed": len(targets) - found, "false": false, "labelled": len(targets),
            "detections": len(near)}


# ----------------------------------------------------------------------------------------------- robustness
def _turn(t: float) -> np.ndarray:
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s], [s, c]])


def sensor_variants() -> dict:
    """How other cars, mountings and lidars would record the same street: {name: (points -> points, box in the
    changed frame -> box in the recorded one)}. The sensor mounted 0.3 m higher / lower, turned +-10 degrees,
    pitched +-2 degrees, and a lidar whose reflectance reads half / twice as bright. For measuring, never choosing."""
    def lift(dz):
        def pts(p):
            p = p.copy()
            p[:, 2] -= dz  # a higher sensor sees everything lower
            return p

        def box(b):
            b = b.copy()
            b[2] += dz
            return b
        return pts, box

    def yaw(t):
        R = _turn(t)

        def pts(p):
            p = p.copy()
            p[:, :2] = p[:, :2] @ R.T
            return p

        def box(b):
            b = b.copy()
            b[:2] = R.T @ b[:2]
            b[6] -= t
            return b
        return pts, box

    def pitch(t):
        R = _turn(t)  # in the x-z plane: the nose of the car down for t > 0

        def pts(p):
            p = p.copy()
            p[:, [0, 2]] = p[:, [0, 2]] @ R.T
            return p

        def box(b):
            b = b.copy()
            b[[0, 2]] = R.T @ b[[0, 2]]
            return b
        return pts, box

    def bright(k):
        def pts(p):
            p = p.copy()
            p[:, 3] = np.clip(p[:, 3] * k, 0.0, 1.0)
            return p
        return pts, lambda b: b

    return {"sensor 0.3 m higher": lift(0.3), "sensor 0.3 m lower": lift(-0.3),
            "turned +10 deg": yaw(np.radians(10)), "turned -10 deg": yaw(np.radians(-10)),
            "pitched +2 deg": pitch(np.radians(2)), "pitched -2 deg": pitch(np.radians(-2)),
            "reflectance x0.5": bright(0.5), "reflectance x2": bright(2.0)}


def export_variants() -> dict:
    """The same sweep as other tools write it, in :func:`sensor_variants`' form: an 8-bit intensity (0-255, as
    nuScenes and many drivers' exports store it) instead of KITTI's [0, 1] reflectance. For measuring."""
    def eight_bit(p):
        p = p.copy()
        p[:, 3] = np.round(p[:, 3] * 255.0)
        return p

    return {"8-bit intensity (0-255)": (eight_bit, lambda b: b)}


def variant_counts(pipe, frame, cls: str = "Car", variants: dict | None = None) -> dict:
    """{variant: {"bev0.5": frame_counts, "3d0.7": frame_counts}} for the frame as recorded and under every change of
    ``variants`` (default :func:`sensor_variants`), the detections mapped back to the recorded frame before counting."""
    from .io import lidar_box_to_label

    shape = frame.image.shape if frame.image is not None else None
    variants = sensor_variants() if variants is None else variants
    out = {}
    for name, (pts, box) in {"as recorded": (lambda p: p, lambda b: b), **variants}.items():
        changed = copy.copy(frame)
        changed.points = pts(frame.points)
        dets = pipe.detect(changed)
        objs = [lidar_box_to_label(box(np.asarray(d["box3d"], float)), frame.calib, d["class"], round(d["score"], 4),
                                   shape) for d in dets]
        out[name] = {"bev0.5": frame_counts(frame.labels, objs, cls, 0.5, "bev"),
                     "3d0.7": frame_counts(frame.labels, objs, cls, 0.7, "3d")}
    return out
