"""The field's metrics on a cohort: AUROC, AUPRC, Brier, ECE, sensitivity at 90 % specificity, the oracle
AUROC (the clinical model's own probabilities, when the manifest has them) and single-modality ablations."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate(data, model=None, workers: int = 1, shard: tuple[int, int] = (0, 1), device: str = "auto",
             pipeline=None) -> dict:
    import time

    from mmapps.metrics import binary_metrics
    from mmapps.parallel import shard_items

    from .dataset import CohortDataset, predict_batches, study_max
    from .manifest import read_manifest
    from .pipeline import Pipeline

    pipe = pipeline or Pipeline.from_checkpoint(model, device=device)
    root, rows = read_manifest(data)
    rows = shard_items(rows, *shard)
    labelled = [r for r in rows if r.get("label", "") in ("0", "1")]
    if not labelled:
        from mmapps.errors import UserError

        raise UserError(f"{root}: no labelled rows (label 0/1) to evaluate")
    t0 = time.perf_counter()
    ds = CohortDataset(root, labelled, pipe.config, with_targets=False, workers=workers, description="evaluating",
                       all_nodules=True)
    p = study_max(predict_batches(pipe.model, ds, pipe.device), ds.groups, len(labelled))
    seconds = time.perf_counter() - t0
    y = np.array([int(r["label"]) for r in labelled])
    result = {"data": str(root), "model": pipe.path, **binary_metrics(y, p)}
    oracle = [r.get("oracle_probability", "") for r in labelled]
    if all(o not in ("", None) for o in oracle):
        result["oracle_auroc"] = binary_metrics(y, np.array(oracle, dtype=float))["auroc"]
    ablations = {}
    for m in pipe.config.modalities:
        pm = study_max(predict_batches(pipe.model, ds, pipe.device, only=m), ds.groups, len(labelled))
        ok = ~np.isnan(pm)
        ablations[m] = binary_metrics(y[ok], pm[ok])["auroc"] if ok.sum() >= 2 else float("nan")
    result["ablations"] = ablations
    result["seconds"] = round(seconds, 3)
    result["studies_per_second"] = round(len(labelled) / max(seconds, 1e-9), 2)
    result["shard"] = f"{shard[0]}/{shard[1]}"
    return result
