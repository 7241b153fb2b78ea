"""Post-hoc logit scaling: recovers a known miscalibration, keeps the ranking, validates what a checkpoint holds."""
import numpy as np
import pytest

from mmapps.calibration import META_KEY, LogitScaling, logit
from mmapps.checkpoint import CheckpointError
from mmapps.metrics import binary_metrics


def test_fit_undoes_an_overconfident_shifted_model_and_keeps_auroc():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-0.8, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    reported = 2.5 * true_logit + 1.0  # overconfident and biased upwards
    cal = LogitScaling.fit(reported, y, fitted_on="test")
    assert cal.scale == pytest.approx(0.4, abs=0.05) and cal.bias == pytest.approx(-0.4, abs=0.12)
    before = binary_metrics(y, 1 / (1 + np.exp(-reported)))
    after = binary_metrics(y, cal.probability(reported))
    assert after["ece"] < 0.03 < before["ece"]
    assert after["auroc"] == pytest.approx(before["auroc"], abs=1e-12)


def test_fit_refuses_too_few_one_class_or_backwards_scores():
    with pytest.raises(ValueError, match="both classes"):
        LogitScaling.fit(np.zeros(20), np.zeros(20))
    with pytest.raises(ValueError, match=">= 10"):
        LogitScaling.fit(np.arange(4.0), [0, 1, 0, 1])
    z = np.linspace(-3, 3, 40)
    with pytest.raises(ValueError, match="backwards"):
        LogitScaling.fit(z, (z < 0).astype(int))


def test_meta_round_trip_and_validation():
    assert LogitScaling.from_meta({}) == LogitScaling()  # uncalibrated checkpoint: identity
    cal = LogitScaling(0.5, -1.0, "val", 120)
    again = LogitScaling.from_meta({META_KEY: cal.to_meta()})
    assert again == cal
    assert again.probability([0.0])[0] == pytest.approx(1 / (1 + np.exp(1.0)))
    assert logit([0.5])[0] == 0 and np.isfinite(logit([0.0, 1.0])).all()
    for bad in ({"scale": float("nan"), "bias": 0}, {"scale": -1, "bias": 0}, {"scale": 1, "bias": 1e9},
                {"scale": "x", "bias": 0}, {"bias": 0}):
        with pytest.raises(CheckpointError, match=META_KEY):
            LogitScaling.from_meta({META_KEY: bad}, "m.pt")
