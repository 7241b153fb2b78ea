"""Fixtures for the medical tests: a tiny synthetic cohort and a tiny model trained on it (seconds)."""
from pathlib import Path

import pytest

TINY_SHAPE = (40, 48, 48)  # 8 mm slices: the gate refuses thicker ones


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    from medical.synth import synth_cohort

    out = tmp_path_factory.mktemp("medical") / "cohort"
    synth_cohort(out, 12, seed=3, shape=TINY_SHAPE, mri_fraction=0.5)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_cohort, tmp_path_factory) -> Path:
    from medical.train import train

    out = tmp_path_factory.mktemp("medical_model") / "tiny.pt"
    train(tiny_cohort, out, overrides=["model.ct_grid=16", "model.mri_grid=12", "model.ct_channels=[4,8]",
                                       "model.mri_channels=[4,8]", "model.encoder_dim=16", "model.fusion_dim=16",
                                       "train.batch_size=4", "val_fraction=0.25"], epochs=1)
    return out
