"""Post-hoc calibration of a binary score: an affine map of the logit (Platt scaling; temperature scaling is the
special case bias = 0), fitted on held-out validation predictions after training and stored in the checkpoint's
meta. It moves probabilities, never the ranking: AUROC is unchanged, ECE and Brier improve where the network
was over- or under-confident."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

META_KEY = "calibration_map"


def logit(p, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


@dataclass
class LogitScaling:
    """p = sigmoid(scale * logit + bias); the identity by default (an uncalibrated checkpoint)."""

    scale: float = 1.0
    bias: float = 0.0
    fitted_on: str = ""
    n: int = 0

    def __call__(self, logits):
        return logits * self.scale + self.bias

    def probability(self, logits) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) * self.scale + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def fit(cls, logits, labels, fitted_on: str = "") -> "LogitScaling":
        """Maximum-likelihood scale and bias (an unregularised 1-D logistic regression, scikit-learn)."""
        from sklearn.linear_model import LogisticRegression

        z = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
        y = np.asarray(labels).astype(int).reshape(-1)
        if len(y) < 10 or len(set(y.tolist())) < 2:
            raise ValueError(f"calibration needs >= 10 held-out predictions of both classes; got {len(y)}")
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z, y)
        scale, bias = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if scale <= 0:  # a model that ranks backwards on validation: calibrating would invert it; refuse
            raise ValueError(f"calibration: validation scores rank the classes backwards (scale {scale:.3f})")
        return cls(scale, bias, fitted_on, int(len(y)))

    def to_meta(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_meta(cls, meta: dict, path=None) -> "LogitScaling":
        """The checkpoint's map, validated like every other number read from a checkpoint (CheckpointError)."""
        from mmapps.checkpoint import CheckpointError

        raw = (meta or {}).get(META_KEY)
        if raw is None:
            return cls()
        try:
            out = cls(float(raw["scale"]), float(raw["bias"]), str(raw.get("fitted_on", "")), int(raw.get("n", 0)))
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path or 'checkpoint'}: meta {META_KEY} is malformed ({exc})") from None
        if not (math.isfinite(out.scale) and math.isfinite(out.bias) and 0 < out.scale <= 20 and abs(out.bias) <= 20):
            raise CheckpointError(f"{path or 'checkpoint'}: meta {META_KEY} must have 0 < scale <= 20 and "
                                  f"|bias| <= 20; got {raw}")
        return out
