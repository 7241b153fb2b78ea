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
from .preprocess import make_sample


class FrameDataset(torch.utils.data.Dataset):
    """KITTI frames as training samples; preprocessed inputs are cached in memory (float16)."""

    def __init__(self, split, ids, cfg: DetectorConfig, train: bool = False):
        self.split, self.ids, self.cfg, self.train = Path(split), list(ids), cfg, train
        self._cache: dict[tuple, dict] = {}

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        flip = bool(self.train and np.random.random() < 0.5)
        key = (i, flip)
        if key not in self._cache:
            frame = load_frame(self.split, self.ids[i])
            s = make_sample(frame, self.cfg, targets=True, flip=flip)
            s["lidar"] = s["lidar"].half()
            s["camera"] = s["camera"].half()
            s["targets"]["heatmap"] = s["targets"]["heatmap"].half()
            s["targets"]["regression"] = s["targets"]["regression"].half()
            self._cache[key] = s
        s = self._cache[key]
        out = dict(s)
        out["lidar"], out["camera"] = s["lidar"].float(), s["camera"].float()
        out["targets"] = {**s["targets"], "heatmap": s["targets"]["heatmap"].float(),
                          "regression": s["targets"]["regression"].float()}
        return out



def checkpoint_config(detector: DetectorConfig) -> dict:
    """The checkpoint's config section: the scenario key and the detector config the model is rebuilt from."""
    return {"scenario": "driving", "model": detector.to_dict()}


def train(data, out, detector: DetectorConfig, train_cfg: TrainConfig, val=None, val_fraction: float = 0.1,
          resume: bool = False, quiet: bool = False) -> dict:
    """Train the fusion detector with the core Trainer; returns the history summary.

    Args:
        data: labelled KITTI folder (root or training/).
        out: checkpoint path to write.
        detector: the model config; train_cfg: the core TrainConfig.
        val: optional separate labelled KITTI folder; otherwise ``val_fraction`` of ``data`` (core split).
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
    model = BEVFusionDetector(detector)
    trainer = Trainer(model, train_cfg, out, meta={"classes": list(detector.classes), "data": str(split),
                                                   "train_frames": len(tids), "val_frames": len(vids or [])},
                      model_config=checkpoint_config(detector), input_keys=("lidar", "camera"), quiet=quiet)
    history = trainer.fit(FrameDataset(split, tids, detector, train=True),
                          FrameDataset(vsplit, vids, detector) if vids else None, resume=resume)
    return {"out": str(out), "epochs": len(history), "history": history[-1] if history else None,
            "train_frames": len(tids), "val_frames": len(vids or [])}


def _default_train() -> TrainConfig:
    # The bundled model's recipe: small batches (CPU), cosine schedule.
    return TrainConfig(epochs=10, batch_size=8, lr=2e-3, weight_decay=1e-4, scheduler="cosine", grad_clip=5.0,
                       patience=4, monitor="val_loss", mode="min", amp=True)


@dataclass
class TrainSettings:
    """`mmapps driving train --config F --set train.x=.. --set model.y=..`"""
    train: TrainConfig = field(default_factory=_default_train)
    model: DetectorConfig = field(default_factory=DetectorConfig)
