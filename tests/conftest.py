"""Shared fixtures: the real reference data in ../shared/data (skips cleanly when absent)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; the test is skipped on a clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (only CI and developers have it)")
    return SHARED_DATA
