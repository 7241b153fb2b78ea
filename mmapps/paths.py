"""Where the bundled samples and default checkpoints live (``data/`` at the repository root)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def data_dir() -> Path:
    """The bundled data folder; MMAPPS_DATA overrides it (e.g. for a non-editable install)."""
    env = os.environ.get("MMAPPS_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data"


def bundled_model(scenario: str) -> Path:
    """The default checkpoint of a scenario, or a clear error when it is missing."""
    path = data_dir() / scenario / "model.pt"
    if not path.is_file():
        raise UserError(f"{path}: the bundled {scenario} model is missing; pass --model PATH "
                        f"or train one with 'mmapps {scenario} train'")
    return path


def shared_data(scenario: str | None = None) -> Path | None:
    """The real reference data (``../shared/data`` beside the checkout, or MMAPPS_SHARED_DATA), or None when absent.

    Benchmarks report the real-data rows only when it is there; a user's clone does not have it."""
    env = os.environ.get("MMAPPS_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = root / scenario if scenario else root
    return path if path.is_dir() else None
