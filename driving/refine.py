"""Second stage: refine each detected box from the raw lidar points around it (the idea of PointRCNN / PV-RCNN's
refinement stage, small enough for the CPU budget).

The first stage (``driving.models.BEVFusionDetector``) decodes boxes on a 0.8 m grid from 0.4 m pillar statistics.
On the synthetic bench split its matched cars are off by 0.25 m in x, 0.22 m in y, 0.34 m in length and 11 degrees
in heading (mean absolute errors, 2026-11-30): with true centres and headings its Car AP3D@0.7 would be 0.79 instead
of 0.40. ``BoxRefiner`` sees the points of each box (grown by a margin) in the box's own frame, where a car's sides
and ends are straight lines at fixed places, and predicts the residual to the true box and the box's 3D IoU, which
re-ranks the detections (a well-fitted box scores higher than a loose one, as AP at IoU 0.7 needs).

Trained on its own (``train_refiner``), the first stage frozen, from the first stage's detections on the training
frames plus jittered copies of their labelled boxes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import rotated_intersection
from .models import BoxRefiner, DetectorConfig

MARGIN_XY = BoxRefiner.MARGIN_XY  # m added on each side: the true box can stick out of a proposal too small or turned
MARGIN_Z = BoxRefiner.MARGIN_Z
PROPOSAL_THRESH = 0.1  # first-stage score of the boxes the refiner looks at
IOU_SCORE_WEIGHT = 0.5  # final score = first-stage score^(1 - w) * predicted IoU score^w


# ----------------------------------------------------------------------------------------------- geometry
def wrap_axis(a):
    """Angle difference folded to [-pi/2, pi/2): box IoU does not see the heading's direction."""
    return (np.asarray(a) + math.pi / 2) % math.pi - math.pi / 2


def encode_residual(proposal: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[K, 7] residuals from proposals to target boxes (lidar frame x, y, z, l, w, h, yaw): the centre shift in the
    proposal's frame over its BEV diagonal, z over its height, log size ratios, the axis angle difference."""
    p, t = np.asarray(proposal, float).reshape(-1, 7), np.asarray(target, float).reshape(-1, 7)
    c, s = np.cos(p[:, 6]), np.sin(p[:, 6])
    dx, dy = t[:, 0] - p[:, 0], t[:, 1] - p[:, 1]
    diag = np.hypot(p[:, 3], p[:, 4])
    return np.stack([(c * dx + s * dy) / diag, (-s * dx + c * dy) / diag, (t[:, 2] - p[:, 2]) / p[:, 5],
                     np.log(t[:, 3] / p[:, 3]), np.log(t[:, 4] / p[:, 4]), np.log(t[:, 5] / p[:, 5]),
                     wrap_axis(t[:, 6] - p[:, 6])], 1)


def apply_residual(proposal: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """The inverse of ``encode_residual``: proposals [K, 7] + residuals [K, 7] -> boxes [K, 7]."""
    p, r = np.asarray(proposal, float).reshape(-1, 7), np.asarray(residual, float).reshape(-1, 7)
    c, s = np.cos(p[:, 6]), np.sin(p[:, 6])
    diag = np.hypot(p[:, 3], p[:, 4])
    u, v = r[:, 0] * diag, r[:, 1] * diag
    out = p.copy()
    out[:, 0] += c * u - s * v
    out[:, 1] += s * u + c * v
    out[:, 2] += r[:, 2] * p[:, 5]
    out[:, 3:6] *= np.exp(np.clip(r[:, 3:6], -1.0, 1.0))
    out[:, 6] += r[:, 6]
    return out


def box_iou_3d(a: np.ndarray, b: np.ndarray) -> float:
    """3D IoU of two lidar boxes (x, y, z centre, l, w, h, yaw)."""
    dz = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
    if dz <= 0 or math.hypot(a[0] - b[0], a[1] - b[1]) > (math.hypot(a[3], a[4]) + math.hypot(b[3], b[4])) / 2:
        return 0.0
    inter = rotated_intersection((a[0], a[1], a[3], a[4], a[6]), (b[0], b[1], b[3], b[4], b[6])) * dz
    union = a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------------- points
def sort_by_x(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sweep sorted along x, and its x column: ``box_points`` then looks at one slice per box, not at all points."""
    order = np.argsort(points[:, 0], kind="stable")
    return points[order], points[order, 0]


def box_points(points: np.ndarray, boxes: np.ndarray, n: int, rng: np.random.Generator | None = None,
               presorted: tuple[np.ndarray, np.ndarray] | None = None):
    """The lidar points in and around each box, in the box's frame.

    Args:
        points: [N, 4] sweep (x, y, z, reflectance); boxes: [K, 7] lidar boxes.
        n: points kept per box (a random subset when more; padding, masked out, when fewer).
        rng: draws the subset; None draws with a fixed seed, so detection is repeatable.
        presorted: ``sort_by_x(points)`` when the caller already has it (several passes over one sweep).
    Returns:
        features [K, n, 7] float32 (u, v, z in metres from the box centre along its length, width and up; the same
        over the half sizes; reflectance) and mask [K, n] bool.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 7)
    feats = np.zeros((len(boxes), n, BoxRefiner.POINT_FEATURES), np.float32)
    mask = np.zeros((len(boxes), n), bool)
    if not len(boxes) or not len(points):
        return feats, mask
    rng = rng or np.random.default_rng(0)
    ordered, xs = presorted if presorted is not None else sort_by_x(points)
    for k, b in enumerate(boxes):
        reach = math.hypot(b[3] / 2 + MARGIN_XY, b[4] / 2 + MARGIN_XY)
        lo, hi = np.searchsorted(xs, [b[0] - reach, b[0] + reach])
        p = ordered[lo:hi]
        d = p[:, :3] - b[:3]
        c, s = math.cos(b[6]), math.sin(b[6])
        u, v = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
        inside = ((np.abs(u) <= b[3] / 2 + MARGIN_XY) & (np.abs(v) <= b[4] / 2 + MARGIN_XY)
                  & (np.abs(d[:, 2]) <= b[5] / 2 + MARGIN_Z))
        idx = np.flatnonzero(inside)
        if len(idx) > n:
            idx = np.sort(rng.choice(idx, n, replace=False))
        m = len(idx)
        half = np.array([b[3] / 2, b[4] / 2, b[5] / 2])
        local = np.stack([u[idx], v[idx], d[idx, 2]], 1)
        feats[k, :m, :3] = local
        feats[k, :m, 3:6] = local / half
        feats[k, :m, 6] = np.clip(p[idx, 3], 0, 1)
        mask[k, :m] = True
    return feats, mask


# ----------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def refine_detections(refiner: BoxRefiner, points: np.ndarray, dets: list[dict], cfg: DetectorConfig,
                      score_thresh: float = 0.0) -> list[dict]:
    """First-stage detections -> refined boxes, re-scored by the predicted IoU, de-duplicated again (two
    proposals on one object can converge on the same box). ``cfg.refine_passes`` times: each pass starts from the
    boxes of the one before (the refiner is trained on errors from large to small, so a second look still helps).

    ``score_thresh``: the caller's final score floor. A pass scores a box at most score^(1 - w) (the IoU factor is
    <= 1), so a box that cannot reach the floor in the passes left is not refined again: the boxes scoring >=
    ``score_thresh`` come out exactly as without it (the greedy NMS never lets a lower-scoring box suppress a
    higher one), and the last pass no longer refines the many weak boxes the caller would drop (tested)."""
    if not dets:
        return dets
    # only the points near some box need sorting (a full sweep is 360 degrees, the boxes are in the camera view)
    boxes = np.stack([d["box3d"] for d in dets]).astype(float)
    reach = float(np.hypot(boxes[:, 3] / 2 + MARGIN_XY, boxes[:, 4] / 2 + MARGIN_XY).max()) + 3.0  # + what a pass moves
    lo, hi = boxes[:, :2].min(0) - reach, boxes[:, :2].max(0) + reach
    near = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0]) & (points[:, 1] >= lo[1]) & (points[:, 1] <= hi[1])
    ordered = sort_by_x(points[near])
    for left in range(cfg.refine_passes, 0, -1):
        dets = [d for d in dets if d["score"] ** ((1 - IOU_SCORE_WEIGHT) ** left) >= score_thresh]
        if not dets:
            break
        dets = _refine_once(refiner, ordered, dets, cfg)
    return dets


def _refine_once(refiner: BoxRefiner, ordered, dets: list[dict], cfg: DetectorConfig) -> list[dict]:
    from .boxes import rotated_nms

    boxes = np.stack([d["box3d"] for d in dets])
    feats, mask = box_points(ordered[0], boxes, cfg.refine_points, presorted=ordered)
    dev = next(refiner.parameters()).device  # the pipeline's device (CUDA under --device auto on a GPU machine)
    out = refiner(torch.from_numpy(feats).to(dev), torch.from_numpy(mask).to(dev),
                  torch.tensor(boxes[:, 3:6], dtype=torch.float32, device=dev),
                  torch.tensor([cfg.classes.index(d["class"]) for d in dets], device=dev),
                  torch.tensor([d["score"] for d in dets], dtype=torch.float32, device=dev))
    refined = apply_residual(boxes, out["residual"].double().cpu().numpy())
    quality = torch.sigmoid(out["iou"]).cpu().numpy()
    result = [{**d, "box3d": b.astype(np.float32), "score": float(d["score"] ** (1 - IOU_SCORE_WEIGHT) * q ** IOU_SCORE_WEIGHT)}
              for d, b, q in zip(dets, refined, quality)]
    return rotated_nms(result)


# ----------------------------------------------------------------------------------------------- training set
def iou_target(iou):
    """PV-RCNN's IoU-guided score target: 0 at IoU <= 0.25, 1 at >= 0.75, linear between."""
    return np.clip((np.asarray(iou) - 0.25) / 0.5, 0.0, 1.0)


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, copies: int) -> np.ndarray:
    """``copies`` perturbed versions of each box, spread like (and a little wider than) the first stage's errors."""
    if not len(boxes) or copies < 1:
        return np.zeros((0, 7))
    b = np.repeat(np.asarray(boxes, float), copies, 0)
    out = b.copy()
    out[:, :2] += rng.normal(0, 0.35, (len(b), 2))
    out[:, 2] += rng.normal(0, 0.15, len(b))
    out[:, 3:6] *= np.exp(rng.normal(0, 0.12, (len(b), 3)))
    out[:, 6] += rng.normal(0, 0.25, len(b)) + math.pi * (rng.random(len(b)) < 0.3)  # the head's flipped directions
    return out


def proposal_targets(proposals: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each proposal: its best 3D IoU with a labelled box, that box's residual, and whether it is close enough
    (IoU >= 0.1 in BEV-and-height) to learn a residual from."""
    k = len(proposals)
    best, res = np.zeros(k), np.zeros((k, 7))
    if len(gt):
        for i, p in enumerate(proposals):
            ious = [box_iou_3d(p, g) for g in gt]
            j = int(np.argmax(ious))
            best[i] = ious[j]
            res[i] = encode_residual(p, gt[j])[0]
    return best, res, best >= 0.1


def build_refiner_set(split, ids, pipe, jitter: int = 3, seed: int = 0, progress: str | None = "refiner samples") -> dict:
    """Training examples for the refiner from labelled frames: the first stage's detections (``pipe`` without its
    refiner, at its ``score_thresh``) and ``jitter`` perturbed copies of each labelled box, each with its points and
    targets.

    Tried on 2026-11-30 and not kept (validation split, mean AP3D 0.796 -> 0.787): training on the inference
    proposals (every class hypothesis of a place kept) with 30 % of the frames cropped to the camera view."""
    from mmapps.progress import track

    from .io import load_frame
    from .preprocess import gt_boxes

    cfg = pipe.config
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {k: [] for k in ("points", "mask", "sizes", "classes", "scores", "iou", "residual", "close")}
    for fid in (track(ids, progress) if progress else ids):
        frame = load_frame(split, fid)
        gt, gt_cls = gt_boxes(frame, cfg)
        dets = pipe.detect(frame)
        props = [d["box3d"] for d in dets]
        cls = [cfg.classes.index(d["class"]) for d in dets]
        scores = [d["score"] for d in dets]
        jit = jitter_boxes(gt, rng, jitter)
        props = np.concatenate([np.asarray(props, float).reshape(-1, 7), jit])
        cls = np.concatenate([np.asarray(cls, np.int64), np.repeat(gt_cls, jitter)])
        # a jittered labelled box gets a first-stage-like score, so the score input cannot tell the two sources apart
        scores = np.concatenate([np.asarray(scores, float), rng.uniform(0.1, 0.9, len(jit))])
        if not len(props):
            continue
        feats, mask = box_points(frame.points, props, cfg.refine_points, rng)
        iou, res, close = proposal_targets(props, gt)
        for key, value in (("points", feats), ("mask", mask), ("sizes", props[:, 3:6]), ("classes", cls),
                           ("scores", scores), ("iou", iou), ("residual", res), ("close", close)):
            parts[key].append(value)
    dtypes = {"mask": torch.bool, "classes": torch.long, "close": torch.bool}
    return {k: torch.tensor(np.concatenate(v), dtype=dtypes.get(k, torch.float32)) for k, v in parts.items()}


# ----------------------------------------------------------------------------------------------- training
RESIDUAL_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0)  # heading errors cost most IoU for long boxes


def refiner_loss(out: dict, batch: dict) -> dict:
    """Smooth-L1 on the residuals of proposals near a labelled box + BCE on the IoU score target of all."""
    close = batch["close"]
    w = torch.tensor(RESIDUAL_WEIGHTS)
    if close.any():
        reg = (F.smooth_l1_loss(out["residual"][close], batch["residual"][close], beta=0.05, reduction="none") * w).mean()
    else:
        reg = out["residual"].sum() * 0.0
    score = F.binary_cross_entropy_with_logits(out["iou"], torch.from_numpy(iou_target(batch["iou"].numpy())).float())
    return {"regression": reg, "score": score, "loss": reg + score}


def _mirror(batch: dict, flip: torch.Tensor) -> dict:
    """Mirror the selected examples across their box's long axis (v -> -v): a car seen from the other side."""
    b = dict(batch)
    sign = torch.where(flip, -1.0, 1.0)
    pts = batch["points"].clone()
    pts[:, :, 1] *= sign[:, None]
    pts[:, :, 4] *= sign[:, None]
    res = batch["residual"].clone()
    res[:, 1] *= sign
    res[:, 6] *= sign
    b["points"], b["residual"] = pts, res
    return b


def fit_refiner(refiner: BoxRefiner, data: dict, epochs: int = 30, batch_size: int = 256, lr: float = 2e-3,
                seed: int = 0, val: dict | None = None, quiet: bool = False) -> list[dict]:
    """Train the refiner on ``build_refiner_set`` examples (mirror augmentation, AdamW, cosine schedule); returns
    the per-epoch history (train loss, and validation loss when ``val`` is given)."""
    from mmapps.progress import track

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    n = len(data["iou"])
    steps = epochs * max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    for epoch in (range(epochs) if quiet else track(range(epochs), "refiner epochs")):
        refiner.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            batch = _mirror({k: v[idx] for k, v in data.items()}, torch.rand(len(idx), generator=g) < 0.5)
            out = refiner(batch["points"], batch["mask"], batch["sizes"], batch["classes"], batch["scores"])
            loss = refiner_loss(out, batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch + 1, "train_loss": total / n}
        if val is not None:
            row.update({f"val_{k}": v for k, v in evaluate_refiner(refiner, val).items()})
        history.append(row)
    refiner.eval()
    return history


@torch.no_grad()
def evaluate_refiner(refiner: BoxRefiner, data: dict) -> dict:
    """The loss on ``data`` and, per residual channel, the mean absolute error of the near proposals before
    refinement (their residual targets) and after (target minus prediction)."""
    refiner.eval()
    out = refiner(data["points"], data["mask"], data["sizes"], data["classes"], data["scores"])
    losses = refiner_loss(out, data)
    close = data["close"]
    err_before = data["residual"][close].abs().mean(0)
    err_after = (out["residual"][close] - data["residual"][close]).abs().mean(0)
    return {"loss": float(losses["loss"]), "score_loss": float(losses["score"]),
            "residual_error_before": [round(float(x), 4) for x in err_before],
            "residual_error_after": [round(float(x), 4) for x in err_after]}


def train_refiner(data, init, out, epochs: int = 30, jitter: int = 3, seed: int = 0, val_fraction: float = 0.1,
                  grid: tuple = (6, 4, 2), quiet: bool = False) -> dict:
    """Add a trained refiner to a first-stage checkpoint (frozen) and write the result to ``out``.

    Args:
        data: labelled KITTI folder (root or training/); the core validation split of it (``val_fraction``,
            ``seed``) is held out: the refiner is measured there, never trained there.
        init: the first-stage driving checkpoint; out: the checkpoint to write (first stage + refiner).
        grid: cells (length, width, height) of the refiner's RoI grid pooling; () for the global max-pool alone.
    Returns:
        {"out", "epochs", "train_examples", "val_examples", "history" (last epoch), "val_frames"}.
    """
    from dataclasses import replace

    from mmapps.checkpoint import load_checkpoint, save_checkpoint
    from mmapps.splits import validation_split

    from mmapps.errors import UserError

    from .io import list_frames, load_frame, resolve_split
    from .models import BEVFusionDetector
    from .pipeline import Pipeline
    from .train import checkpoint_config

    split = resolve_split(data)
    ids = list_frames(split)
    if load_frame(split, ids[0]).labels is None:
        raise UserError(f"{split / 'label_2'}: training the refiner needs label_2 files")
    tidx, vidx = validation_split(len(ids), val_fraction, seed=seed)
    first = Pipeline.from_checkpoint(init, device="cpu", score_thresh=PROPOSAL_THRESH)
    first.refine = False
    cfg = replace(first.config, refine=True, refine_grid=tuple(grid))
    cfg.validate()
    train_set = build_refiner_set(split, [ids[i] for i in tidx], first, jitter, seed,
                                  progress=None if quiet else "refiner samples (train)")
    val_set = build_refiner_set(split, [ids[i] for i in vidx], first, jitter, seed + 1,
                                progress=None if quiet else "refiner samples (val)")
    torch.manual_seed(seed)
    refiner = BoxRefiner(cfg)
    history = fit_refiner(refiner, train_set, epochs=epochs, seed=seed, val=val_set, quiet=quiet)
    # the frozen first stage + the new refiner (replacing any refiner --init had), loaded strictly: nothing left out
    model = BEVFusionDetector(cfg)
    first_stage = {k: v for k, v in first.model.state_dict().items() if not k.startswith("refiner.")}
    model.load_state_dict({**first_stage, **{f"refiner.{k}": v for k, v in refiner.state_dict().items()}})
    bundle = load_checkpoint(init)
    meta = {**bundle["meta"], "refiner": {"data": str(split), "train_frames": len(tidx), "val_frames": len(vidx),
                                          "train_examples": len(train_set["iou"]), "epochs": epochs, "jitter": jitter,
                                          "grid": list(grid), "seed": seed, "first_stage": str(init), "last_epoch": history[-1]}}
    save_checkpoint(out, model, checkpoint_config(cfg), meta)
    return {"out": str(out), "epochs": epochs, "train_examples": len(train_set["iou"]),
            "val_examples": len(val_set["iou"]), "val_frames": len(vidx), "history": history[-1]}
