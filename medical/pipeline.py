"""Load checkpoint -> read study/record -> preprocess -> predict -> explain. The Python API.

    from medical import Pipeline
    pipe = Pipeline.from_checkpoint()                       # bundled model
    result = pipe.predict(study="ct_dir/", record="patient.json", mri="t1.nii")
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmapps.errors import UserError

from .io import Volume, load_ct, load_mri, read_record
from .models import CT_WINDOW, ModelConfig, aux_targets, build_model, record_vector

from mmapps.paths import data_dir

DATA_DIR = data_dir() / "medical"  # bundled model, model card and sample patient
DEFAULT_MODEL = DATA_DIR / "model.pt"
RISK_THRESHOLDS = (0.10, 0.70)  # BTS guideline use of Brock: < 10 % low, 10-70 % intermediate, > 70 % high


def risk_category(p: float) -> str:
    return "low" if p < RISK_THRESHOLDS[0] else ("high" if p > RISK_THRESHOLDS[1] else "intermediate")


def to_grid(array: np.ndarray, grid: int) -> torch.Tensor:
    """[D,H,W] -> [1, grid, grid, grid]; area averaging when shrinking keeps small nodules' partial volume."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    up = [max(s, grid) for s in t.shape[2:]]
    if up != list(t.shape[2:]):
        t = F.interpolate(t, size=up, mode="trilinear", align_corners=False)
    return F.adaptive_avg_pool3d(t, (grid, grid, grid))[0]


def _lungs(hu: np.ndarray, spacing) -> tuple[np.ndarray, tuple[int, int, int], tuple]:
    """Lung mask on a ~2.5 mm copy: air (HU < -400) inside the body, i.e. not connected to the in-plane border,
    with enclosed structures (vessels, nodules) filled in. Returns (mask, steps, coarse spacing)."""
    from scipy import ndimage

    steps = tuple(max(1, int(round(2.5 / max(float(sp), 1e-3)))) for sp in spacing)
    small = hu[:: steps[0], :: steps[1], :: steps[2]]
    air = small < -400
    labels, n = ndimage.label(air)
    coarse_sp = tuple(float(sp) * st for sp, st in zip(spacing, steps))
    if n == 0:
        return np.zeros_like(air), steps, coarse_sp
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = np.nonzero(sizes >= 0.002 * air.size)[0]
    keep = np.setdiff1d(big[big > 0], border)
    mask = np.isin(labels, keep)
    if mask.any():
        mask = ndimage.binary_fill_holes(mask) | np.stack([ndimage.binary_fill_holes(m) for m in mask])
    return mask, steps, coarse_sp


def find_candidate(hu: np.ndarray, spacing) -> dict:
    """The most suspicious region: the centre of the thickest dense (> -650 HU) structure inside the lungs.

    Thickness = distance to the nearest non-dense voxel (Euclidean distance transform in mm), so round
    nodules win over thin vessels. Returns centre (array indices), radius_mm, lung box, found flag.
    """
    from scipy import ndimage

    mask, steps, sp = _lungs(hu, spacing)
    centre = [s // 2 for s in hu.shape]
    out = {"centre": centre, "radius_mm": 0.0, "box": None, "found": False}
    if not mask.any() or min(hu.shape) < 2:
        return out
    idx = np.nonzero(mask)
    box = []
    for i, st, size in zip(idx, steps, hu.shape):
        lo, hi = int(i.min()) * st, min(size, (int(i.max()) + 1) * st)
        box.append((lo, hi))
    out["box"] = box
    small = hu[:: steps[0], :: steps[1], :: steps[2]]
    dense = mask & (small > -650)
    if not dense.any():
        return out
    edt = ndimage.distance_transform_edt(dense, sampling=sp)
    k = np.unravel_index(int(np.argmax(edt)), edt.shape)
    out.update(centre=[int(k[i]) * steps[i] + steps[i] // 2 for i in range(3)], radius_mm=float(edt[k]), found=True)
    out["centre"] = [min(c, s - 1) for c, s in zip(out["centre"], hu.shape)]
    return out


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    """[1,1,D,H,W] -> [1,1,*size]: area averaging when shrinking (keeps partial volume), trilinear when growing."""
    up = [max(s, g) for s, g in zip(t.shape[2:], size)]
    if up != list(t.shape[2:]):
        t = F.interpolate(t, size=up, mode="trilinear", align_corners=False)
    return F.adaptive_avg_pool3d(t, tuple(size)) if list(t.shape[2:]) != list(size) else t


def preprocess_ct(vol: Volume, grid: int, crop: int = 32, crop_mm: float = 56.0) -> dict:
    """HU -> {"grid": [2, g, g, g] lung-region average + max, "crop": [1, c, c, c] nodule-centred
    high-resolution cube, "geom": [5] candidate position in the lung box, thickness, found flag}."""
    lo, hi = CT_WINDOW
    hu = vol.array
    cand = find_candidate(hu, vol.spacing)
    region = hu
    if cand["box"] is not None:
        region = hu[tuple(slice(a, b) for a, b in cand["box"])]
    x = torch.from_numpy(np.ascontiguousarray((np.clip(region, lo, hi) - lo) / (hi - lo), dtype=np.float32))[None, None]
    up = [max(s, grid) for s in x.shape[2:]]
    if up != list(x.shape[2:]):
        x = F.interpolate(x, size=up, mode="trilinear", align_corners=False)
    grid_t = torch.cat([F.adaptive_avg_pool3d(x, grid), F.adaptive_max_pool3d(x, grid)], dim=1)[0]
    # Nodule-centred cube of crop_mm, padded with air where it leaves the image.
    half = [int(round(crop_mm / 2 / max(float(s), 1e-3))) for s in vol.spacing]
    c = cand["centre"]
    sl = tuple(slice(max(0, c[i] - half[i]), min(hu.shape[i], c[i] + half[i] + 1)) for i in range(3))
    cube = np.full([2 * h + 1 for h in half], lo, np.float32)
    dst = tuple(slice(s.start - (c[i] - half[i]), s.stop - (c[i] - half[i])) for i, s in enumerate(sl))
    cube[dst] = hu[sl]
    cube_t = torch.from_numpy((np.clip(cube, lo, hi) - lo) / (hi - lo))[None, None]
    crop_t = _resize(cube_t, (crop, crop, crop))[0]
    if cand["box"] is not None:
        rel = [2.0 * (c[i] - a) / max(b - a, 1) - 1.0 for i, (a, b) in enumerate(cand["box"])]
    else:
        rel = [0.0, 0.0, 0.0]
    geom = torch.tensor(rel + [cand["radius_mm"] / 10.0, float(cand["found"])], dtype=torch.float32)
    return {"grid": grid_t, "crop": crop_t, "geom": geom, "_candidate": cand}


def preprocess_mri(vol: Volume, grid: int) -> torch.Tensor:
    """MR intensities have no units: robust min-max (1st-99th percentile) to [0, 1]."""
    a = vol.array
    sub = a[:: max(1, a.shape[0] // 16), :: max(1, a.shape[1] // 64), :: max(1, a.shape[2] // 64)]
    lo, hi = np.percentile(sub, [1, 99])
    return to_grid(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1.5), grid)


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
        from .synth import process_map

        self.samples = process_map(_load_one, [(str(root), r, asdict(cfg), with_targets) for r in rows],
                                    workers=workers, description=description)

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
        p = torch.sigmoid(model(_inputs(batch))["outputs"]["malignancy"].reshape(-1))
        if only is not None:
            p = torch.where(batch["present"][only].bool(), p, torch.full_like(p, float("nan")))
        out.append(p.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "targets"}


class Pipeline:
    """A trained medical model plus its preprocessing, rebuilt from one checkpoint file."""

    def __init__(self, model, config: ModelConfig, meta: dict | None = None, device: str = "auto",
                 path: str | None = None):
        from mmapps.device import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.meta = dict(meta or {})
        self.path = path

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str = "auto") -> "Pipeline":
        from mmapps.checkpoint import CheckpointError, load_checkpoint, load_state
        from mmapps.config import config_from_dict

        from mmapps.paths import bundled_model

        path = Path(path) if path else bundled_model("medical")
        bundle = load_checkpoint(path)
        conf = bundle["config"]
        if conf.get("scenario") != "medical" or "model" not in conf:
            raise CheckpointError(f"{path}: not a medical model checkpoint")
        cfg = config_from_dict(ModelConfig, conf["model"])
        model = load_state(build_model(cfg), bundle, path)
        return cls(model, cfg, bundle.get("meta"), device, str(path))

    # -- inputs --------------------------------------------------------------------------------------
    def prepare(self, study=None, record=None, mri=None) -> tuple[dict, dict, list[str]]:
        """Read and validate the inputs -> (sample, views for pictures, warnings)."""
        warnings: list[str] = []
        sample: dict = {}
        views: dict = {}
        if study is None and record is None and mri is None:
            raise UserError("nothing to predict from: give a CT study, a record and/or an MRI")
        if study is not None:
            vol = load_ct(study)
            warnings += vol.warnings
            if "ct" in self.config.modalities:
                ct = preprocess_ct(vol, self.config.ct_grid, self.config.ct_crop)
                sample["ct"] = {k: ct[k] for k in ("grid", "crop", "geom")}
                views.update(ct=ct["grid"][0].numpy(), crop=ct["crop"][0].numpy(), candidate=ct["_candidate"],
                             spacing=vol.spacing, shape=vol.array.shape, hu=vol.array)
            else:
                warnings.append(f"{study}: this model does not use CT; the study was read and ignored")
        if mri is not None:
            vol = load_mri(mri)
            warnings += vol.warnings
            if "mri" in self.config.modalities:
                sample["mri"] = preprocess_mri(vol, self.config.mri_grid)
            else:
                warnings.append(f"{mri}: this model does not use MRI; ignored")
        if record is not None:
            fields, w = read_record(record)
            warnings += w
            views["record"] = fields
            if "record" in self.config.modalities:
                sample["record"] = torch.from_numpy(record_vector(fields))
            else:
                warnings.append(f"{record}: this model does not use the record; ignored")
        for m in ("ct", "mri", "record"):
            if m in self.config.modalities and m not in sample:
                warnings.append(f"{m} missing: predicted without it")
        if not sample:
            raise UserError("none of the given inputs is used by this model (it uses "
                            f"{', '.join(self.config.modalities)})")
        return sample, views, warnings

    def predict(self, study=None, record=None, mri=None, report: str | Path | None = None) -> dict:
        from mmapps.data import collate_samples, move_to
        from mmapps.explain import masked_contributions

        sample, views, warnings = self.prepare(study, record, mri)
        batch = move_to(collate_samples([sample]), self.device)
        with torch.no_grad():
            out = self.model(batch)
        p = float(torch.sigmoid(out["outputs"]["malignancy"].reshape(-1))[0])
        masked = masked_contributions(self.model, batch, "malignancy")
        weights = {m: float(w[0]) for m, w in out["weights"].items() if m in sample}
        result = {
            "probability": round(p, 4),
            "risk_category": risk_category(p),
            "modalities": {m: m in sample for m in ("ct", "mri", "record")},
            "contributions": {"masked_delta": {m: round(float(v[0]), 4) for m, v in masked.items()},
                              "fusion_weights": {m: round(v, 4) for m, v in weights.items()}},
            "warnings": warnings,
            "report": None,
        }
        aux = self._aux(out)
        if aux:
            result["ct_findings"] = aux
        if report is not None:
            cam = self.grad_cam(batch) if "ct" in sample else None
            if "ct" in sample:
                views["crop_cam"] = self.grad_cam(batch, "crop")
            from .viz import write_report

            result["report"] = str(write_report(Path(report), views, cam, result, study))
        return result

    def _aux(self, out) -> dict:
        """Auxiliary head read-outs (the CT features the model thinks it sees)."""
        o = out["outputs"]
        if "nodule_size" not in o or not self.config.aux_heads:
            return {}
        from .models import NODULE_TYPES

        return {"nodule_size_mm": round(float(10 * 2 ** o["nodule_size"].reshape(-1)[0]), 1),
                "nodule_type": NODULE_TYPES[int(o["nodule_type"][0].argmax())],
                "spiculation_probability": round(float(torch.sigmoid(o["spiculation"].reshape(-1)[0])), 3),
                "upper_lobe_probability": round(float(torch.sigmoid(o["upper_lobe"].reshape(-1)[0])), 3),
                "emphysema_probability": round(float(torch.sigmoid(o["emphysema"].reshape(-1)[0])), 3)}

    def grad_cam(self, batch, branch: str = "grid") -> np.ndarray | None:
        """Grad-CAM of the malignancy logit on a CT branch (monai.visualize.GradCAM): ``grid`` = the lung-region
        CNN, ``crop`` = the nodule-centred CNN."""
        from monai.visualize import GradCAM

        model = self.model

        class CTOnly(torch.nn.Module):
            # GradCAM wants forward(x) -> logits; everything but this CT branch's input stays fixed.
            def __init__(self):
                super().__init__()
                self.fusion_model = model

            def forward(self, x):
                return model({**batch, "ct": {**batch["ct"], branch: x}})["outputs"]["malignancy"].reshape(-1, 1)

        wrapper = CTOnly().eval()
        layer = "grid_net.features" if branch == "grid" else "crop_net.features"
        try:
            cam = GradCAM(nn_module=wrapper, target_layers="fusion_model.encoders.ct." + layer)
            import warnings as _w

            with torch.enable_grad(), _w.catch_warnings():
                _w.simplefilter("ignore")  # hook notices from torch: not the user's business
                m = cam(x=batch["ct"][branch].detach().clone().requires_grad_(True), class_idx=0)
            return m[0, 0].detach().cpu().numpy()
        except Exception as e:  # an explanation must never break a prediction
            import warnings as _w

            _w.warn(f"Grad-CAM failed: {e}")
            return None
