"""Cohort datasets: manifest rows -> preprocessed samples held in memory, collation, batch prediction."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError

from .io import load_ct, load_mri, read_record
from .models import ModelConfig, aux_targets, record_vector
from .preprocess import preprocess_ct, preprocess_mri


def load_sample(root: Path, row: dict, cfg: ModelConfig, with_targets: bool = True) -> dict:
    """One manifest row -> sample dict {modality: tensor, "targets": {...}, "meta": {...}}."""
    sample: dict = {"meta": {"patient_id": row.get("patient_id", "")}}
    if "ct" in cfg.modalities and row.get("ct"):
        ct = preprocess_ct(load_ct(root / row["ct"]), cfg.ct_grid, cfg.ct_crop)
        sample["ct"] = {"grid": ct["grid"].half(), "crop": ct["crop"].half(), "geom": ct["geom"]}
    if "mri" in cfg.modalities and row.get("mri"):
        sample["mri"] = preprocess_mri(load_mri(root / row["mri"]), cfg.mri_grid).half()
    if "record" in cfg.modalities and row.get("record"):
        fields, _ = read_record(root / row["record"])
        sample["record"] = torch.from_numpy(record_vector(fields))
    if with_targets:
        if row.get("label", "") == "":
            raise UserError(f"manifest row {row.get('patient_id')}: no label")
        targets = {"malignancy": np.float32(float(row["label"]))}
        if cfg.aux_heads:
            targets.update(aux_targets(row))
        sample["targets"] = targets
    if row.get("oracle_probability", "") not in ("", None):
        sample["meta"]["oracle_probability"] = float(row["oracle_probability"])
    return sample


def _load_one(args):
    root, row, cfg_dict, with_targets = args
    return load_sample(Path(root), row, ModelConfig(**cfg_dict), with_targets)


class CohortDataset(torch.utils.data.Dataset):
    """The whole cohort preprocessed once into memory (float16 grids): training reads it many times."""

    def __init__(self, root: Path, rows: list[dict], cfg: ModelConfig, with_targets: bool = True, workers: int = 1,
                 description: str = "reading studies"):
        from mmapps.parallel import parallel_map

        self.samples = parallel_map(_load_one, [(str(root), r, asdict(cfg), with_targets) for r in rows],
                                    workers=workers, description=description, chunksize=2)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return _float(self.samples[i])


def _float(obj):
    if isinstance(obj, dict):
        return {k: _float(v) for k, v in obj.items()}
    return obj.float() if isinstance(obj, torch.Tensor) and obj.dtype == torch.float16 else obj


def collate(samples):
    from mmapps.data import collate_samples

    batch = collate_samples(samples)
    if "targets" in batch:
        # Binary targets as float, class indices as long (the core keeps the dtype of the first sample).
        batch["targets"] = {k: v.long() if k == "nodule_type" else v.float() for k, v in batch["targets"].items()}
    return batch


@torch.no_grad()
def predict_batches(model, dataset, device, batch_size: int = 16, only: str | None = None) -> np.ndarray:
    """Malignancy probabilities for a dataset; ``only`` masks every other modality (ablation)."""
    from mmapps.data import move_to

    model.eval()
    out = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        batch = move_to(batch, device)
        if only is not None:
            batch["present"] = {m: (v if m == only else torch.zeros_like(v)) for m, v in batch["present"].items()}
            keep = batch["present"].get(only)
            if keep is None or not keep.any():
                out.append(np.full(len(batch["meta"]), np.nan))
                continue
        p = torch.sigmoid(model(model_inputs(batch))["outputs"]["malignancy"].reshape(-1))
        if only is not None:
            p = torch.where(batch["present"][only].bool(), p, torch.full_like(p, float("nan")))
        out.append(p.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def model_inputs(batch: dict) -> dict:
    """The batch without its targets (what the model reads at prediction time)."""
    return {k: v for k, v in batch.items() if k != "targets"}
