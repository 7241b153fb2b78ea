"""The one deterministic train/validation split every scenario uses."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def validation_split(n: int, fraction: float = 0.15, seed: int = 0, labels: Sequence | None = None,
                     min_val: int = 1) -> tuple[list[int], list[int]]:
    """Indices (train, val) of ``n`` items; the same arguments always give the same split.

    Args:
        n: number of items.
        fraction: share of items for validation, in (0, 1).
        seed: RNG seed.
        labels: optional per-item labels: the split is then stratified (each label keeps its share, and a label
            with at least 2 items puts at least one in each part).
        min_val: at least this many validation items when n allows (n - 1 at most: training keeps one).
    Returns:
        (train_indices, val_indices), each sorted.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    if n < 2:
        return list(range(n)), []
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n)]
    else:
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} items for n={n}")
        keys = [str(l) for l in labels]
        groups = [np.array([i for i, k in enumerate(keys) if k == key]) for key in sorted(set(keys))]
    val: list[int] = []
    for g in groups:
        g = rng.permutation(g)
        k = int(round(len(g) * fraction))
        if len(g) >= 2:
            k = min(max(k, 1), len(g) - 1)
        val.extend(int(i) for i in g[:k])
    want = min(max(min_val, 1), n - 1)
    if len(val) < want:  # tiny data sets: top up from the rest, still deterministic
        rest = [int(i) for i in rng.permutation(np.setdiff1d(np.arange(n), val))]
        val.extend(rest[: want - len(val)])
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], sorted(val_set)
