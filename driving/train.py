"""`mmapps driving train`: a thin call of the core Trainer (DDP under torchrun, resumable, atomic checkpoints).

The validation split comes from the core ``mmapps.splits.validation_split`` unless a separate ``--val`` folder is
given. The checkpoint stores ``{"scenario": "driving", "model": DetectorConfig}``, what ``Pipeline.from_checkpoint``
rebuilds the detector from.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError
from mmapps.trainer import TrainConfig

from .io import list_frames, load_frame, resolve_split
from .models import BEVFusionDetector, DetectorConfig
from .preprocess import augmentation, make_sample


class FrameDataset(torch.utils.data.Dataset):
    """KITTI frames as training samples, read and augmented on the fly (nothing cached): with ``augment`` every
    draw mirrors, rotates (+-45 degrees), scales and shifts the lidar scene and its boxes (``preprocess.augmentation``),
    so the detector cannot learn where objects usually are or which way they usually point."""

    def __init__(self, split, ids, cfg: DetectorConfig, augment: bool = False, seed: int = 0,
                 gt_sampling: dict[str, int] | None = None):
        self.split, self.ids, self.cfg, self.augment, self.seed = Path(split), list(ids), cfg, augment, seed
        self.rng = np.random.default_rng(seed)  # one stream: same seed and order -> same augmentations
        self._worker_rng: tuple[int, np.random.Generator] | None = None
        # ground-truth sampling: objects pasted per frame by class, from a bank of THESE (training) frames only
        self.gt_sampling = {cfg.classes.index(c): int(k) for c, k in (gt_sampling or {}).items() if int(k) > 0}
        self.bank = None
        if augment and self.gt_sampling:
            from .gt_sampling import ObjectBank

            self.bank = ObjectBank.from_frames(self.split, self.ids, cfg, seed=seed)

    def __len__(self):
        return len(self.ids)

    def _stream(self) -> np.random.Generator:
        """DataLoader workers each hold a copy of the dataset: give each its own seeded stream, or they would all
        draw the same augmentations."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.rng
        if self._worker_rng is None or self._worker_rng[0] != info.id:
            self._worker_rng = (info.id, np.random.default_rng([self.seed, info.id]))
        return self._worker_rng[1]

    def __getitem__(self, i):
        frame = load_frame(self.split, self.ids[i])
        rng = self._stream()
        if self.augment and self.bank is not None and self.gt_sampling:
            frame = paste_objects(frame, self.bank, self.cfg, rng, self.gt_sampling)
        transform = augmentation(rng) if self.augment else None
        return make_sample(frame, self.cfg, targets=True, transform=transform)


def paste_objects(frame, bank, cfg: DetectorConfig, rng, per_class: dict[int, int]):
    """The frame with ground-truth-sampled objects pasted in: their points join the sweep, their labels join
    label_2 (as KITTI labels, so the rest of the pipeline sees an ordinary frame)."""
    from dataclasses import replace

    from .io import lidar_box_to_label
    from .preprocess import gt_boxes

    boxes, labels = gt_boxes(frame, cfg)
    points, new_boxes, new_labels = bank.paste(frame.points, boxes, labels, rng, per_class)
    added = [lidar_box_to_label(b, frame.calib, cfg.classes[int(c)], image_shape=frame.image.shape)
             for b, c in zip(new_boxes[len(boxes):], new_labels[len(boxes):])]
    return replace(frame, points=points, labels=list(frame.labels or []) + added)


def validation_ap(split, ids, cfg: DetectorConfig):
    """``eval_fn`` for the core Trainer: validation loss and mean moderate AP3D (official protocol) of the classes
    that have labels, so the kept checkpoint is the one that detects best, not the one with the lowest loss."""

    def eval_fn(model, loader, device) -> dict:
        from mmapps.data import move_to

        from .kitti_eval import kitti_ap
        from .pipeline import Pipeline

        total, n = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                total += float(model(move_to(batch, device))["loss"]) * len(batch["meta"])
                n += len(batch["meta"])
        pipe = Pipeline(model, cfg, device=str(device.type), score_thresh=0.1, threads=None)
        gts, dets = [], []
        for fid in ids:
            frame = load_frame(split, fid)
            gts.append(frame.labels)
            dets.append(pipe.to_objects(frame, pipe.detect(frame)))
        model.train(False)
        ap = kitti_ap(gts, dets)["ap3d"]
        moderate = {c: v["moderate"] for c, v in ap.items() if v["moderate"] is not None}
        out = {"val_loss": total / max(n, 1), "val_ap": sum(moderate.values()) / max(len(moderate), 1)}
        out.update({f"val_ap_{c}": v for c, v in moderate.items()})
        return out

    return eval_fn


def warm_start(model: torch.nn.Module, path) -> dict:
    """Initialise from another driving checkpoint: tensors of the same shape are copied, tensors whose shape changed
    (e.g. a head with a new channel, a conv that lost its coordinate inputs) get the overlapping leading slice.
    Returns {"copied", "sliced", "new"} counts."""
    from mmapps.checkpoint import load_checkpoint

    old = load_checkpoint(path)["state_dict"]
    state = model.state_dict()
    counts = {"copied": 0, "sliced": 0, "new": 0}
    with torch.no_grad():
        for name, tensor in state.items():
            src = old.get(name)
            if src is None or src.ndim != tensor.ndim:
                counts["new"] += 1
            elif src.shape == tensor.shape:
                tensor.copy_(src)
                counts["copied"] += 1
            else:
                region = tuple(slice(0, min(a, b)) for a, b in zip(src.shape, tensor.shape))
                tensor[region].copy_(src[region])
                counts["sliced"] += 1
    return counts


def checkpoint_config(detector: DetectorConfig) -> dict:
    """The checkpoint's config section: the scenario key and the detector config the model is rebuilt from."""
    return {"scenario": "driving", "model": detector.to_dict()}


def train(data, out, detector: DetectorConfig, train_cfg: TrainConfig, val=None, val_fraction: float = 0.1,
          resume: bool = False, quiet: bool = False, init=None, gt_sampling: dict[str, int] | None = None) -> dict:
    """Train the fusion detector with the core Trainer; returns the history summary.

    Args:
        data: labelled KITTI folder (root or training/).
        out: checkpoint path to write.
        detector: the model config; train_cfg: the core TrainConfig.
        val: optional separate labelled KITTI folder; otherwise ``val_fraction`` of ``data`` (core split).
        init: optional driving checkpoint to warm-start from (``warm_start``).
        gt_sampling: objects pasted per training frame by class name (``driving.gt_sampling``), e.g.
            {"Car": 2, "Pedestrian": 3, "Cyclist": 3}; None or zeros: off.
    Returns:
        {"out", "epochs", "history" (last epoch's metrics), "train_frames", "val_frames"}.
    """
    from mmapps.splits import validation_split
    from mmapps.trainer import Trainer

    split = resolve_split(data)
    ids = list_frames(split)
    if val is not None:
        vsplit, tids, vids = resolve_split(val), ids, None
        vids = list_frames(vsplit)
    else:
        tidx, vidx = validation_split(len(ids), val_fraction, seed=train_cfg.seed)
        tids, vids, vsplit = [ids[i] for i in tidx], [ids[i] for i in vidx], split
    for fid in tids[:1]:
        if load_frame(split, fid).labels is None:
            raise UserError(f"{split / 'label_2'}: training needs label_2 files")
    torch.manual_seed(train_cfg.seed)  # the initial weights too
    model = BEVFusionDetector(detector)
    warm = warm_start(model, init) if init is not None else None
    trainer = Trainer(model, train_cfg, out, meta={"classes": list(detector.classes), "data": str(split),
                                                   "train_frames": len(tids), "val_frames": len(vids or []),
                                                   "init": None if init is None else {"from": str(init), **warm},
                                                   "gt_sampling": {k: v for k, v in (gt_sampling or {}).items() if v}},
                      model_config=checkpoint_config(detector), input_keys=("lidar", "camera"), quiet=quiet,
                      eval_fn=validation_ap(vsplit, vids, detector) if vids and train_cfg.monitor == "val_ap" else None)
    history = trainer.fit(FrameDataset(split, tids, detector, augment=True, seed=train_cfg.seed, gt_sampling=gt_sampling),
                          FrameDataset(vsplit, vids, detector) if vids else None, resume=resume)
    return {"out": str(out), "epochs": len(history), "history": history[-1] if history else None,
            "train_frames": len(tids), "val_frames": len(vids or [])}


def _default_train() -> TrainConfig:
    # The bundled model's recipe: small batches (CPU), cosine schedule, the checkpoint with the best validation AP.
    return TrainConfig(epochs=10, batch_size=8, lr=2e-3, weight_decay=1e-4, scheduler="cosine", grad_clip=5.0,
                       patience=4, monitor="val_ap", mode="max", amp=True)


@dataclass
class AugmentSettings:
    """Ground-truth sampling: objects pasted into each training frame, per class (0 = off)."""
    gt_car: int = 0
    gt_pedestrian: int = 0
    gt_cyclist: int = 0

    def validate(self) -> None:
        from mmapps.config import check_range

        for name in ("gt_car", "gt_pedestrian", "gt_cyclist"):
            check_range(f"augment.{name}", getattr(self, name), 0, 20)

    def gt_sampling(self) -> dict[str, int]:
        return {"Car": self.gt_car, "Pedestrian": self.gt_pedestrian, "Cyclist": self.gt_cyclist}


@dataclass
class TrainSettings:
    """`mmapps driving train --config F --set train.x=.. --set model.y=.. --set augment.gt_cyclist=3`"""
    train: TrainConfig = field(default_factory=_default_train)
    model: DetectorConfig = field(default_factory=DetectorConfig)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
