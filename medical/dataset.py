"""Cohort datasets: manifest rows -> preprocessed samples held in memory, collation, batch prediction."""
from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError

from .io import load_ct, load_mri, read_record
from .models import ModelConfig, aux_targets, record_vector
from .preprocess import analyse_ct, ct_inputs, preprocess_mri

MAX_NODULES_PER_STUDY = 5  # evaluation scores at most the 5 largest reported nodules of a study


def load_sample(root: Path, row: dict, cfg: ModelConfig, with_targets: bool = True,
                all_nodules: bool = False) -> list[dict]:
    """One manifest row -> sample dicts {modality: tensor, "targets": {...}, "meta": {...}}: one sample whose CT
    view is centred on the largest detected nodule (training), or one per reported nodule (``all_nodules``:
    evaluation scores a study by its most suspicious nodule, as ``predict`` does). A CT the gate refuses is
    left out (the sample keeps its other modalities)."""
    sample: dict = {"meta": {"patient_id": row.get("patient_id", "")}}
    cts: list[dict] = []
    stored: dict = {}  # a stored cohort's CT and MRI columns name the same file: read it once

    def stored_inputs(rel: str) -> dict:
        if rel not in stored:
            stored[rel] = load_stored_inputs(root / rel, cfg)
        return stored[rel]

    if "ct" in cfg.modalities and row.get("ct"):
        if is_stored_inputs(row["ct"]):
            cts = stored_inputs(row["ct"])["ct"]
        else:
            analysis = _analysis(str(root / row["ct"]))
            if analysis["scan"].assessable:
                cts = ct_inputs(analysis, cfg.ct_grid, cfg.ct_crop, cfg.measured)
        cts = cts[:MAX_NODULES_PER_STUDY] if all_nodules else cts[:1]
    if "mri" in cfg.modalities and row.get("mri"):
        if is_stored_inputs(row["mri"]):
            sample["mri"] = stored_inputs(row["mri"])["mri"]
        else:
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
    if not cts:
        return [sample]
    return [{**sample, "ct": {"grid": c["grid"].half(), "crop": c["crop"].half(), "geom": c["geom"]}} for c in cts]


STORED_INPUTS_FORMAT = "mmapps-medical-inputs/1"
_STORED_SETTINGS = ("ct_grid", "ct_crop", "mri_grid", "measured")


def is_stored_inputs(path: str) -> bool:
    return str(path).endswith(".pt")


def study_inputs(ct, mri, cfg: ModelConfig) -> dict:
    """What the model reads from one study, as ``load_sample`` would compute it from the scans: the CT read (gate,
    nodules) and cut into up to MAX_NODULES_PER_STUDY nodule inputs ("ct", empty when the gate refused the scan;
    its verdict in "ct_assessable"), the MRI normalised. ``synth --store inputs`` writes this (~0.3 MB) instead of
    the DICOM series (33 MB for a 1.25 mm scan)."""
    out = {"format": STORED_INPUTS_FORMAT, **{k: getattr(cfg, k) for k in _STORED_SETTINGS}, "ct": [], "mri": None}
    if ct is not None:
        analysis = analyse_ct(ct)
        out["ct_assessable"] = bool(analysis["scan"].assessable)
        if analysis["scan"].assessable:
            cts = ct_inputs(analysis, cfg.ct_grid, cfg.ct_crop, cfg.measured)[:MAX_NODULES_PER_STUDY]
            grid = cts[0]["grid"].half()  # the lung grid is one per study: stored once
            out["ct"] = [{"grid": grid, "crop": c["crop"].half(), "geom": c["geom"]} for c in cts]
    if mri is not None:
        out["mri"] = preprocess_mri(mri, cfg.mri_grid).half()
    return out


def load_stored_inputs(path: Path, cfg: ModelConfig) -> dict:
    """A ``study_inputs`` file, checked against the model's input settings."""
    from .io import _short

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many kinds on a damaged file
        raise UserError(f"{path}: not a stored-inputs file ({_short(e)})") from e
    if not isinstance(stored, dict) or stored.get("format") != STORED_INPUTS_FORMAT:
        raise UserError(f"{path}: not a stored-inputs file (written by `mmapps medical synth --store inputs`)")
    for k in _STORED_SETTINGS:
        if stored.get(k) != getattr(cfg, k):
            raise UserError(f"{path}: stores model inputs for {k}={stored.get(k)}, the model reads {k}="
                            f"{getattr(cfg, k)}; synthesize the cohort with --store dicom for other settings")
    return stored


@functools.lru_cache(maxsize=16)
def _analysis_cached(path: str, mtime: float) -> dict:
    return analyse_ct(load_ct(path))


def _analysis(path: str) -> dict:
    """The gate + nodules of one study, cached per process: training and evaluation re-read the same cohort."""
    try:
        mtime = Path(path).stat().st_mtime
    except OSError:
        return analyse_ct(load_ct(path))  # let the loader name the problem
    return _analysis_cached(path, mtime)


def _load_one(args):
    root, row, cfg_dict, with_targets, all_nodules = args
    return load_sample(Path(root), row, ModelConfig(**cfg_dict), with_targets, all_nodules)


class CohortDataset(torch.utils.data.Dataset):
    """The whole cohort preprocessed once into memory (float16 grids): training reads it many times.

    ``groups[i]`` is the manifest row of sample i (several samples per row with ``all_nodules``)."""

    def __init__(self, root: Path, rows: list[dict], cfg: ModelConfig, with_targets: bool = True, workers: int = 1,
                 description: str = "reading studies", all_nodules: bool = False):
        import time

        from mmapps.parallel import parallel_map

        t0 = time.perf_counter()
        per_row = parallel_map(_load_one, [(str(root), r, asdict(cfg), with_targets, all_nodules) for r in rows],
                               workers=workers, description=description, chunksize=2)
        self.samples = [s for group in per_row for s in group]
        self.groups = np.array([i for i, group in enumerate(per_row) for _ in group], dtype=int)
        self.n_rows = len(rows)
        self.read_seconds = time.perf_counter() - t0  # reading + gate + detection: most of an evaluation's time

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
def predict_batches(model, dataset, device, batch_size: int = 16, only: str | None = None,
                    calibration=None) -> np.ndarray:
    """Malignancy probabilities for a dataset; ``only`` masks every other modality (ablation); ``calibration``:
    the checkpoint's post-hoc logit map (``mmapps.calibration.LogitScaling``), identity when None."""
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
        z = model(model_inputs(batch))["outputs"]["malignancy"].reshape(-1).float()
        p = torch.sigmoid(calibration(z) if calibration is not None else z)
        if only is not None:
            p = torch.where(batch["present"][only].bool(), p, torch.full_like(p, float("nan")))
        out.append(p.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def study_max(p: np.ndarray, groups: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-sample probabilities -> per-study maximum (NaN where a study has no scored sample)."""
    out = np.full(n_rows, np.nan)
    for g, v in zip(groups, p):
        if v == v:
            out[g] = v if out[g] != out[g] else max(out[g], v)
    return out


def model_inputs(batch: dict) -> dict:
    """The batch without its targets (what the model reads at prediction time)."""
    return {k: v for k, v in batch.items() if k != "targets"}
