"""The official KITTI 3D-object protocol, as the devkit's Python port (OpenPCDet / SECOND
``kitti_object_eval_python``) computes it; written here from that algorithm, so published numbers compare.

Per class and difficulty (easy / moderate / hard):
- labels: the class itself counts; the neighbour class (Van for Car, Person_sitting for Pedestrian) and labels
  outside the difficulty (2D height <= 40/25/25 px, occlusion > 0/1/2, truncation > 0.15/0.3/0.5) are "ignored":
  a detection matched to them is neither a true nor a false positive. Other classes play no part.
- detections: lower than the difficulty's minimum 2D height (< 40/25/25 px) are ignored whatever their class
  (the reference does this before it looks at the class); others of the class count; the rest play no part.
- matching at IoU > 0.7 (Car) / 0.5 (Pedestrian, Cyclist), strictly greater, for the 2D box, BEV and 3D metrics.
- DontCare: an unmatched detection whose 2D box lies inside a DontCare region (intersection over the detection's
  own area > the IoU threshold) is dropped from the false positives, for the 2D metric only.
- score thresholds: first every true positive's score is collected, then about one threshold per 1/40 of recall
  is picked from them (``sample_thresholds``); precision is computed at each threshold, made monotone (the best
  precision at that or any lower threshold), and AP_R40 = the mean of entries 1..40 of that 41-long array: the
  first entry (recall ~0) is skipped, and missing entries count 0. One label with one perfect detection therefore
  scores 0.0, as in the reference; 40 labels with 40 perfect detections score 39/40.
We report None (not 0) for a class and difficulty without any countable label.
"""
from __future__ import annotations

import numpy as np

from .geometry import rotated_intersection
from .io import CLASSES, Object3D

MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
DIFFICULTIES = ("easy", "moderate", "hard")
IOU_THRESH = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NEIGHBOUR = {"Car": "Van", "Pedestrian": "Person_sitting"}
SAMPLE_POINTS = 41  # recall 0, 1/40, ..., 40/40
METRICS = {"ap2d": "2d", "apbev": "bev", "ap3d": "3d"}

COUNTED, IGNORED, OTHER = 0, 1, -1  # the reference's ignored_gt / ignored_det codes


# ----------------------------------------------------------------------------------------------- overlaps
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


def _box2d_area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def _box2d_intersection(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return iw * ih if iw > 0 and ih > 0 else 0.0


def iou_2d(a: Object3D, b: Object3D) -> float:
    inter = _box2d_intersection(a.box2d, b.box2d)
    union = _box2d_area(a.box2d) + _box2d_area(b.box2d) - inter
    return inter / union if union > 0 else 0.0


def overlap_over_detection(det_box, region) -> float:
    """Intersection over the detection's own 2D area (the reference's criterion 0, used for DontCare)."""
    area = _box2d_area(det_box)
    return _box2d_intersection(det_box, region) / area if area > 0 else 0.0


IOU = {"2d": iou_2d, "bev": iou_bev, "3d": iou_3d}


def overlap_matrix(dets: list[Object3D], gts: list[Object3D], metric: str) -> np.ndarray:
    """[detections, labels] IoU; DontCare labels have no box and get 0."""
    iou = IOU[metric]
    ov = np.zeros((len(dets), len(gts)))
    for i, g in enumerate(gts):
        if g.type == "DontCare":
            continue
        for j, d in enumerate(dets):
            ov[j, i] = iou(d, g)
    return ov


# ----------------------------------------------------------------------------------------------- protocol
def classify(gts: list[Object3D], dets: list[Object3D], cls: str, diff: int):
    """(label codes, detection codes, DontCare 2D boxes, number of counted labels) for one frame."""
    gt_codes, det_codes, dont_care = [], [], []
    n_counted = 0
    for g in gts:
        height = g.box2d[3] - g.box2d[1]
        same = g.type == cls
        neighbour = NEIGHBOUR.get(cls) == g.type
        outside = (g.occluded > MAX_OCCLUSION[diff] or g.truncated > MAX_TRUNCATION[diff]
                   or height <= MIN_HEIGHT[diff])
        if same and not outside:
            gt_codes.append(COUNTED)
            n_counted += 1
        elif neighbour or same:
            gt_codes.append(IGNORED)
        else:
            gt_codes.append(OTHER)
        if g.type == "DontCare":
            dont_care.append(g.box2d)
    for d in dets:
        if abs(d.box2d[3] - d.box2d[1]) < MIN_HEIGHT[diff]:
            det_codes.append(IGNORED)
        else:
            det_codes.append(COUNTED if d.type == cls else OTHER)
    return gt_codes, det_codes, dont_care, n_counted


def frame_statistics(ov, gt_codes, det_codes, scores, min_overlap, thresh=None, dont_care=(), det_boxes=()):
    """One frame: (tp, fp, fn, scores of the true positives).

    With ``thresh`` None every detection may match (the pass that collects true-positive scores; each label takes
    the highest-scoring detection above the overlap); with a threshold, detections scoring below it are left out,
    each label takes the best-overlapping counted detection, and false positives are counted. ``dont_care`` (2D
    regions) drops unmatched detections inside them from the false positives (pass it for the 2D metric only)."""
    n_det = len(det_codes)
    assigned = [False] * n_det
    below = [thresh is not None and scores[j] < thresh for j in range(n_det)]
    tp = fp = fn = 0
    tp_scores = []
    for i, gcode in enumerate(gt_codes):
        if gcode == OTHER:
            continue
        best, best_score, best_ov, best_is_ignored = -1, -np.inf, 0.0, False
        for j in range(n_det):
            if det_codes[j] == OTHER or assigned[j] or below[j] or ov[j, i] <= min_overlap:
                continue
            if thresh is None:
                if scores[j] > best_score:
                    best, best_score = j, scores[j]
            elif det_codes[j] == COUNTED and (ov[j, i] > best_ov or best_is_ignored):
                best, best_ov, best_is_ignored = j, ov[j, i], False
            elif det_codes[j] == IGNORED and best == -1:
                best, best_is_ignored = j, True
        if best == -1:
            fn += gcode == COUNTED
        elif gcode == IGNORED or det_codes[best] == IGNORED:
            assigned[best] = True
        else:
            tp += 1
            tp_scores.append(scores[best])
            assigned[best] = True
    if thresh is not None:
        free = [j for j in range(n_det) if not (assigned[j] or det_codes[j] != COUNTED or below[j])]
        fp = len(free)
        for region in dont_care:
            for j in free:
                if not assigned[j] and overlap_over_detection(det_boxes[j], region) > min_overlap:
                    assigned[j] = True
                    fp -= 1
    return tp, fp, fn, tp_scores


def sample_thresholds(scores, n_gt: int, n_points: int = SAMPLE_POINTS) -> list[float]:
    """Scores of the true positives (any order) -> about one threshold per 1/(n_points-1) of recall, descending:
    a score is kept when its recall is nearer the next sampling point than the following score's recall."""
    scores = sorted(scores, reverse=True)
    picked, current = [], 0.0
    for i, s in enumerate(scores):
        last = i == len(scores) - 1
        left = (i + 1) / n_gt
        right = left if last else (i + 2) / n_gt
        if not last and (right - current) < (current - left):
            continue
        picked.append(s)
        current += 1.0 / (n_points - 1)
    return picked


def average_precision(gt_frames, det_frames, cls: str, diff: int, metric: str = "3d",
                      overlaps: list | None = None) -> tuple[float | None, int]:
    """AP_R40 of one class and difficulty over all frames; (None, 0) when no label counts.

    ``overlaps``: per-frame ``overlap_matrix`` for this metric (computed here when not given)."""
    min_overlap = IOU_THRESH.get(cls, 0.5)
    if overlaps is None:
        overlaps = [overlap_matrix(d, g, metric) for g, d in zip(gt_frames, det_frames)]
    frames, tp_scores, n_gt = [], [], 0
    for gts, dets, ov in zip(gt_frames, det_frames, overlaps):
        gt_codes, det_codes, dont_care, n = classify(gts, dets, cls, diff)
        scores = [d.score if d.score is not None else 1.0 for d in dets]
        frames.append((ov, gt_codes, det_codes, scores, dont_care if metric == "2d" else (),
                       [d.box2d for d in dets]))
        tp_scores += frame_statistics(ov, gt_codes, det_codes, scores, min_overlap)[3]
        n_gt += n
    if n_gt == 0:
        return None, 0
    precision = np.zeros(SAMPLE_POINTS)
    for k, t in enumerate(sample_thresholds(tp_scores, n_gt)):
        tp = fp = 0
        for ov, gt_codes, det_codes, scores, dont_care, boxes in frames:
            a, b, _, _ = frame_statistics(ov, gt_codes, det_codes, scores, min_overlap, t, dont_care, boxes)
            tp, fp = tp + a, fp + b
        precision[k] = tp / (tp + fp) if tp + fp else 0.0
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this or any lower threshold
    return float(precision[1:].sum() / (SAMPLE_POINTS - 1)), n_gt


def kitti_ap(gt_frames: list[list[Object3D]], det_frames: list[list[Object3D]], classes=CLASSES) -> dict:
    """{"ap3d": {cls: {easy, moderate, hard}}, "apbev": ..., "ap2d": ..., "n_gt": {cls: {...}}}, APs in [0, 1]
    (AP_R40, None where no label counts)."""
    if len(gt_frames) != len(det_frames):
        raise ValueError("need one detection list per ground-truth frame")
    out = {key: {} for key in METRICS}
    out["n_gt"] = {}
    for key, metric in METRICS.items():
        overlaps = [overlap_matrix(d, g, metric) for g, d in zip(gt_frames, det_frames)]
        for cls in classes:
            out[key][cls] = {}
            for diff, name in enumerate(DIFFICULTIES):
                ap, n = average_precision(gt_frames, det_frames, cls, diff, metric, overlaps)
                out[key][cls][name] = None if ap is None else round(ap, 4)
                out["n_gt"].setdefault(cls, {})[name] = n
    return out
