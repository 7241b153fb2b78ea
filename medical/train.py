"""`mmapps medical train`: a thin call of the core Trainer on a cohort folder (so `torchrun` gives DDP for free)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmapps.errors import UserError

from .dataset import CohortDataset, collate, model_inputs
from .models import CT_WINDOW, aux_targets, build_model


def split_rows(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Patient-level split stratified by label, with the core's one validation split (a patient never sits in
    both; no validation part when the fraction is 0 or the cohort is tiny)."""
    from mmapps.splits import validation_split

    if val_fraction <= 0 or len(rows) <= 4:
        return list(rows), []
    train, val = validation_split(len(rows), val_fraction, seed, labels=[r.get("label", "") for r in rows])
    return [rows[i] for i in train], [rows[i] for i in val]


def eval_fn(model, loader, device) -> dict:
    """Validation metrics for the Trainer: malignancy BCE (val_loss) and AUROC."""
    from mmapps.data import move_to
    from mmapps.metrics import binary_metrics

    ys, ps, losses = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = move_to(batch, device)
            logit = model(model_inputs(batch))["outputs"]["malignancy"].reshape(-1)
            y = batch["targets"]["malignancy"].float().reshape(-1)
            losses.append(F.binary_cross_entropy_with_logits(logit, y, reduction="sum").item())
            ys.append(y.cpu().numpy())
            ps.append(torch.sigmoid(logit).cpu().numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    m = binary_metrics(y, p)
    return {"val_loss": float(sum(losses) / max(len(y), 1)), "val_auroc": m["auroc"], "val_ece": m["ece"]}


def train(data, out, config=None, overrides: list[str] | None = None, fusion: str | None = None,
          modalities: list[str] | None = None, epochs: int | None = None, resume: bool = False,
          workers: int | None = None, device: str | None = None) -> dict:
    """Train a medical fusion model on a cohort folder (manifest.csv) with the core Trainer (DDP-ready)."""
    from mmapps.config import config_to_dict, load_config
    from mmapps.trainer import Trainer

    from .models import MedicalConfig
    from .manifest import read_manifest

    extra = list(overrides or [])
    if fusion is not None:
        extra.append(f"model.fusion='{fusion}'")
    if modalities is not None:
        extra.append("model.modalities=[" + ",".join(f"'{m}'" for m in modalities) + "]")
    if epochs is not None:
        extra.append(f"train.epochs={int(epochs)}")
    if workers is not None:
        extra.append(f"workers={int(workers)}")
    if device is not None:
        extra.append(f"train.device='{device}'")
    cfg = load_config(MedicalConfig, config, extra)
    root, rows = read_manifest(data)
    if cfg.model.aux_heads and not aux_targets(rows[0]):
        cfg.model.aux_heads = False  # own cohorts without nodule annotations: malignancy only
    train_rows, val_rows = split_rows(rows, cfg.val_fraction, cfg.train.seed)
    labels = {r.get("label") for r in train_rows}
    if not labels <= {"0", "1"} or len(labels) < 2:
        raise UserError(f"{root}: manifest labels must be 0/1 with both classes in the training split; got {sorted(labels)}")
    train_ds = CohortDataset(root, train_rows, cfg.model, True, cfg.workers, "reading training studies")
    val_ds = CohortDataset(root, val_rows, cfg.model, True, cfg.workers, "reading validation studies") if val_rows else None
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    linear = None
    if cfg.linear_term == "logistic" and cfg.model.measured and not resume:
        linear = fit_linear_term(model, train_ds, [int(r["label"]) for r in train_rows])
    model_config = {"scenario": "medical", "model": config_to_dict(cfg.model)}
    meta = {"data": str(root), "n_train": len(train_rows), "n_val": len(val_rows),
            "ct_window": list(CT_WINDOW),
            "prevalence": round(float(np.mean([float(r["label"]) for r in train_rows])), 4),
            "linear_term": linear or cfg.linear_term}
    trainer = Trainer(model, cfg.train, out, meta=meta, model_config=model_config, collate_fn=collate,
                      eval_fn=eval_fn if val_ds is not None else None)
    history = trainer.fit(train_ds, val_ds, resume=resume)
    best = min(history, key=lambda r: r.get("val_loss", r["train_loss"])) if history else {}
    calibration = None
    if val_ds is not None and trainer.dist.is_main:
        try:
            calibration = calibrate(out, data, cfg.val_fraction, cfg.train.seed, workers=cfg.workers)
        except ValueError as exc:  # too few or one-class validation rows: keep the uncalibrated checkpoint
            calibration = {"skipped": str(exc)}
    return {"out": str(out), "epochs_run": len(history), "n_train": len(train_rows), "n_val": len(val_rows),
            "best": best, "calibration": calibration, "config": config_to_dict(cfg)}


def fit_linear_term(model, train_ds, labels: list[int]) -> dict | None:
    """Fit the head's Brock/PLCO-shaped linear term as a logistic regression (scikit-learn, standardised inputs) on
    the training split's measured CT variables + record, write it into the head's two linear layers (and the shared
    intercept), and freeze them: the network then learns only the residual. Returns a summary for the checkpoint
    meta, or None when the head or the data do not allow it (no CT or no record modality, one class)."""
    from .evaluate import measured_logistic, measured_matrix

    head = model.heads["malignancy"]
    if getattr(head, "measured", None) is None or getattr(head, "record", None) is None:
        return None
    y = np.asarray(labels)
    x = measured_matrix(train_ds.samples) if len(train_ds.samples) == len(y) else None
    if x is None or len(set(y.tolist())) < 2:
        return None
    scaler, lr = measured_logistic().fit(x, y)
    w = lr.coef_[0] / scaler.scale_  # back to raw inputs: logit = w . x + b
    b = float(lr.intercept_[0] - np.dot(lr.coef_[0], scaler.mean_ / scaler.scale_))
    n_geom = head.measured.in_features
    with torch.no_grad():
        head.measured.weight.copy_(torch.tensor(w[None, :n_geom], dtype=torch.float32))
        # w[n_geom] is the no-CT flag: the head drops the CT term for studies without one; the residual learns it
        head.record.weight.copy_(torch.tensor(w[None, n_geom + 1:], dtype=torch.float32))
        head.residual[-1].bias.fill_(b)
    head.measured.weight.requires_grad_(False)
    head.record.weight.requires_grad_(False)
    from mmapps.metrics import binary_metrics

    train_auroc = binary_metrics(y, lr.predict_proba(scaler.transform(x))[:, 1])["auroc"]
    return {"kind": "logistic regression on the training split, frozen", "n": int(len(y)),
            "train_auroc": round(float(train_auroc), 4)}


def calibrate(checkpoint, data, val_fraction: float = 0.2, seed: int = 0, workers: int = 1,
              held_out: bool = False) -> dict:
    """Fit the post-hoc logit map (``mmapps.calibration.LogitScaling``, Platt scaling) on the validation split of
    the cohort the checkpoint was trained on (the same core split: same rows, fraction and seed), scoring each
    study by its most suspicious nodule as ``predict`` does, and store it in the checkpoint (atomically).
    ``held_out=True``: ``data`` is a separate calibration cohort the model never saw; all its labelled rows are
    used (more patients than a validation split holds: Platt scaling on 120-240 is noisy).
    Returns {"scale", "bias", "n", "val_ece_before", "val_ece_after"}: in-sample on the calibration rows; the
    bench measures ECE on an unseen cohort."""
    from mmapps.calibration import META_KEY, LogitScaling, logit
    from mmapps.checkpoint import load_checkpoint, save_checkpoint
    from mmapps.metrics import expected_calibration_error

    from .dataset import predict_batches, study_max
    from .manifest import read_manifest
    from .pipeline import Pipeline

    pipe = Pipeline.from_checkpoint(checkpoint, device="cpu")
    root, rows = read_manifest(data)
    val_rows = rows if held_out else split_rows(rows, val_fraction, seed)[1]
    val_rows = [r for r in val_rows if r.get("label", "") in ("0", "1")]
    if not val_rows:
        raise ValueError(f"{root}: no labelled validation rows to calibrate on")
    ds = CohortDataset(root, val_rows, pipe.config, with_targets=False, workers=workers,
                       description="calibrating on validation studies", all_nodules=True)
    p = study_max(predict_batches(pipe.model, ds, pipe.device), ds.groups, len(val_rows))
    y = np.array([int(r["label"]) for r in val_rows])
    ok = ~np.isnan(p)
    fitted_on = (f"held-out calibration cohort {root.name} ({int(ok.sum())} patients)" if held_out else
                 f"validation split of {root.name} ({int(ok.sum())} patients, fraction {val_fraction}, seed {seed})")
    cal = LogitScaling.fit(logit(p[ok]), y[ok], fitted_on=fitted_on)
    bundle = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, bundle["state_dict"], bundle["config"], {**bundle["meta"], META_KEY: cal.to_meta()})
    return {"scale": round(cal.scale, 4), "bias": round(cal.bias, 4), "n": cal.n,
            "val_ece_before": round(expected_calibration_error(y[ok], p[ok]), 4),
            "val_ece_after": round(expected_calibration_error(y[ok], cal.probability(logit(p[ok]))), 4)}


def _labelled_candidates(args) -> dict:
    """One synthetic scan's measured candidates, each with ``label`` 1 (on a nodule >= MIN_DIAMETER_MM) or 0; a
    candidate on a smaller nodule is left out (neither), as the FROC does. Runs in a worker process."""
    from .evaluate import nearest_nodule
    from .lungs import read_chest_ct
    from .nodules import MIN_DIAMETER_MM, measure_candidates
    from .synth import synthetic_chest_scan

    seed, index, shape = args
    vol, truth = synthetic_chest_scan(seed, index, shape)
    scan = read_chest_ct(vol)
    rows = []
    for n in measure_candidates(scan) if scan.assessable else []:
        k = nearest_nodule(n["center_mm"], truth)
        if k is not None and truth[k][1] < MIN_DIAMETER_MM:
            continue
        rows.append({**n, "label": int(k is not None), "scan": index})
    return {"truth": [(c.tolist(), float(s)) for c, s in truth], "candidates": rows}


def train_nodule_classifier(out, scans: int = 300, seed: int = 13579, shape=(64, 128, 128), workers: int = 1,
                            fit_fraction: float = 0.75, false_per_scan: float = 1.0) -> dict:
    """Fit the false-candidate classifier (:class:`medical.nodules.NoduleClassifier`) on synthetic chest CTs.

    Scans [0, fit_fraction * scans) fit a standardised logistic regression (scikit-learn) on every measured
    candidate (label: on a nodule >= 4 mm); the remaining scans, never fitted on, choose the reporting
    threshold: the lowest probability (0.01 steps) that leaves at most ``false_per_scan`` false candidates per
    scan after deduplication, as ``predict`` reports. Writes the JSON ``out`` atomically; returns its summary."""
    import datetime
    import json

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from mmapps.io import atomic_write_text
    from mmapps.parallel import parallel_map

    from .evaluate import match_candidates
    from .nodules import NoduleClassifier, candidate_features, report_nodules, score_candidates

    if scans < 8:
        raise UserError(f"--scans must be >= 8 (a quarter of them choose the threshold); got {scans}")
    per_scan = parallel_map(_labelled_candidates, [(seed, i, tuple(shape)) for i in range(scans)], workers=workers,
                            description="measuring candidates on synthetic scans")
    n_fit = int(round(fit_fraction * scans))
    fit = [c for s in per_scan[:n_fit] for c in s["candidates"]]
    y = np.array([c["label"] for c in fit])
    if len(set(y.tolist())) < 2:
        raise UserError("the fitting scans gave candidates of one class only; use more --scans")
    x = np.array([candidate_features(c) for c in fit])
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x), y)
    clf = NoduleClassifier(scaler.mean_, scaler.scale_, lr.coef_[0], lr.intercept_[0], threshold=0.5)
    held = per_scan[n_fit:]
    for s in held:
        score_candidates(s["candidates"], clf)

    def operating_point(threshold: float) -> tuple[float, float, float]:
        false = hit6 = hit4 = n6 = n4 = 0
        for s in held:
            truth = [(np.asarray(c), size) for c, size in s["truth"]]
            reported = report_nodules(s["candidates"], threshold, None)
            hits, fp = match_candidates(reported, truth, 4.0)
            false += len(fp)
            hit4 += len(hits)
            hit6 += sum(truth[k][1] >= 6.0 for _, k, _ in hits)
            n4 += sum(size >= 4.0 for _, size in truth)
            n6 += sum(size >= 6.0 for _, size in truth)
        return false / len(held), hit6 / max(n6, 1), hit4 / max(n4, 1)

    threshold = next((t for t in np.round(np.arange(0.01, 1.0, 0.01), 2) if operating_point(t)[0] <= false_per_scan),
                     0.99)
    fp, sens6, sens4 = operating_point(float(threshold))
    clf.threshold = float(threshold)
    clf.meta = {"trained": datetime.date.today().isoformat(),
                "data": f"{scans} synthetic chest CTs, seed {seed}, {'x'.join(map(str, shape))} "
                        f"(`medical.synth.synthetic_chest_scan`): scans 0-{n_fit - 1} fit, {n_fit}-{scans - 1} "
                        "choose the threshold",
                "command": f"mmapps medical train-detector --out OUT --scans {scans} --seed {seed} "
                           f"--false-per-scan {false_per_scan:g}",
                "fit_candidates": int(len(y)), "fit_positives": int(y.sum()),
                "threshold_false_per_scan_target": false_per_scan,
                "held_out": {"scans": len(held), "false_per_scan": round(fp, 3),
                             "sensitivity_6mm": round(sens6, 3), "sensitivity_4mm": round(sens4, 3)}}
    atomic_write_text(out, json.dumps(clf.to_dict(), indent=1) + "\n")
    return {"out": str(out), "threshold": clf.threshold, **{k: v for k, v in clf.meta.items() if k != "held_out"},
            **{f"held-out {k}": v for k, v in clf.meta["held_out"].items()}}
