"""CT and MRI preprocessing: lung mask, the most suspicious candidate, the lung-region grid and the
nodule-centred crop the CT encoder reads, and the MRI intensity normalisation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .io import Volume
from .models import CT_WINDOW


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
