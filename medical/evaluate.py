"""The field's metrics on a cohort: AUROC, AUPRC, Brier, ECE, sensitivity at 90 % specificity, the oracle
AUROC (the clinical model's own probabilities, when the manifest has them) and single-modality ablations."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate(data, model=None, workers: int = 1, shard: tuple[int, int] = (0, 1), device: str = "auto",
             pipeline=None, dataset=None, keep_predictions: bool = False) -> dict:
    """Metrics of a model on a cohort folder. ``dataset``: a CohortDataset of the same rows already read (with
    ``all_nodules``), e.g. to score several checkpoints without re-reading the studies. ``keep_predictions``
    adds "labels" and "probabilities" (per labelled row) for pictures such as the reliability diagram."""
    import time

    from mmapps.metrics import binary_metrics, expected_calibration_error
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
    ds = dataset if dataset is not None else CohortDataset(root, labelled, pipe.config, with_targets=False,
                                                           workers=workers, description="evaluating", all_nodules=True)
    p = study_max(predict_batches(pipe.model, ds, pipe.device, calibration=pipe.calibration), ds.groups,
                  len(labelled))
    seconds = time.perf_counter() - t0
    if dataset is not None:  # read earlier: count its reading time, or the throughput would flatter
        seconds += float(getattr(dataset, "read_seconds", 0.0))
    y = np.array([int(r["label"]) for r in labelled])
    result = {"data": str(root), "model": pipe.path, **binary_metrics(y, p)}
    oracle = [r.get("oracle_probability", "") for r in labelled]
    if all(o not in ("", None) for o in oracle):
        oracle = np.array(oracle, dtype=float)
        on_labels = binary_metrics(y, oracle)
        result["oracle_auroc"] = on_labels["auroc"]
        result["expected_over_label_draws"] = expected_aurocs(oracle, {"fused": p, "oracle": oracle})
        # ECE against the generating probabilities (no label noise), and the ECE those probabilities themselves get
        # on the drawn labels: how much of the labels' ECE is the draw, not the model
        ok = ~np.isnan(p)
        result["ece_vs_oracle"] = expected_calibration_error(oracle[ok], p[ok])
        result["oracle_ece"] = on_labels["ece"]
    ablations = {}
    for m in pipe.config.modalities:
        pm = study_max(predict_batches(pipe.model, ds, pipe.device, only=m, calibration=pipe.calibration),
                       ds.groups, len(labelled))
        ok = ~np.isnan(pm)
        ablations[m] = binary_metrics(y[ok], pm[ok])["auroc"] if ok.sum() >= 2 else float("nan")
    result["ablations"] = ablations
    result["component_ablations"] = component_ablations(pipe, ds, y, len(labelled))
    result["measured_only_cv_auroc"] = measured_only_cv(ds, y)
    result["calibration"] = "platt" if pipe.calibration.n else "none"
    if keep_predictions:
        result["labels"], result["probabilities"] = y.tolist(), p.tolist()
    result["seconds"] = round(seconds, 3)
    result["studies_per_second"] = round(len(labelled) / max(seconds, 1e-9), 2)
    result["shard"] = f"{shard[0]}/{shard[1]}"
    return result


def expected_aurocs(oracle: np.ndarray, scores: dict, draws: int = 200, seed: int = 0) -> dict:
    """AUROC of each score averaged over labels redrawn from the generating probabilities (``oracle``): the cohort's
    one label draw moves the oracle's AUROC by about +-0.01 on 1,000 patients, and not always with the model's."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    ok = np.all([np.isfinite(v) for v in scores.values()], axis=0)
    sums = dict.fromkeys(scores, 0.0)
    used = 0
    for _ in range(draws):
        y = rng.random(int(ok.sum())) < oracle[ok]
        if y.all() or not y.any():
            continue
        used += 1
        for k, v in scores.items():
            sums[k] += roc_auc_score(y, v[ok])
    return {k: v / used for k, v in sums.items()} if used else {k: float("nan") for k in scores}


FROC_FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)  # false candidates per scan (LUNA16's operating points)


def detection_froc(n_scans: int = 40, seed: int = 424242, shape=(64, 128, 128), min_size_mm: float = 6.0) -> dict:
    """Nodule detection on synthetic chest CTs rendered in memory (every nodule's position is known).

    A candidate is a true positive when its centre lies within max(radius, 5 mm) of a nodule >= min_size_mm;
    one near a smaller nodule is ignored (neither hit nor false); anything else is a false candidate. The FROC
    curve ranks every measured candidate by the detector's score, below the reporting threshold too (as LUNA16
    scores a candidate list; ``monai.metrics``); the operating point of what ``predict`` reports (score >= the
    classifier's threshold, at most ``MAX_REPORTED``) is given beside it. Returns sensitivities at
    FROC_FP_RATES, the reported nodules' sensitivity and false candidates per scan, and their mean diameter error.
    """
    from monai.metrics import compute_froc_curve_data

    from .lungs import read_chest_ct
    from .nodules import default_classifier, measure_candidates, report_nodules, score_candidates
    from .synth import synthetic_chest_scan

    classifier = default_classifier()
    tp, fp, size_err = [], [], []
    targets = found = reported_fp = 0
    for i in range(n_scans):
        vol, truth = synthetic_chest_scan(seed, i, shape)
        scan = read_chest_ct(vol)
        targets += sum(size >= min_size_mm for _, size in truth)
        measured = score_candidates(measure_candidates(scan), classifier) if scan.assessable else []
        hits, false = match_candidates(report_nodules(measured, 0.0, None), truth, min_size_mm)
        tp += [score for score, _, _ in hits]
        fp += false
        hits, false = match_candidates(report_nodules(measured, classifier.threshold), truth, min_size_mm)
        found += len(hits)
        reported_fp += len(false)
        size_err += [abs(d - truth[k][1]) / truth[k][1] for _, k, d in hits]
    fps, sens = compute_froc_curve_data(np.asarray(fp, float), np.asarray(tp, float), max(targets, 1), n_scans)
    at = {str(r): float(np.interp(r, fps[::-1], sens[::-1])) if len(fps) else 0.0 for r in FROC_FP_RATES}
    ranked = sorted(fp, reverse=True)
    score_at = {str(r): float(ranked[int(r * n_scans) - 1]) if int(r * n_scans) - 1 < len(ranked) and r * n_scans >= 1
                else None for r in FROC_FP_RATES}  # the score threshold that keeps r false candidates per scan
    return {"scans": n_scans, "targets": targets, "min_size_mm": min_size_mm, "sensitivity_at_fp": at,
            "score_at_fp": score_at, "candidates_sensitivity": len(tp) / max(targets, 1),
            "candidates_false_per_scan": len(fp) / n_scans,
            "sensitivity": found / max(targets, 1), "false_per_scan": reported_fp / n_scans,
            "mean_relative_diameter_error": float(np.mean(size_err)) if size_err else None}


def nearest_nodule(center_mm, truth: list) -> int | None:
    """Index of the true nodule [(centre LPS, diameter)] whose reach (max(radius, 5 mm)) holds ``center_mm``,
    the nearest one when several do; None when none does."""
    d = [np.linalg.norm(np.asarray(center_mm) - c) - max(size / 2, 5.0) for c, size in truth]
    k = int(np.argmin(d)) if d else -1
    return k if k >= 0 and d[k] <= 0 else None


def match_candidates(candidates: list[dict], truth: list, min_size_mm: float) -> tuple[list, list]:
    """Candidates, strongest first, against the true nodules [(centre LPS, diameter)] -> (hits [(score, nodule
    index, measured diameter)], the first per nodule >= min_size_mm; the false candidates' scores). A candidate
    within reach of a smaller nodule, or of a nodule already hit, counts as neither."""
    hits, false, seen = [], [], set()
    for n in sorted(candidates, key=lambda n: -n["detection_score"]):
        k = nearest_nodule(n["center_mm"], truth)
        if k is None:
            false.append(n["detection_score"])
        elif truth[k][1] >= min_size_mm and k not in seen:
            seen.add(k)
            hits.append((n["detection_score"], k, n["diameter_mm"]))
    return hits, false


def component_ablations(pipe, ds, y, n_rows: int) -> dict:
    """AUROC of the malignancy head's two parts on their own (every modality present): the linear Brock/PLCO term
    on the measured CT variables and the record ("measured linear term only") and the MLP on the fused learned
    features ("learned residual only"). Empty for a head without these parts."""
    from mmapps.metrics import binary_metrics

    from .dataset import predict_batches, study_max

    head = pipe.model.heads["malignancy"]
    if not hasattr(head, "parts"):
        return {}
    out = {}
    for name, part in (("measured linear term only", "linear"), ("learned residual only", "residual")):
        head.parts = (part,)
        try:
            p = study_max(predict_batches(pipe.model, ds, pipe.device), ds.groups, n_rows)
        finally:
            head.parts = ("linear", "residual")
        ok = ~np.isnan(p)
        out[name] = binary_metrics(y[ok], p[ok])["auroc"] if ok.sum() >= 2 else float("nan")
    return out


def measured_only_cv(ds, y, folds: int = 5, seed: int = 0) -> float:
    """A measured-only model without the CNN: a logistic regression (scikit-learn) on the measured CT variables
    of each study's largest reported nodule + the record vector, scored by stratified k-fold cross-validation on
    this cohort (fitted on 4/5, scored on the unseen 1/5). NaN when the cohort is too small."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from mmapps.metrics import binary_metrics

    first: dict[int, dict] = {}
    for g, sample in zip(ds.groups, ds.samples):
        first.setdefault(int(g), sample)  # samples come largest nodule first
    if len(first) != len(y) or min(np.bincount(y, minlength=2)) < folds:
        return float("nan")
    x = measured_matrix([first[i] for i in range(len(y))])
    if x is None:
        return float("nan")  # the record is part of every measured-only model (Brock + PLCO)
    p = cross_val_predict(measured_logistic(), x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                          method="predict_proba")[:, 1]
    return binary_metrics(y, p)["auroc"]


def measured_logistic():
    """The measured-only Brock/PLCO-shaped model: standardised inputs + logistic regression (scikit-learn). The
    same definition is the ablation here and the medical head's frozen linear term (``train.fit_linear_term``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def measured_matrix(samples: list[dict]) -> np.ndarray | None:
    """[N, len(MEASURED_FEATURES) + 1 + record] rows: the measured CT variables (zeros without a CT), a no-CT flag
    and the record vector; None when a sample has no record."""
    from .models import MEASURED_FEATURES

    rows = []
    for s in samples:
        ct = s.get("ct")
        geom = ct["geom"].float().numpy() if ct is not None else np.zeros(len(MEASURED_FEATURES), np.float32)
        if s.get("record") is None:
            return None
        rows.append(np.concatenate([geom, [0.0 if ct is not None else 1.0], s["record"].float().numpy()]))
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------- robustness
def scan_variants(vol, seed: int = 0) -> dict:
    """The same scan as other scanners, protocols and archives would hand it over, in memory: {name: Volume}.

    Storage orders (the anatomy unchanged: must read the same), noise of a lower dose, a calibration offset of the
    Hounsfield scale, soft and sharp reconstruction kernels, 2x thicker / 1.25 mm slices, a 256 matrix, and the
    padding value scanners store outside the reconstruction circle. For measuring how far a real result moves,
    never for choosing anything."""
    import dataclasses

    from scipy import ndimage

    from .io import default_affine

    a, sp = vol.array.astype(np.float32), tuple(float(s) for s in vol.spacing)
    aff = vol.affine if vol.affine is not None else default_affine(sp)
    rng = np.random.default_rng(seed)

    def make(array, spacing=sp, affine=aff, name=""):
        return dataclasses.replace(vol, array=np.ascontiguousarray(array, dtype=np.float32), spacing=tuple(spacing),
                                   affine=np.asarray(affine, float), source=f"{vol.source} ({name})", warnings=[])

    def flipped(axis):
        f = aff.copy()
        f[:3, 3] += f[:3, axis] * (a.shape[axis] - 1)
        f[:3, axis] *= -1
        return np.flip(a, axis), f

    out = {}
    for name, axis in (("stored mirrored left-right", 2), ("stored mirrored front-back", 1), ("stored feet-first", 0)):
        arr, f = flipped(axis)
        out[name] = make(arr, affine=f, name=name)
    out["low dose: noise sd 25 HU"] = make(a + rng.normal(0, 25, a.shape), name="noise 25")
    out["low dose: noise sd 50 HU"] = make(a + rng.normal(0, 50, a.shape), name="noise 50")
    out["HU scale offset +30"] = make(a + 30, name="+30 HU")
    out["HU scale offset -30"] = make(a - 30, name="-30 HU")
    smooth = np.stack([ndimage.gaussian_filter(s, 1.0) for s in a])
    out["soft kernel"] = make(smooth, name="soft kernel")
    out["sharp kernel"] = make(a + (a - np.stack([ndimage.gaussian_filter(s, 1.5) for s in a])), name="sharp kernel")
    if a.shape[0] >= 6:
        n = a.shape[0] // 2 * 2
        thick = (a[0:n:2] + a[1:n:2]) / 2
        f = aff.copy()
        f[:3, 3] += f[:3, 0] / 2  # the average of slices 2k and 2k+1 sits between them
        f[:3, 0] *= 2
        out[f"slices {2 * sp[0]:g} mm"] = make(thick, (2 * sp[0], sp[1], sp[2]), f, "thick")
    if sp[0] > 1.25:
        k = sp[0] / 1.25
        z = np.arange(0, a.shape[0] - 1 + 1e-6, 1 / k)
        thin = ndimage.map_coordinates(a, np.meshgrid(z, np.arange(a.shape[1]), np.arange(a.shape[2]), indexing="ij"),
                                       order=1, mode="nearest")
        f = aff.copy()
        f[:3, 0] /= k
        out["slices 1.25 mm"] = make(thin, (1.25, sp[1], sp[2]), f, "thin")
    h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
    m = (a[:, 0:h:2, 0:w:2] + a[:, 1:h:2, 0:w:2] + a[:, 0:h:2, 1:w:2] + a[:, 1:h:2, 1:w:2]) / 4
    f = aff.copy()
    f[:3, 3] += (f[:3, 1] + f[:3, 2]) / 2
    f[:3, 1:3] *= 2
    out[f"matrix {w // 2} ({2 * sp[2]:.2f} mm pixels)"] = make(m, (sp[0], 2 * sp[1], 2 * sp[2]), f, "matrix")
    yy, xx = np.mgrid[: a.shape[1], : a.shape[2]]
    outside = (yy - (a.shape[1] - 1) / 2) ** 2 + (xx - (a.shape[2] - 1) / 2) ** 2 > (min(a.shape[1:]) / 2) ** 2
    out["padding -3024 outside the circle"] = make(np.where(outside[None], -3024.0, a), name="padding")
    return out


def variant_readings(pipe, vol, target_mm, within_mm: float = 10.0) -> list[dict]:
    """``pipe.predict`` on every :func:`scan_variants` of ``vol`` (the scan as given first): per variant whether a
    reported nodule lies within ``within_mm`` of ``target_mm`` (LPS), how many others are reported, the study's
    probability."""
    rows = []
    for name, v in {"as given": vol, **scan_variants(vol)}.items():
        res = pipe.predict(study=v)
        dist = [float(np.linalg.norm(np.subtract(n["center_mm"], target_mm))) for n in res["nodules"]]
        hit = bool(dist) and min(dist) <= within_mm
        rows.append({"variant": name, "found": hit, "others": len(dist) - int(hit),
                     "probability": res["probability"], "assessable": res["assessable"]})
    return rows
