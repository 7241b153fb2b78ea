"""Nodule detection and measurement on the isotropic lung grid of :mod:`medical.lungs`.

Candidates are scale-space maxima of the scale-normalised Laplacian of Gaussian (bright blobs of radius
2.5-18 mm) next to aerated lung; tubes (vessels) and plates are suppressed with the Hessian eigenvalues at the
candidate's scale (a blob curves down along all three axes, a vessel along two); bone is dropped by density.
Each kept candidate is segmented (dense voxels connected to its centre, inside a ball of ~1.6 radii so the
chest wall and vessels do not leak in) and measured: longest axial diameter (as Brock uses), type from the HU
profile, spiculation, lobe position, shape. A logistic regression over those measurements (the false-candidate
reduction stage) scores each; candidates above its threshold are reported. Everything is in mm, so it behaves
the same on 0.7 mm and 3 mm scans.
"""
from __future__ import annotations

import math

import numpy as np

RADII_MM = (2.5, 4.0, 6.0, 9.0, 13.0, 18.0)  # blob radii searched (LoG sigma = r / sqrt(3))
DENSE_HU = -600.0  # nodule tissue (ground glass included: -750..-300; solid >= -300)
SOLID_HU = -300.0
OPEN_MIN_VOXELS = 1.01  # the opening's radius is at least one voxel: one-voxel strands are cut at small scales too
MIN_HALF_CONTRAST_HU = 80.0  # a faint candidate's threshold stays this far above its lung (noise ~20-40 HU)
BONE_HU = 200.0  # mean density above this: rib, vertebra, calcification
MIN_RESPONSE_HU = 120.0  # scale-normalised LoG contrast a blob needs (lung -850 vs ground glass -600: ~250)
MIN_BLOBNESS = 0.25  # |smallest| / |largest| Hessian eigenvalue: sphere 1, vessel (tube) ~0
MIN_FILL_RATIO = 0.3  # branching or elongated masks (vessel bifurcations, segments) fill little of the sphere over
FILL_MIN_DIAMETER_MM = 11.0  # ... their extent; judged only from this axial size up: on a 2.7 mm grid a round 8-10 mm
# nodule's pixelated mask fills only 0.25-0.3 of it too
MAX_ELONGATION = 2.0  # longest / shortest principal axis of the mask, at any size: a nodule ~1-1.5, a vessel segment
# 2-4. These two rules hold for real nodules whatever the scanner; the classifier below ranks what passes them
# (without them the classifier, fitted on synthetic scans only, took the aorta of the real LIDC slab for a nodule)
OPENINGS = (0.5, 0.8)  # opening radii (x the LoG radius) tried in turn until the mask passes the shape rules
MIN_LUNG_CONTACT = 0.25  # share of the ring around the candidate that is aerated lung
MIN_DIAMETER_MM = 4.0  # smaller findings are not reported (Lung-RADS: < 4 mm needs no follow-up)
PER_SCALE = 200  # strongest responses per scale examined in detail: 80 left faint ground-glass nodules behind
# ~150 vessel and noise peaks at the 4 mm scale of a 2.7 mm grid
MIN_SIGMA_VOXELS = 0.7  # finer scales than the grid resolves respond to noise, not blobs
MAX_REPORTED = 10
SCALE_THREADS = 4  # at most this many scales filtered at once (see _scale_responses)
# The LoG response grows with contrast, so a ground-glass nodule (-600..-400 HU in -850 lung) answers at a third
# of a solid one's (~900 HU above the lung): the contrast gain (SOLID_CONTRAST / the candidate's own contrast, at
# most SOLID_CONTRAST / FAINT_CONTRAST) tells the classifier how faint a candidate is, so its shape can carry it.
SOLID_CONTRAST = 700.0
FAINT_CONTRAST = 250.0
MAX_CONTRAST_GAIN = SOLID_CONTRAST / FAINT_CONTRAST
SPICULATED = 0.15  # spiculation score above which a nodule is called spiculated (set on synthetic nodules)


def _scale_responses(hu: np.ndarray, spacing: float) -> list[tuple[float, np.ndarray, int, np.ndarray]]:
    """(radius_mm, response map, grid factor, local-maximum peaks) per scale; large scales on a 2x coarser copy
    for speed. The scales are filtered in parallel threads (scipy.ndimage releases the GIL: 2 threads take the
    512x512x200 study's scale space from ~1.6 to ~0.9 s on 2 cores); results are identical to a serial pass. Inside
    a ``--workers`` process pool the cores are taken: one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy import ndimage

    from mmapps.parallel import thread_count

    img = np.clip(hu, -1000.0, 100.0).astype(np.float32)
    scales = [r for r in RADII_MM if r / math.sqrt(3.0) / spacing >= MIN_SIGMA_VOXELS]
    coarse = [r / math.sqrt(3.0) / spacing > 3.0 and min(img.shape) >= 8 for r in scales]
    half = ndimage.zoom(img, 0.5, order=1) if any(coarse) else None

    def one(k: int):
        r, factor = scales[k], 2 if coarse[k] else 1
        sigma_mm = r / math.sqrt(3.0)
        src, step = (half, 2 * spacing) if factor == 2 else (img, spacing)
        resp = -(sigma_mm ** 2) * ndimage.gaussian_laplace(src, sigma_mm / step, truncate=3.0, mode="nearest") / step ** 2
        peaks = (resp == ndimage.maximum_filter(resp, size=3)) & (resp >= MIN_RESPONSE_HU)
        return r, resp, factor, peaks

    threads = thread_count(len(scales), SCALE_THREADS)
    if threads == 1:
        return [one(k) for k in range(len(scales))]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(scales))))


def find_candidates(hu: np.ndarray, lung: np.ndarray, spacing: float) -> list[dict]:
    """Blob-shaped scale-space maxima inside the lung mask, one per blob:
    [{"index": (z, y, x) on the grid, "radius_mm", "response", "blobness"}], strongest first."""
    near_lung = lung  # the closed mask holds juxtapleural nodules; the mediastinum and hila stay outside
    found = []
    for r, resp, factor, peaks in _scale_responses(hu, spacing):
        idx = np.argwhere(peaks)
        idx = idx[np.argsort(-resp[tuple(idx.T)])]
        n = 0
        for i in idx:
            full = tuple(min(int(a * factor), s - 1) for a, s in zip(i, hu.shape))
            if not near_lung[full]:
                continue
            b = blobness(hu, full, r, spacing)  # vessels (tubes) and plates stop here
            if b >= MIN_BLOBNESS:
                found.append({"index": full, "radius_mm": r, "response": float(resp[tuple(i)]), "blobness": b})
            n += 1
            if n >= PER_SCALE:
                break
    found.sort(key=lambda c: -c["response"])
    kept: list[dict] = []
    for c in found:  # non-maximum suppression across scales
        if all(_dist(c, k, spacing) > max(c["radius_mm"], k["radius_mm"]) for k in kept):
            kept.append(c)
    return kept


def _dist(a, b, spacing) -> float:
    return spacing * float(np.linalg.norm(np.subtract(a["index"], b["index"])))


def _kernel(sigma: float, order: int) -> np.ndarray:
    """scipy's Gaussian (derivative) weights for ``correlate1d``, truncate 4 (as ``gaussian_filter`` uses)."""
    from scipy.ndimage._filters import _gaussian_kernel1d

    radius = int(4.0 * float(sigma) + 0.5)
    return _gaussian_kernel1d(sigma, order, radius)[::-1]


def blobness(hu: np.ndarray, index, radius_mm: float, spacing: float) -> float:
    """|lambda_min| / |lambda_max| of the Hessian at the candidate's scale, 0 unless all three are negative.

    The Gaussian derivatives are evaluated at the one point only (a separable weighted sum over an edge-padded
    patch: what ``gaussian_filter(..., order, mode="nearest")`` gives there, without filtering the patch)."""
    sigma = radius_mm / math.sqrt(3.0) / spacing
    h = int(math.ceil(3 * sigma)) + 2
    sl = tuple(slice(max(0, i - h), i + h + 1) for i in index)
    patch = np.clip(hu[sl], -1000, 100).astype(np.float64)
    c = [i - s.start for i, s in zip(index, sl)]
    k = {o: _kernel(sigma, o) for o in (0, 1, 2)}
    R = (len(k[0]) - 1) // 2
    # The window [c-R, c+R] of the patch, extended with its edge values (scipy's "nearest" mode).
    pad = [(max(0, R - ci), max(0, ci + R + 1 - n)) for ci, n in zip(c, patch.shape)]
    padded = np.pad(patch, pad, mode="edge")
    win = padded[tuple(slice(ci + p[0] - R, ci + p[0] + R + 1) for ci, p in zip(c, pad))]
    hess = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            hess[a, b] = hess[b, a] = np.einsum("ijk,i,j,k->", win, k[order[0]], k[order[1]], k[order[2]])
    ev = np.linalg.eigvalsh(hess)
    if ev.max() >= 0:
        return 0.0
    mags = np.sort(np.abs(ev))
    return float(mags[0] / max(mags[-1], 1e-9))


def dense_threshold(hu: np.ndarray, index, radius_mm: float, spacing: float) -> float:
    """The HU above which a voxel belongs to the candidate: DENSE_HU, or for a faint candidate half-way between
    the surrounding lung and its core (full width at half contrast). A ground-glass nodule of a few mm, blurred
    with lung by thick slices and resampling, keeps only a core of -650..-550 HU: above -600 it was 2-3 voxels."""
    levels = core_and_background(hu, index, radius_mm, spacing)
    if levels is None:
        return DENSE_HU
    core, background = levels
    half = 0.5 * (core + background)
    return float(min(DENSE_HU, max(half, background + MIN_HALF_CONTRAST_HU)))


def segment(hu: np.ndarray, index, radius_mm: float, spacing: float,
            opening: float = 0.5) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Voxels above :func:`dense_threshold` connected to the centre inside a ball of 1.6 radii (+ 1 voxel): the
    nodule's mask in a local box: (body after an opening with a ball of ``opening`` radii (at least one voxel) that
    cuts attached vessels, body plus the raw mask's rim within half the opening radius of it: what the diameter is
    measured on, the box)."""
    from scipy import ndimage

    rad = 1.6 * radius_mm / spacing + 1
    h = int(math.ceil(rad)) + 1
    sl = tuple(slice(max(0, i - h), i + h + 1) for i in index)
    box = hu[sl]
    c = np.array([i - s.start for i, s in zip(index, sl)])
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in box.shape)]
    ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= rad ** 2
    dense = (box > dense_threshold(hu, index, radius_mm, spacing)) & ball
    labels, n = ndimage.label(dense)
    if n == 0:
        return np.zeros_like(dense), np.zeros_like(dense), sl
    core = labels[tuple(c)]
    if core == 0:  # centre voxel itself below the threshold (tiny / faint): nearest dense component
        d = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
        core = labels[tuple(d[:, c[0], c[1], c[2]])]
    mask = raw = labels == core
    # Opening with a ball of half the blob radius cuts attached vessels and strands off the nodule's body.
    rho = max(opening * radius_mm, OPEN_MIN_VOXELS * spacing)
    if rho > spacing:
        body = ndimage.distance_transform_edt(mask, sampling=spacing) > rho
        body = ndimage.distance_transform_edt(~body, sampling=spacing) <= rho
        lab, n = ndimage.label(body & mask)
        if n:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            mask = lab == int(np.argmax(sizes))
            # Lobulated edges the opening shaved off still count for the size (readers measure the outline).
            raw = raw & (ndimage.distance_transform_edt(~mask, sampling=spacing) <= 0.5 * rho)
    return mask, raw | mask, sl


def fill_ratio(mask: np.ndarray, spacing: float) -> float:
    """Mask volume / volume of the sphere spanning its longest 3D extent: ~0.5-1 for a nodule, ~0.1 for a
    vessel segment."""
    pts = np.argwhere(mask).astype(float)
    if len(pts) < 2:
        return 1.0
    if len(pts) > 300:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except (QhullError, ValueError):
            pass
    d = (np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() + 1.0) * spacing
    return float(mask.sum() * spacing ** 3 / (math.pi / 6.0 * d ** 3))


def elongation(mask: np.ndarray, spacing: float) -> float:
    """sqrt(largest / smallest eigenvalue) of the mask's voxel-position covariance, each voxel a uniform cube (so
    a single voxel reads 1): ~1-1.5 for a nodule, 2-4 for a vessel segment."""
    pts = np.argwhere(mask).astype(float) * spacing
    if len(pts) < 2:
        return 1.0
    ev = np.linalg.eigvalsh(np.cov(pts.T) + np.eye(3) * spacing ** 2 / 12.0)
    return float(math.sqrt(ev[-1] / max(ev[0], 1e-9)))


def longest_axial_diameter(mask: np.ndarray, spacing: float) -> tuple[float, int]:
    """Longest in-plane extent (mm) on the axial slice where the nodule is largest, and that slice."""
    areas = mask.sum(axis=(1, 2))
    k = int(np.argmax(areas))
    pts = np.argwhere(mask[k]).astype(float)
    if len(pts) < 2:
        return spacing, k
    if len(pts) > 400:  # the longest chord runs between hull points
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except (QhullError, ValueError):
            pass
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
    return float((d + 1.0) * spacing), k  # +1 voxel: extent of the outer voxel faces


def nodule_type(values: np.ndarray) -> str:
    """solid / part-solid / ground-glass from the HU of the nodule's voxels."""
    if values.size == 0 or np.percentile(values, 90) < SOLID_HU:
        return "ground-glass"
    return "solid" if float((values >= SOLID_HU).mean()) >= 0.5 else "part-solid"


def _shell_values(hu: np.ndarray, index, radius_mm: float, spacing: float, inner: float, outer: float) -> np.ndarray:
    """HU of the voxels between ``inner`` and ``outer`` radii around ``index``."""
    h = int(math.ceil(outer * radius_mm / spacing)) + 1
    sl = tuple(slice(max(0, i - h), i + h + 1) for i in index)
    box = hu[sl]
    c = [i - s.start for i, s in zip(index, sl)]
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in box.shape)]
    d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) * spacing
    return box[(d >= inner * radius_mm) & (d <= outer * radius_mm)]


def spiculation_score(hu: np.ndarray, index, radius_mm: float, spacing: float) -> float:
    """Share of the shell between 1.15 and 1.6 equivalent radii that is dense: strands radiating from the
    nodule fill part of it, a smooth nodule in clear lung leaves it empty (a passing vessel adds a little)."""
    shell = _shell_values(hu, index, radius_mm, spacing, 1.15, 1.6)
    return float((shell > DENSE_HU).mean()) if shell.size else 0.0


def core_and_background(hu: np.ndarray, index, radius_mm: float, spacing: float) -> tuple[float, float] | None:
    """(mean HU of the inner half-radius ball, median HU of the 1.3-1.8 radius ring), both clipped like the LoG
    input; None when either is empty."""
    inner = np.clip(_shell_values(hu, index, radius_mm, spacing, 0.0, 0.5), -1000, 100)
    ring = np.clip(_shell_values(hu, index, radius_mm, spacing, 1.3, 1.8), -1000, 100)
    if inner.size == 0 or ring.size == 0:
        return None
    return float(inner.mean()), float(np.median(ring))


def contrast_gain(hu: np.ndarray, index, radius_mm: float, spacing: float) -> float:
    """SOLID_CONTRAST / the candidate's contrast, within [1, MAX_CONTRAST_GAIN]. Contrast = mean HU of the inner
    half-radius ball minus the median of a 1.3-1.8 radius ring, both clipped like the LoG input. Anything fainter
    than FAINT_CONTRAST gets the maximum gain: its LoG response and blobness must still carry the score."""
    levels = core_and_background(hu, index, radius_mm, spacing)
    if levels is None:
        return 1.0
    contrast = levels[0] - levels[1]
    return float(np.clip(SOLID_CONTRAST / max(contrast, FAINT_CONTRAST), 1.0, MAX_CONTRAST_GAIN))


def lung_contact(hu: np.ndarray, index, radius_mm: float, spacing: float) -> float:
    """Share of a ring just outside the candidate (1.3-1.8 radii) that is aerated lung (< -700 HU)."""
    shell = _shell_values(hu, index, radius_mm, spacing, 1.3, 1.8)
    return float((shell < -700).mean()) if shell.size else 0.0


def detect_nodules(scan, classifier: "NoduleClassifier | None" = None) -> list[dict]:
    """Nodules >= MIN_DIAMETER_MM in an assessable :class:`medical.lungs.ChestScan`, largest first.

    Returns:
        [{"center_voxel": [z, y, x] on the working grid, "center_mm": [x, y, z] LPS, "diameter_mm", "type",
        "spiculation" (bool), "spiculation_score", "upper_lobe" (bool or None), "radius_mm" (LoG scale),
        "blobness", "mean_hu", "detection_score" (the classifier's probability that it is a nodule), ...}]
    """
    classifier = classifier or default_classifier()
    return report_nodules(score_candidates(measure_candidates(scan), classifier), classifier.threshold)


def report_nodules(measured: list[dict], min_score: float | None = None,
                   limit: int | None = MAX_REPORTED) -> list[dict]:
    """The reported nodules among measured candidates: detection score >= ``min_score`` (default: the bundled
    classifier's reporting threshold), one per nodule, largest first, at most ``limit``. ``min_score=0,
    limit=None`` gives every candidate, as a FROC curve wants."""
    if min_score is None:
        min_score = default_classifier().threshold
    nodules = _dedupe([n for n in measured if n["detection_score"] >= min_score])
    nodules.sort(key=lambda n: -n["diameter_mm"])
    return nodules[:limit]


def measure_candidates(scan) -> list[dict]:
    """Every candidate that passes the density, lung-contact and size tests, measured (the fields of
    :func:`detect_nodules` but the score); not deduplicated."""
    hu, lung, sp = scan.hu, scan.lung, scan.spacing_mm
    nodules = []
    for c in find_candidates(hu, lung, sp):
        idx, r, b = c["index"], c["radius_mm"], c["blobness"]
        for opening in OPENINGS:
            mask, outline, sl = segment(hu, idx, r, sp, opening)
            if mask.sum() == 0:
                break
            fill, elong = fill_ratio(mask, sp), elongation(mask, sp)
            diameter, k = longest_axial_diameter(outline, sp)
            if elong <= MAX_ELONGATION and not (fill < MIN_FILL_RATIO and diameter >= FILL_MIN_DIAMETER_MM):
                break
        else:
            continue
        if mask.sum() == 0:
            continue
        values = hu[sl][mask]
        mean_hu = float(values.mean())
        if mean_hu > BONE_HU:
            continue
        contact = lung_contact(hu, idx, r, sp)
        if contact < MIN_LUNG_CONTACT:
            continue
        if diameter < MIN_DIAMETER_MM:
            continue
        centroid = np.argwhere(mask).mean(axis=0) + [s.start for s in sl]
        r_eq = (3.0 * mask.sum() / (4.0 * math.pi)) ** (1 / 3) * sp
        spic = spiculation_score(hu, tuple(int(round(v)) for v in centroid), max(r_eq, sp), sp)
        gain = contrast_gain(hu, idx, r, sp)
        nodules.append({
            "center_voxel": [int(round(v)) for v in centroid],
            "center_mm": [round(v, 1) for v in scan.index_to_lps(centroid)],
            "diameter_mm": round(diameter, 1),
            "type": nodule_type(values),
            "solid_fraction": round(float((values >= SOLID_HU).mean()), 3),
            "spiculation": bool(spic >= SPICULATED),
            "spiculation_score": round(spic, 3),
            "upper_lobe": _upper_lobe(scan, centroid[0]),
            "radius_mm": r, "response": round(c["response"], 1), "blobness": round(b, 3),
            "contrast_gain": round(gain, 3), "lung_contact": round(contact, 3),
            "fill_ratio": round(fill, 3), "elongation": round(elong, 2),
            "mean_hu": round(mean_hu, 1),
        })
    return nodules


def score_candidates(measured: list[dict], classifier: "NoduleClassifier | None" = None) -> list[dict]:
    """Set each measured candidate's ``detection_score``: P(nodule) from ``classifier`` (default: the bundled one)."""
    for n, p in zip(measured, (classifier or default_classifier()).probability(measured)):
        n["detection_score"] = round(float(p), 4)
    return measured


# --- False-candidate reduction -------------------------------------------------------------------------------
# Most candidates that pass the rules above are vessel bifurcations, vessels running into a nodule's ring, and
# noise. A logistic regression over the candidate's measurements ranks them (LUNA16's second stage, kept linear
# and inspectable) instead of a fixed LoG x blobness threshold, which let faint and spiculated nodules fall below
# vessels. Fitted on synthetic scans by `mmapps medical train-detector`; bundled as
# data/medical/nodule_classifier.json. Shape and blob strength only. Density, solid share, spiculation and lung contact describe what kind of nodule
# a candidate is, and on synthetic scans they also separate nodules from the generator's noise (a fitted
# regression gave lung contact a negative weight: rendered nodules touch vessels more than noise does), which
# on a real scan made hilar vessels look like nodules.
CLASSIFIER_FEATURES = ("log_response", "blobness", "log_contrast_gain", "fill_ratio", "elongation", "log_diameter_mm",
                       "log_radius_mm")


def candidate_features(n: dict) -> list[float]:
    """The classifier's inputs for one measured candidate (CLASSIFIER_FEATURES order)."""
    return [math.log(max(n["response"], 1e-3)), n["blobness"], math.log(max(n["contrast_gain"], 1e-3)),
            n["fill_ratio"], n["elongation"], math.log(max(n["diameter_mm"], 1e-3)), math.log(n["radius_mm"])]


class NoduleClassifier:
    """Standardised logistic regression: P(nodule) from :func:`candidate_features`; ``threshold`` = the
    probability from which a candidate is reported."""

    def __init__(self, mean, scale, coef, intercept: float, threshold: float, meta: dict | None = None):
        self.mean, self.scale, self.coef = (np.asarray(v, dtype=float) for v in (mean, scale, coef))
        self.intercept, self.threshold, self.meta = float(intercept), float(threshold), dict(meta or {})
        if not (len(self.mean) == len(self.scale) == len(self.coef) == len(CLASSIFIER_FEATURES)):
            raise ValueError(f"nodule classifier: expected {len(CLASSIFIER_FEATURES)} features, got {len(self.coef)}")

    def probability(self, measured: list[dict]) -> np.ndarray:
        if not measured:
            return np.zeros(0)
        x = (np.array([candidate_features(n) for n in measured]) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))

    def to_dict(self) -> dict:
        return {"features": list(CLASSIFIER_FEATURES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept, "threshold": self.threshold, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "NoduleClassifier":
        if list(d.get("features", [])) != list(CLASSIFIER_FEATURES):
            raise ValueError("nodule classifier: its features differ from this version's; re-run "
                             "'mmapps medical train-detector'")
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"], d["threshold"], d.get("meta"))

    @classmethod
    def load(cls, path) -> "NoduleClassifier":
        import json
        from pathlib import Path

        from mmapps.errors import UserError

        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a usable nodule classifier ({e}); re-create it with "
                            "'mmapps medical train-detector'") from None


_DEFAULT: dict = {}


def default_classifier() -> NoduleClassifier:
    """The bundled classifier (data/medical/nodule_classifier.json), read once."""
    from mmapps.paths import data_dir

    path = data_dir() / "medical" / "nodule_classifier.json"
    if path not in _DEFAULT:
        _DEFAULT[path] = NoduleClassifier.load(path)
    return _DEFAULT[path]


def _dedupe(nodules: list[dict]) -> list[dict]:
    """Two candidates on one nodule (e.g. a lobulated one at two scales): keep the larger measurement."""
    nodules = sorted(nodules, key=lambda n: -n["diameter_mm"])
    kept: list[dict] = []
    for n in nodules:
        if all(np.linalg.norm(np.subtract(n["center_mm"], k["center_mm"])) > 0.5 * k["diameter_mm"] for k in kept):
            kept.append(n)
    return kept


def _upper_lobe(scan, z: float) -> bool | None:
    """Upper lobe ~ upper half of the lung's height; unknown when the scan does not hold the whole lung."""
    zr = scan.stats.get("lung_z_range")
    if not zr or scan.stats.get("partial_coverage") or zr[1] <= zr[0]:
        return None
    return bool((z - zr[0]) / (zr[1] - zr[0]) > 0.5)  # axis 0 runs inferior -> superior
