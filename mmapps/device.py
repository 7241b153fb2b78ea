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


def apply_thread_limit() -> None:
    """MMAPPS_THREADS=N caps torch's intra-op threads: on a shared, oversubscribed CPU one thread is often
    faster than several that stall at their barriers."""
    import os

    value = os.environ.get("MMAPPS_THREADS")
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"MMAPPS_THREADS must be a whole number >= 1; got {value!r}")
    import torch

    torch.set_num_threads(int(value))
