"""CT and MRI preprocessing: the gate + lung mask + nodules of a CT (``analyse_ct``), the lung-region grid and the
nodule-centred crops the CT encoder reads (``ct_inputs``), and the MRI intensity normalisation."""
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


def _resize(t: torch.Tensor, size) -> torch.Tensor:
    """[1,1,D,H,W] -> [1,1,*size]: area averaging when shrinking (keeps partial volume), trilinear when growing."""
    up = [max(s, g) for s, g in zip(t.shape[2:], size)]
    if up != list(t.shape[2:]):
        t = F.interpolate(t, size=up, mode="trilinear", align_corners=False)
    return F.adaptive_avg_pool3d(t, tuple(size)) if list(t.shape[2:]) != list(size) else t


def analyse_ct(vol: Volume) -> dict:
    """The gate, the lung mask and the nodules of one CT: {"scan": ChestScan, "nodules": [...]}
    (nodules only when assessable; see :func:`medical.nodules.detect_nodules`)."""
    from .lungs import read_chest_ct
    from .nodules import detect_nodules

    scan = read_chest_ct(vol)
    return {"scan": scan, "nodules": detect_nodules(scan) if scan.assessable else []}


def _window(a: np.ndarray) -> np.ndarray:
    lo, hi = CT_WINDOW
    return (np.clip(a, lo, hi) - lo) / (hi - lo)


def lung_grid(scan, grid: int) -> torch.Tensor:
    """[2, g, g, g]: the lung box of the working grid, HU-windowed, area average + max (emphysema, count)."""
    region = scan.hu[tuple(slice(a, b) for a, b in lung_box(scan))]
    x = torch.from_numpy(np.ascontiguousarray(_window(region), dtype=np.float32))[None, None]
    up = [max(s, grid) for s in x.shape[2:]]
    if up != list(x.shape[2:]):
        x = F.interpolate(x, size=up, mode="trilinear", align_corners=False)
    return torch.cat([F.adaptive_avg_pool3d(x, grid), F.adaptive_max_pool3d(x, grid)], dim=1)[0]


def lung_box(scan) -> list[tuple[int, int]]:
    idx = np.nonzero(scan.lung)
    return [(int(i.min()), int(i.max()) + 1) if len(i) else (0, n) for i, n in zip(idx, scan.hu.shape)]


def nodule_crop(scan, centre, crop: int, crop_mm: float = 56.0) -> torch.Tensor:
    """[1, c, c, c]: a crop_mm cube of the working grid centred on ``centre`` (padded with air)."""
    lo = CT_WINDOW[0]
    hu = scan.hu
    half = int(round(crop_mm / 2 / scan.spacing_mm))
    c = [int(v) for v in centre]
    sl = tuple(slice(max(0, c[i] - half), min(hu.shape[i], c[i] + half + 1)) for i in range(3))
    cube = np.full([2 * half + 1] * 3, lo, np.float32)
    dst = tuple(slice(s.start - (c[i] - half), s.stop - (c[i] - half)) for i, s in enumerate(sl))
    cube[dst] = hu[sl]
    return _resize(torch.from_numpy(_window(cube).astype(np.float32))[None, None], (crop, crop, crop))[0]


def nodule_measures(scan, nodule: dict | None, count: int, measured: bool = True) -> torch.Tensor:
    """The measured CT variables of one nodule (``MEASURED_FEATURES``, or the 5-number geometry when
    ``measured`` is off): position in the lung box (-1..1), Brock's size term, type, spiculation, lobe,
    emphysema (lung fraction < -950 HU), nodule count, found flag."""
    from .models import GEOMETRY_FEATURES, MEASURED_FEATURES

    emphysema = float(scan.stats.get("emphysema_fraction", 0.0))
    if nodule is None:
        v = torch.zeros(len(MEASURED_FEATURES) if measured else GEOMETRY_FEATURES)
        if measured:
            v[MEASURED_FEATURES.index("emphysema_fraction")] = 10.0 * emphysema
            v[MEASURED_FEATURES.index("lobe_unknown")] = 1.0
            v[MEASURED_FEATURES.index("nodule_count")] = -1.0
        return v
    box = lung_box(scan)
    c = nodule["center_voxel"]
    rel = [2.0 * (c[i] - a) / max(b - a, 1) - 1.0 for i, (a, b) in enumerate(box)]
    if not measured:
        return torch.tensor(rel + [nodule["diameter_mm"] / 20.0, 1.0], dtype=torch.float32)
    d = max(float(nodule["diameter_mm"]), 1.0)
    upper = nodule.get("upper_lobe")
    values = rel + [
        (d / 10.0) ** -0.5 - 1.58113883,  # Brock's size transform
        float(nodule["type"] == "part-solid"), float(nodule["type"] == "ground-glass"),
        float(nodule.get("spiculation_score", 0.0)) * 5.0,
        float(bool(upper)) if upper is not None else 0.0, float(upper is None),
        10.0 * emphysema, (count - 4) / 4.0, 1.0]
    return torch.tensor(values, dtype=torch.float32)


def ct_inputs(analysis: dict, grid: int, crop: int, measured: bool = True) -> list[dict]:
    """The CT encoder's inputs, one per reported nodule (the lung grid shared):
    [{"grid": [2,g,g,g], "crop": [1,c,c,c], "geom": [len(MEASURED_FEATURES)] (or [5])}]; one nodule-free entry
    when none was found."""
    scan = analysis["scan"]
    g = lung_grid(scan, grid)
    nodules = analysis["nodules"] or [None]
    out = []
    for n in nodules:
        centre = n["center_voxel"] if n is not None else [(a + b) // 2 for a, b in lung_box(scan)]
        out.append({"grid": g, "crop": nodule_crop(scan, centre, crop),
                    "geom": nodule_measures(scan, n, len(analysis["nodules"]), measured)})
    return out


def preprocess_mri(vol: Volume, grid: int) -> torch.Tensor:
    """MR intensities have no units: robust min-max (1st-99th percentile) to [0, 1]; axes turned to the anatomy's
    (superior, posterior, left) first, like the CT's."""
    from .lungs import canonical_volume

    a = canonical_volume(vol).array
    sub = a[:: max(1, a.shape[0] // 16), :: max(1, a.shape[1] // 64), :: max(1, a.shape[2] // 64)]
    lo, hi = np.percentile(sub, [1, 99])
    return to_grid(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1.5), grid)
