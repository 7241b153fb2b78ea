"""Samples are dicts keyed by modality; collation builds the batch and the ``present`` masks."""
from __future__ import annotations

from typing import Any

import torch

RESERVED = ("targets", "meta", "present")


def _stack(values: list, like):
    if isinstance(like, dict):
        return {k: _stack([v[k] if v is not None else None for v in values], like[k]) for k in like}
    like = torch.as_tensor(like)
    return torch.stack([torch.as_tensor(v) if v is not None else torch.zeros_like(like) for v in values])


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-modality tensors; a modality absent from a sample becomes zeros with present=False."""
    modalities = []
    for s in samples:
        for k in s:
            if k not in RESERVED and k not in modalities:
                modalities.append(k)
    batch: dict[str, Any] = {"present": {}}
    for m in modalities:
        values = [s.get(m) for s in samples]
        like = next(v for v in values if v is not None)
        batch[m] = _stack(values, like)
        batch["present"][m] = torch.tensor([v is not None for v in values])
    if any("targets" in s for s in samples):
        heads = {h for s in samples for h in s.get("targets", {})}
        batch["targets"] = {}
        for h in sorted(heads):
            vals = [s.get("targets", {}).get(h) for s in samples]
            like = torch.as_tensor(next(v for v in vals if v is not None))
            filler = torch.full_like(like, -100) if not like.is_floating_point() else torch.full_like(like, float("nan"))
            batch["targets"][h] = torch.stack([torch.as_tensor(v) if v is not None else filler for v in vals])
    batch["meta"] = [s.get("meta", {}) for s in samples]
    return batch


def move_to(batch: Any, device) -> Any:
    """Move every tensor of a (nested) batch to a device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [move_to(v, device) for v in batch]
    return batch
