"""Metrics: scikit-learn where it has them; expected calibration error written here."""
from __future__ import annotations

import numpy as np


def expected_calibration_error(y_true, p, n_bins: int = 15) -> float:
    """ECE with equal-width bins (L1): sum_b |B|/n * |mean(y in b) - mean(p in b)|; ``y_true`` is 0/1 labels or, for
    a synthetic cohort, the true probabilities (then the label draw adds no noise)."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.size == 0:
        return float("nan")
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # p == 1.0 falls in the last bin
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def sensitivity_at_specificity(y_true, p, specificity: float = 0.9) -> float:
    """Highest sensitivity (TPR) among ROC points whose specificity is at least the target."""
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).ravel()
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, np.asarray(p).ravel())
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def binary_metrics(y_true, p) -> dict[str, float]:
    """AUROC, AUPRC, Brier, ECE, sensitivity at 90 % specificity (NaN where undefined: one class only)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    two = len(np.unique(y)) == 2
    return {
        "n": int(y.size),
        "auroc": float(roc_auc_score(y, p)) if two else float("nan"),
        "auprc": float(average_precision_score(y, p)) if two else float("nan"),
        "brier": float(brier_score_loss(y, p)) if y.size else float("nan"),
        "ece": expected_calibration_error(y, p),
        "sensitivity_at_90_specificity": sensitivity_at_specificity(y, p, 0.9),
    }


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}
