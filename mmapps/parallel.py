"""Spreading data-sized work: ``--workers N`` processes here, ``--shard i/n`` across machines."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Iterable, Sequence, TypeVar

from .errors import UserError
from .progress import track

T = TypeVar("T")
R = TypeVar("R")


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None or text == "":
        return 0, 1
    try:
        i_text, n_text = str(text).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise UserError(f"--shard must look like i/n (for example 0/4); got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def shard_items(items: Sequence[T], i: int, n: int) -> list[T]:
    """The i-th of n interleaved slices, so every shard gets a similar mix of items."""
    return list(items[i::n])


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, description: str = "working",
                 chunksize: int = 1) -> list[R]:
    """Ordered map over a process pool (workers > 1) or inline, with a progress bar.

    Workers come from a fork server, not a plain fork: a child forked after torch has started its
    OpenMP thread pool in the parent can hang. ``fn`` must therefore be importable (module level).
    Tensors in the results travel by value (see :class:`_ByValue`).
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in track(items, description)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_mark_pool_worker) as pool:
        results = pool.map(functools.partial(_call_by_value, fn), items, chunksize=chunksize)
        return [_unpack(r) for r in track(results, description, total=len(items))]


_POOL_WORKER = "MMAPPS_POOL_WORKER"


def _mark_pool_worker() -> None:
    os.environ[_POOL_WORKER] = "1"


def in_pool_worker() -> bool:
    """True inside a :func:`parallel_map` worker: the cores are already shared out, one process each, so code
    that would spread its own work over threads should stay on one."""
    return os.environ.get(_POOL_WORKER) == "1"


def thread_count(tasks: int, cap: int = 4) -> int:
    """Threads for ``tasks`` independent pieces of GIL-releasing work (numpy / scipy.ndimage): one inside a pool
    worker, else up to the usable cores and ``cap``."""
    if in_pool_worker():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(tasks), int(cap), cores))


class _ByValue:
    """A tensor sent from a worker as a numpy array (pickled bytes), not as torch's shared-memory handle: each
    received shared tensor keeps a file descriptor open in the parent, and reading a 4,000-study cohort (about
    five tensors each) ran out of this machine's 20,000 (1,024 is a common default limit)."""

    def __init__(self, tensor):
        self.array = tensor.detach().cpu().numpy()


def _map_leaves(obj, leaf):
    """``leaf`` applied to every value inside dicts and exact lists / tuples (a namedtuple or list subclass is a
    leaf: it comes back as it is)."""
    if isinstance(obj, dict):
        return {k: _map_leaves(v, leaf) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_map_leaves(v, leaf) for v in obj)
    return leaf(obj)


def _pack(obj):
    torch = sys.modules.get("torch")  # no torch imported in the worker: no tensors to convert
    if torch is None:
        return obj
    # numpy has no bfloat16: such tensors keep torch's own pickling
    return _map_leaves(obj, lambda v: _ByValue(v) if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16
                       else v)


def _unpack(obj):
    def leaf(v):
        if isinstance(v, _ByValue):
            import torch

            return torch.from_numpy(v.array)
        return v

    return _map_leaves(obj, leaf)


def _call_by_value(fn, item):
    return _pack(fn(item))
