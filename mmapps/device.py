"""--device auto|cpu|cuda."""
from __future__ import annotations

from .errors import UserError, check_choice


def resolve_device(name: str = "auto"):
    import torch

    check_choice("--device", name, ["auto", "cpu", "cuda"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    return torch.device(name)
