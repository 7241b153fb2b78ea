"""One-file checkpoints: weights + full config + label maps/preprocessing (meta) + versions.

Written atomically; read with ``torch.load(weights_only=True)`` only, so a checkpoint can never run code.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import UserError
from .io import atomic_path

FORMAT = "mmapps-checkpoint/1"


class CheckpointError(UserError):
    """The file is not a readable mmapps checkpoint (missing, truncated, tampered or foreign)."""


def versions() -> dict[str, str]:
    return {"mmapps": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def _plain(obj: Any) -> Any:
    """Reduce to what weights_only loading accepts (containers, scalars, strings, tensors)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _plain(dataclasses.asdict(obj))
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor) and getattr(obj, "ndim", 1) == 0:
        return obj.item()  # numpy scalar
    if hasattr(obj, "tolist") and not isinstance(obj, torch.Tensor):
        return obj.tolist()  # numpy array
    return obj


def save_checkpoint(path: str | os.PathLike, model_or_state: nn.Module | dict, config: dict, meta: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write the bundle atomically. ``extra`` holds trainer state (optimizer, epoch) for --resume."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().cpu() for k, v in state.items()}
    bundle = {"format": FORMAT, "state_dict": state, "config": _plain(config), "meta": _plain(meta or {}),
              "versions": versions()}
    if extra:
        bundle["trainer"] = extra
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a bundle; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        bundle = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickled objects refused by weights_only, not a torch file at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains pickled Python objects, which are refused (weights_only=True)"
        raise CheckpointError(f"{path}: not a readable mmapps checkpoint ({reason[:200]})") from e
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmapps checkpoint (format marker {FORMAT!r} missing)")
    for key in ("state_dict", "config", "meta"):
        if key not in bundle:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return bundle


def load_state(model: nn.Module, bundle: dict, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """Load weights into a model rebuilt from the bundle's config; a mismatch is a CheckpointError."""
    try:
        model.load_state_dict(bundle["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model its config describes ({str(e)[:200]})") from e
    return model
