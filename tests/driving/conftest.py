"""Fixtures for the driving tests: a tiny synthetic KITTI dataset made once per session."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory) -> Path:
    from driving.synth import synth_dataset

    root = tmp_path_factory.mktemp("drv_syn")
    synth_dataset(root, 3, seed=7, seq_len=3)
    return root


@pytest.fixture(scope="session")
def kitti_real(shared_data) -> Path:
    return shared_data / "driving"
