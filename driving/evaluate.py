"""KITTI 3D-object evaluation (AP over 40 recall points) with rotated BEV / 3D IoU.

Follows the official devkit (eval.cpp, as ported to the R40 variant by SECOND/mmdet3d):
IoU 0.7 Car, 0.5 Pedestrian/Cyclist; difficulty by 2D box height (40/25/25 px), occlusion (0/1/2) and
truncation (0.15/0.3/0.5); Van is a neighbour class of Car and Person_sitting of Pedestrian (matched
detections are ignored, never false positives); detections inside DontCare regions are ignored;
detections lower than the difficulty's minimum height are ignored.
Rotated IoU: driving.geometry.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

from .geometry import bev_corners, clip_polygon, polygon_area, rotated_intersection  # noqa: F401 (re-exported)
from .io import CLASSES, Object3D, list_frames, load_frame

MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
DIFFICULTIES = ("easy", "moderate", "hard")
IOU_THRESH = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NEIGHBOUR = {"Car": "Van", "Pedestrian": "Person_sitting"}


def _bev(o: Object3D):
    # camera frame: ground plane is x-z; ry rotates about -y, so heading angle in (x, z) is -ry
    return (o.x, o.z, o.l, o.w, -o.ry)


def iou_bev(a: Object3D, b: Object3D) -> float:
    inter = rotated_intersection(_bev(a), _bev(b))
    union = a.l * a.w + b.l * b.w - inter
    return inter / union if union > 0 else 0.0


def iou_3d(a: Object3D, b: Object3D) -> float:
    # camera y points down: the box spans [y - h, y]
    dz = max(0.0, min(a.y, b.y) - max(a.y - a.h, b.y - b.h))
    inter = rotated_intersection(_bev(a), _bev(b)) * dz
    union = a.l * a.w * a.h + b.l * b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def _box2d_overlap_det(det, dc) -> float:
    """Intersection over the detection's own area (devkit criterion 0, used for DontCare)."""
    iw = min(det[2], dc[2]) - max(det[0], dc[0])
    ih = min(det[3], dc[3]) - max(det[1], dc[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    area = (det[2] - det[0]) * (det[3] - det[1])
    return iw * ih / area if area > 0 else 0.0


# ----------------------------------------------------------------------------------------------- protocol
def _clean(gts, dets, cls, diff):
    ig_gt, ig_det, dc = [], [], []
    n_gt = 0
    for g in gts:
        h = g.box2d[3] - g.box2d[1]
        valid = 1 if g.type == cls else (0 if g.type == NEIGHBOUR.get(cls) else -1)
        hard = g.occluded > MAX_OCCLUSION[diff] or g.truncated > MAX_TRUNCATION[diff] or h <= MIN_HEIGHT[diff]
        if valid == 1 and not hard:
            ig_gt.append(0)
            n_gt += 1
        elif valid == 0 or (hard and valid == 1):
            ig_gt.append(1)
        else:
            ig_gt.append(-1)
        if g.type == "DontCare":
            dc.append(g.box2d)
    for d in dets:
        h = d.box2d[3] - d.box2d[1]
        if d.type != cls:
            ig_det.append(-1)
        else:
            ig_det.append(1 if h < MIN_HEIGHT[diff] else 0)
    return ig_gt, ig_det, dc, n_gt


def _statistics(overlaps, gts, dets, ig_gt, ig_det, dc, min_overlap, thresh=0.0, compute_fp=False):
    """One frame: (tp, fp, fn, tp scores) at score threshold ``thresh`` (devkit compute_statistics)."""
    scores = np.array([d.score if d.score is not None else 1.0 for d in dets])
    assigned = np.zeros(len(dets), bool)
    ignored_thr = scores < thresh if compute_fp else np.zeros(len(dets), bool)
    tp = fp = fn = 0
    tp_scores = []
    for i in range(len(gts)):
        if ig_gt[i] == -1:
            continue
        det_idx, best_score, max_ov, assigned_ignored = -1, -np.inf, 0.0, False
        for j in range(len(dets)):
            if ig_det[j] == -1 or assigned[j] or ignored_thr[j]:
                continue
            ov = overlaps[j, i]
            if ov <= min_overlap:
                continue
            if not compute_fp:
                if scores[j] > best_score:
                    det_idx, best_score = j, scores[j]
            elif (ov > max_ov or assigned_ignored) and ig_det[j] == 0:
                max_ov, det_idx, assigned_ignored = ov, j, False
            elif det_idx == -1 and ig_det[j] == 1:
                det_idx, assigned_ignored = j, True
        if det_idx == -1:
            if ig_gt[i] == 0:
                fn += 1
        elif ig_gt[i] == 1 or ig_det[det_idx] == 1:
            assigned[det_idx] = True
        else:
            tp += 1
            tp_scores.append(scores[det_idx])
            assigned[det_idx] = True
    if compute_fp:
        for j in range(len(dets)):
            if not (assigned[j] or ig_det[j] == -1 or ig_det[j] == 1 or ignored_thr[j]):
                # unmatched detections inside a DontCare region are not false positives
                if not any(_box2d_overlap_det(dets[j].box2d, d) > 0.5 for d in dc):
                    fp += 1
    return tp, fp, fn, tp_scores


def _thresholds(scores, n_gt, n_points=41):
    scores = np.sort(np.asarray(scores))[::-1]
    out, current = [], 0.0
    for i, s in enumerate(scores):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < len(scores) - 1 else l_recall
        if (r_recall - current) < (current - l_recall) and i < len(scores) - 1:
            continue
        out.append(s)
        current += 1.0 / (n_points - 1)
    return out


def average_precision(gt_frames, det_frames, cls, diff, metric="3d") -> tuple[float | None, int]:
    """AP (R40) for one class and difficulty over all frames; (None, 0) when there is nothing to find."""
    iou = iou_3d if metric == "3d" else iou_bev
    thr = IOU_THRESH.get(cls, 0.5)
    frames = []
    all_scores, n_gt = [], 0
    for gts, dets in zip(gt_frames, det_frames):
        ig_gt, ig_det, dc, n = _clean(gts, dets, cls, diff)
        ov = np.zeros((len(dets), len(gts)))
        for j, d in enumerate(dets):
            if ig_det[j] == -1:
                continue
            for i, g in enumerate(gts):
                if ig_gt[i] != -1:
                    ov[j, i] = iou(d, g)
        frames.append((ov, gts, dets, ig_gt, ig_det, dc))
        all_scores += _statistics(ov, gts, dets, ig_gt, ig_det, dc, thr)[3]
        n_gt += n
    if n_gt == 0:
        return None, 0
    # Candidate score thresholds as the devkit picks them (about one per 1/40 of recall); the precision
    # at each recall point is then the best precision among thresholds that reach that recall, which is
    # the R40 definition and stays exact when there are fewer than 40 objects.
    ths = _thresholds(all_scores, n_gt)
    recalls, precs = [], []
    for t in ths:
        tp = fp = fn = 0
        for f in frames:
            a, b, c, _ = _statistics(*f, thr, t, compute_fp=True)
            tp, fp, fn = tp + a, fp + b, fn + c
        recalls.append(tp / n_gt)
        precs.append(tp / (tp + fp) if tp + fp else 0.0)
    recalls, precs = np.array(recalls), np.array(precs)
    ap = 0.0
    for r in np.arange(1, 41) / 40.0:
        ok = recalls >= r - 1e-9
        ap += precs[ok].max() if ok.any() else 0.0
    return float(ap / 40.0), n_gt


def kitti_ap(gt_frames: list[list[Object3D]], det_frames: list[list[Object3D]], classes=CLASSES) -> dict:
    """{"ap3d": {cls: {easy, moderate, hard}}, "apbev": ..., "n_gt": {cls: {...}}} with APs in [0, 1]."""
    if len(gt_frames) != len(det_frames):
        raise ValueError("need one detection list per ground-truth frame")
    out = {"ap3d": {}, "apbev": {}, "n_gt": {}}
    for cls in classes:
        for key, metric in (("ap3d", "3d"), ("apbev", "bev")):
            out[key][cls] = {}
            for d, name in enumerate(DIFFICULTIES):
                ap, n = average_precision(gt_frames, det_frames, cls, d, metric)
                out[key][cls][name] = None if ap is None else round(ap, 4)
                out["n_gt"].setdefault(cls, {})[name] = n
    return out


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
                and not any(_box2d_overlap_det(d.box2d, dc) > 0.5 for dc in dont_care) for d in near)
    return {"found": found, "missed": len(targets) - found, "false": false, "labelled": len(targets),
            "detections": len(near)}
