"""Synthetic lung-screening cohort: chest CT (DICOM), MRI for part of the cohort, FHIR R4 records, manifest.

Labels come from a published clinical model (Brock/PanCan 2b + the record terms of PLCOm2012, see
``logit``), so the best achievable AUROC is known: ``oracle_probability = sigmoid(x)`` is in the manifest.
The CT carries the nodule variables (size, type by HU, spiculation, lobe, count) and emphysema; the record
carries age, sex, family history, education, BMI, COPD, cancer history and smoking.
Everything is a pure function of (seed, patient index): same seed -> byte-identical output.
"""
from __future__ import annotations

import hashlib
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

FOV_XY_MM = 350.0  # in-plane field of view
EXTENT_Z_MM = 320.0  # cranio-caudal coverage
PREVALENCE = 0.3
NEVER_SMOKER_TERM = -1.0  # convention: PLCOm2012 smoking terms are undefined for never-smokers; use -1.0
TYPES = ("solid", "part-solid", "non-solid")
STORES = ("dicom", "inputs")  # synth --store: the scans as DICOM, or only what the default model reads from them
INPUTS_FILE = "inputs.pt"


# ----------------------------------------------------------------------------------------------------
# Clinical model
# ----------------------------------------------------------------------------------------------------
def brock_plco_logit(v: dict) -> float:
    """Brock 2b (McWilliams 2013) + PLCOm2012 record terms (Tammemagi 2013), without the prevalence shift."""
    type_term = {"solid": 0.0, "part-solid": 0.377, "non-solid": -0.1276}[v["nodule_type"]]
    x = (-6.7892 + 0.0287 * (v["age"] - 62) + 0.6011 * (v["sex"] == "female")
         + 0.2961 * v["family_history_lung_cancer"] + 0.2953 * v["emphysema"]
         - 5.3854 * ((v["nodule_size_mm"] / 10.0) ** -0.5 - 1.58113883) + type_term
         + 0.6581 * v["upper_lobe"] - 0.0824 * (v["nodule_count"] - 4) + 0.7729 * v["spiculation"])
    x += (-0.0812744 * (v["education"] - 4) - 0.0274194 * (v["bmi"] - 27) + 0.3553063 * v["copd"]
          + 0.4589971 * v["personal_cancer_history"])
    if v["smoking_status"] == "never":
        x += NEVER_SMOKER_TERM
    else:
        x += (0.2597431 * (v["smoking_status"] == "current")
              - 1.822606 * ((v["cigs_per_day"] / 10.0) ** -1 - 0.4021541613)
              + 0.0317321 * (v["smoking_years"] - 27) - 0.0308572 * (v["years_quit"] - 10))
    return float(x)


def sample_variables(rng: np.random.Generator) -> dict:
    """Record and nodule variables of one screening patient (ages 50-80, mostly ever-smokers)."""
    v: dict = {}
    v["age"] = round(float(rng.uniform(50, 80)), 1)
    v["sex"] = "female" if rng.random() < 0.45 else "male"
    v["family_history_lung_cancer"] = int(rng.random() < 0.2)
    v["education"] = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.08, 0.25, 0.12, 0.25, 0.18, 0.12]))
    v["bmi"] = round(float(np.clip(rng.normal(27, 4.5), 16, 45)), 1)
    v["copd"] = int(rng.random() < 0.2)
    v["personal_cancer_history"] = int(rng.random() < 0.1)
    v["smoking_status"] = str(rng.choice(["never", "former", "current"], p=[0.2, 0.45, 0.35]))
    if v["smoking_status"] == "never":
        v["cigs_per_day"] = v["smoking_years"] = v["years_quit"] = v["pack_years"] = 0.0
    else:
        v["cigs_per_day"] = round(float(np.clip(rng.lognormal(math.log(18), 0.45), 5, 60)), 0)
        v["smoking_years"] = round(float(rng.uniform(10, min(v["age"] - 15, 55))), 1)
        room = max(v["age"] - 15 - v["smoking_years"], 1.0)
        v["years_quit"] = round(float(rng.uniform(1, min(30, room))), 1) if v["smoking_status"] == "former" else 0.0
        v["pack_years"] = round(v["cigs_per_day"] / 20.0 * v["smoking_years"], 1)
    v["emphysema"] = int(rng.random() < (0.55 if v["copd"] else 0.2))
    v["nodule_count"] = int(min(1 + rng.poisson(1.0), 6))
    v["nodule_size_mm"] = round(float(math.exp(rng.uniform(math.log(4), math.log(30)))), 1)
    v["nodule_type"] = str(rng.choice(TYPES, p=[0.7, 0.15, 0.15]))
    v["spiculation"] = int(rng.random() < 0.2)
    v["upper_lobe"] = int(rng.random() < 0.55)
    return v


@lru_cache(maxsize=None)
def intercept_shift(prevalence: float = PREVALENCE) -> float:
    """Shift added to the logit so the mean oracle probability is ``prevalence`` (fixed reference sample)."""
    rng = np.random.default_rng(20130905)
    xs = np.array([brock_plco_logit(sample_variables(rng)) for _ in range(20000)])
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(xs + mid)))).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)


def logit(v: dict) -> float:
    return brock_plco_logit(v) + intercept_shift()


# ----------------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------------
def _coords(shape):
    D, H, W = shape
    dz, dy, dx = EXTENT_Z_MM / D, FOV_XY_MM / H, FOV_XY_MM / W
    z = ((np.arange(D) - (D - 1) / 2) * dz).astype(np.float32)[:, None, None]
    y = ((np.arange(H) - (H - 1) / 2) * dy).astype(np.float32)[None, :, None]
    x = ((np.arange(W) - (W - 1) / 2) * dx).astype(np.float32)[None, None, :]
    return z, y, x, (dz, dy, dx)


def _ellipsoid(z, y, x, c, r):
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2


def _block(z, y, x, lo, hi):
    """The index slices (z, y, x) of the grid points inside the box lo..hi (mm, z, y, x): drawing a vessel or an
    emphysema blob only there gives the same voxels as drawing it over the whole volume, at a fraction of the cost
    (thin-slice scans have 16 M voxels)."""
    out = []
    for axis, coord in enumerate((z.ravel(), y.ravel(), x.ravel())):
        i0 = int(np.searchsorted(coord, lo[axis] - 1e-3, "left"))
        i1 = int(np.searchsorted(coord, hi[axis] + 1e-3, "right"))
        out.append(slice(i0, max(i0, i1)))
    return tuple(out)


def _sub(z, y, x, sl):
    return z[sl[0]], y[:, sl[1]], x[:, :, sl[2]]


def _seg_dist(pz, py, px, a, b):
    """Distance of grid points to segment a-b (all in mm)."""
    ab = np.subtract(b, a, dtype=np.float32)
    t = ((pz - a[0]) * ab[0] + (py - a[1]) * ab[1] + (px - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0, 1)
    return np.sqrt((pz - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (px - a[2] - t * ab[2]) ** 2)


CHEST_WALL = 0.72  # lungs end where the body outline's normalised squared radius reaches this (fat from 0.82): a wall
HEART = ((-60.0, -25.0, 15.0), (55.0, 48.0, 52.0))  # centre, radii (z, y, x) mm: cut out of the lungs


def _point_in_lung(rng, lung, upper: bool | None, margin: float = 0.65, body=None):
    """A point inside ``lung`` ((centre, radii) z, y, x mm), in the upper/lower half when asked, off the heart
    and, given ``body`` (the body outline's x and y semi-axes), off the chest wall."""
    c, r = lung
    for _ in range(200):
        u = rng.uniform(-1, 1, 3)
        if (u ** 2).sum() > 1:
            continue
        if upper is not None and (u[0] > 0.1) != upper:  # z > 0 is superior (upper lobe)
            continue
        p = np.array(c) + u * np.array(r) * margin
        if sum(((p[i] - HEART[0][i]) / (HEART[1][i] + 8)) ** 2 for i in range(3)) <= 1:
            continue  # inside (or touching) the heart: not lung
        if body is not None and (p[1] / body[1]) ** 2 + (p[2] / body[0]) ** 2 > 0.9 * CHEST_WALL:
            continue  # in (or touching) the chest wall: not lung
        return p
    return np.array(c)


def render_ct(v: dict, rng: np.random.Generator, shape=(64, 128, 128)):
    """A chest CT in HU: body, fat, spine, lungs (~-850), vessels, emphysema (< -950), nodules."""
    z, y, x, spacing = _coords(shape)
    a, b = rng.uniform(150, 168), rng.uniform(100, 118)
    body_r = (y / b) ** 2 + (x / a) ** 2
    vol = np.full(np.broadcast_shapes(z.shape, y.shape, x.shape), -1000.0, dtype=np.float32)
    vol = np.where(body_r <= 1.0, np.float32(40.0), vol)
    vol = np.where((body_r > 0.82) & (body_r <= 1.0), np.float32(-100.0), vol)  # subcutaneous fat
    vol = np.where(((y - (b - 32)) ** 2 + x ** 2 <= 15 ** 2) & (np.abs(z) < EXTENT_Z_MM / 2), np.float32(450.0), vol)
    lungs = []
    lung_mask = np.zeros(vol.shape, bool)
    for side in (-1, 1):
        c = (rng.uniform(-5, 10), rng.uniform(-8, 8), side * rng.uniform(66, 78))
        r = (rng.uniform(120, 138), rng.uniform(68, 80), rng.uniform(48, 58))
        lungs.append((c, r))
        lung_mask |= _ellipsoid(z, y, x, c, r) <= 1.0
    heart = _ellipsoid(z, y, x, *HEART) <= 1.0
    # Lungs stay inside the chest wall: an ellipsoid drawn past the body outline opened the lung to the air
    # outside, and ~2 % of scans lost a lung to the gate ("air on one side of the body only").
    lung_mask &= ~heart & (body_r <= CHEST_WALL)
    vol[lung_mask] = -850.0 + rng.normal(0, 15, int(lung_mask.sum())).astype(np.float32)
    # Emphysema: low-attenuation areas (< -950 HU) inside the lungs.
    if v["emphysema"]:
        for _ in range(int(rng.integers(8, 16))):
            lc = lungs[int(rng.integers(0, 2))]
            p = _point_in_lung(rng, lc, None, 0.8, (a, b))
            rr = rng.uniform(10, 22)
            radii = (rr, rr * 0.8, rr * 0.8)
            sl = _block(z, y, x, np.subtract(p, radii), np.add(p, radii))
            blob = (_ellipsoid(*_sub(z, y, x, sl), p, radii) <= 1.0) & lung_mask[sl]
            vol[sl][blob] = -980.0
    # Vessels: tapered tubes branching from each hilum.
    for side, lc in zip((-1, 1), lungs):
        hilum = (0.0, 0.0, side * 38.0)
        for _ in range(7):
            end = _point_in_lung(rng, lc, None, 0.9, (a, b))
            rad = rng.uniform(1.5, 3.5)
            sl = _block(z, y, x, np.minimum(hilum, end) - rad, np.maximum(hilum, end) + rad)
            d = _seg_dist(*_sub(z, y, x, sl), hilum, end)
            vol[sl] = np.where((d <= rad) & lung_mask[sl], np.float32(35.0), vol[sl])
    # Nodules: the index nodule carries size/type/spiculation/lobe; extra ones are small and solid.
    nodules = []
    side = int(rng.integers(0, 2))
    centre = _point_in_lung(rng, lungs[side], bool(v["upper_lobe"]), body=(a, b))
    nodules.append((centre, v["nodule_size_mm"], v["nodule_type"], v["spiculation"]))
    for _ in range(v["nodule_count"] - 1):
        nodules.append((_point_in_lung(rng, lungs[int(rng.integers(0, 2))], None, body=(a, b)), rng.uniform(3, 6), "solid", 0))
    for c, size, kind, spic in nodules:
        _draw_nodule(vol, z, y, x, spacing, c, size, kind, spic, rng)
    vol += rng.normal(0, 20, vol.shape).astype(np.float32)
    return vol, spacing, {"centre_mm": [float(t) for t in centre],
                          "nodules": [([float(t) for t in c], float(size), kind) for c, size, kind, _ in nodules]}


def synthetic_chest_scan(seed: int, index: int, shape=(64, 128, 128)):
    """Scan ``index`` of a seeded series of synthetic chest CTs, rendered in memory: (a Volume whose LPS
    coordinates equal the generator's mm, its nodules [(centre LPS x, y, z, diameter mm)]). Detection checks
    and the false-candidate classifier use these (every nodule's position is known)."""
    from .io import Volume, default_affine

    rng = np.random.default_rng([seed, index])
    ct, spacing, extra = render_ct(sample_variables(rng), rng, shape)
    aff = default_affine(spacing)
    aff[:3, 3] = [-(shape[2] - 1) * spacing[2] / 2, -(shape[1] - 1) * spacing[1] / 2, -(shape[0] - 1) * spacing[0] / 2]
    truth = [(np.array([c[2], c[1], c[0]]), size) for c, size, _ in extra["nodules"]]  # z,y,x -> LPS x,y,z
    return Volume(ct, spacing, "CT", f"synthetic {index}", affine=aff), truth


def _draw_nodule(vol, z, y, x, spacing, c, size, kind, spic, rng):
    r = size / 2.0
    ext = r + 12.0
    # Work in a local box around the nodule: cheap even on big grids.
    sl = []
    for axis, (coord, cc) in enumerate(zip((z, y, x), c)):
        arr = coord.reshape(-1)
        idx = np.nonzero(np.abs(arr - cc) <= ext)[0]
        if len(idx) == 0:
            return
        sl.append(slice(int(idx[0]), int(idx[-1]) + 1))
    lz, ly, lx = z.reshape(-1)[sl[0]][:, None, None], y.reshape(-1)[sl[1]][None, :, None], x.reshape(-1)[sl[2]][None, None, :]
    box = vol[sl[0], sl[1], sl[2]]
    d = np.sqrt((lz - c[0]) ** 2 + (ly - c[1]) ** 2 + (lx - c[2]) ** 2)
    voxel = float(min(spacing))
    frac = 1.0 / (1.0 + np.exp((d - r) / (0.35 * voxel)))  # soft edge: partial-volume effect
    if kind == "solid":
        hu = np.full_like(d, 30.0)
    elif kind == "part-solid":
        hu = np.where(d <= 0.5 * r, np.float32(30.0), np.float32(-450.0))
    else:
        hu = np.full_like(d, -520.0)
    if spic:
        for _ in range(int(rng.integers(8, 14))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            end = np.asarray(c) + u * (r + rng.uniform(5, 11))
            ds = _seg_dist(lz, ly, lx, c, end)
            spike = 1.0 / (1.0 + np.exp((ds - 0.9) / (0.35 * voxel)))
            frac = np.maximum(frac, spike * (d > r * 0.8))
            hu = np.where((spike > frac - 1e-6) & (d > r), np.float32(-50.0), hu)
    vol[sl[0], sl[1], sl[2]] = box * (1 - frac) + np.maximum(box, hu) * frac


def ct_to_mri(ct: np.ndarray, rng: np.random.Generator, out_shape=(32, 64, 64)) -> np.ndarray:
    """T1-like MR contrast from the same anatomy: air/lung dark, fat bright, soft tissue and nodules mid-grey."""
    import torch
    import torch.nn.functional as F

    hu = np.array([-1000, -850, -500, -100, 40, 450], dtype=np.float32)
    t1 = np.array([0, 40, 180, 900, 420, 250], dtype=np.float32)
    mr = np.interp(ct, hu, t1).astype(np.float32)
    t = torch.from_numpy(mr)[None, None]
    mr = F.adaptive_avg_pool3d(t, out_shape)[0, 0].numpy() if all(
        s >= o for s, o in zip(ct.shape, out_shape)) else F.interpolate(t, size=out_shape, mode="trilinear")[0, 0].numpy()
    bias = np.linspace(0.85, 1.15, out_shape[2], dtype=np.float32)[None, None, :]  # coil bias field
    noisy = np.abs(mr * bias + rng.normal(0, 15, mr.shape) + 1j * rng.normal(0, 15, mr.shape))  # Rician noise
    return noisy.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Cohort
# ----------------------------------------------------------------------------------------------------
def _uid_root(seed: int, index: int, what: str) -> str:
    h = hashlib.sha256(f"mmapps-medical/{seed}/{index}/{what}".encode()).hexdigest()
    return f"2.25.{int(h[:24], 16)}"


def patient_id(index: int) -> str:
    return f"P{index:05d}"


def make_patient(args) -> dict:
    """Write one patient (CT, maybe MRI, FHIR record) under out/patients/<id>; return its manifest row."""
    from mmapps.io import atomic_dir

    from .io import fhir_bundle, write_dicom_series

    out, seed, index, shape, mri_fraction, store = args
    rng = np.random.default_rng([seed, index])
    v = sample_variables(rng)
    x = logit(v)
    p = 1.0 / (1.0 + math.exp(-x))
    label = int(rng.random() < p)
    has_mri = bool(rng.random() < mri_fraction)
    pid = patient_id(index)
    ct, spacing, extra = render_ct(v, rng, shape)
    mr = mr_spacing = None
    if has_mri:
        mr = ct_to_mri(ct, rng, (max(shape[0] // 2, 8), max(shape[1] // 2, 16), max(shape[2] // 2, 16)))
        mr_spacing = (EXTENT_Z_MM / mr.shape[0], FOV_XY_MM / mr.shape[1], FOV_XY_MM / mr.shape[2])
    with atomic_dir(Path(out) / "patients" / pid) as tmp:
        sex = "F" if v["sex"] == "female" else "M"
        if store == "inputs":  # what the model reads, computed as from the DICOM files (tested equal)
            ct_path = mri_path = f"patients/{pid}/{INPUTS_FILE}"
            _store_inputs(tmp / INPUTS_FILE, pid, ct, spacing, mr, mr_spacing)
        else:
            ct_path, mri_path = f"patients/{pid}/ct", f"patients/{pid}/mri"
            write_dicom_series(tmp / "ct", ct, spacing, modality="CT", uid_root=_uid_root(seed, index, "ct"),
                               patient_id=pid, patient_sex=sex, patient_age=int(v["age"]),
                               description="Chest CT (synthetic)")
            if has_mri:
                write_dicom_series(tmp / "mri", mr, mr_spacing, modality="MR", uid_root=_uid_root(seed, index, "mr"),
                                   patient_id=pid, patient_sex=sex, patient_age=int(v["age"]),
                                   description="T1 (synthetic)")
        (tmp / "record.json").write_text(json.dumps(fhir_bundle(pid, v), indent=1) + "\n", encoding="utf-8")
    row = {"patient_id": pid, "label": label, "oracle_probability": round(p, 6), "logit": round(x, 6),
           "ct": ct_path, "mri": mri_path if has_mri else "",
           "record": f"patients/{pid}/record.json", **v,
           **{f"nodule_{a}_mm": round(c, 2) for a, c in zip("zyx", extra["centre_mm"])}}
    return row


def _store_inputs(path: Path, pid: str, ct, spacing, mr, mr_spacing) -> None:
    import torch

    from .dataset import study_inputs
    from .io import as_read_back
    from .models import ModelConfig

    ct_vol = as_read_back(ct, spacing, modality="CT", source=f"synthetic {pid}", patient_id=pid,
                          description="Chest CT (synthetic)")
    mr_vol = None if mr is None else as_read_back(mr, mr_spacing, modality="MR", source=f"synthetic {pid} MRI",
                                                  patient_id=pid, description="T1 (synthetic)")
    torch.save(study_inputs(ct_vol, mr_vol, ModelConfig()), path)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(t) for t in str(text).lower().replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"--shape must look like 64x128x128 (slices x rows x cols); got {text!r}") from None
    if len(parts) != 3 or not all(8 <= p <= 1024 for p in parts):
        raise UserError(f"--shape needs three sizes between 8 and 1024 (slices x rows x cols); got {text!r}")
    return parts  # type: ignore[return-value]


def synth_cohort(out: str | Path, patients: int, seed: int = 0, shape=(64, 128, 128), mri_fraction: float = 0.4,
                 workers: int = 1, shard: tuple[int, int] = (0, 1), store: str = "dicom") -> dict:
    """Generate the cohort; with a shard only that slice of patients and a manifest part are written.

    ``store="inputs"``: each patient keeps the model inputs read from its scans (``medical.dataset.study_inputs``,
    for the default model settings) instead of the DICOM series: ~0.3 MB instead of 33 MB for a 256^3 scan."""
    from mmapps.io import atomic_write_text
    from mmapps.parallel import parallel_map, shard_items

    from .manifest import manifest_text

    out = Path(out)
    if patients < 1:
        raise UserError(f"--patients must be >= 1; got {patients}")
    if not 0 <= mri_fraction <= 1:
        raise UserError(f"--mri-fraction must be in [0, 1]; got {mri_fraction}")
    if store not in STORES:
        raise UserError(f"--store must be one of {', '.join(STORES)}; got {store!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    i, n = shard
    name = "manifest.csv" if n == 1 else f"manifest.shard{i}of{n}.csv"
    for existing in {out / "manifest.csv", out / name}:
        if existing.exists():
            raise UserError(f"{out}: already holds a cohort ({existing.name}); choose a new folder")
    indices = shard_items(list(range(patients)), i, n)
    rows = parallel_map(make_patient, [(str(out), seed, k, tuple(shape), mri_fraction, store) for k in indices],
                        workers=workers, description="synthesizing patients", chunksize=2)
    atomic_write_text(out / name, manifest_text(rows))
    labels = [r["label"] for r in rows]
    return {"out": str(out), "manifest": str(out / name), "patients": len(rows),
            "with_mri": sum(bool(r["mri"]) for r in rows), "prevalence": float(np.mean(labels)) if labels else None,
            "mean_oracle_probability": float(np.mean([r["oracle_probability"] for r in rows])),
            "shape": list(shape), "seed": seed, "shard": f"{i}/{n}", "store": store}
