"""Modality contributions: fusion weights, and the change in output when each modality is masked."""
from __future__ import annotations

import torch

from .model import predict_proba


@torch.no_grad()
def masked_contributions(model, batch: dict, head: str, index: int | None = None,
                         encoded: tuple[dict, dict] | None = None) -> dict[str, torch.Tensor]:
    """For each present modality m: p(all present) - p(m masked), per sample ([B]).

    ``index`` picks one output column (multiclass/multilabel); binary heads need none. ``encoded``: the
    (features, context) of an eval-mode ``model.encode(batch, context)`` the caller already ran, so the encoders
    (the costly part: 3D CNNs on a CT) run once per prediction, not twice.
    """
    was_training = model.training
    model.eval()
    try:
        kind = getattr(model.heads[head], "kind", "binary")

        # encode once; each masked variant only re-runs fusion and the head (the encoders are the costly part)
        if encoded is None:
            context: dict = {"batch": batch}
            features, _ = model.encode(batch, context)
        else:
            features, context = encoded

        def prob(present):
            feats, ctx = model.with_present(features, context, present)
            out = model.decode(feats, present, ctx)["outputs"][head]
            p = predict_proba(out, kind)
            return p[:, index] if index is not None and p.dim() == 2 else p.reshape(-1)

        present = {m: v for m, v in batch["present"].items() if m in model.modalities and m in batch}
        full = prob(present)
        result = {}
        for m, mask in present.items():
            others = {k: v for k, v in present.items() if k != m}
            if not others or not any(v.any() for v in others.values()):
                result[m] = torch.where(mask.bool(), full - full.new_tensor(0.5), torch.zeros_like(full))
                continue
            reduced = {**present, m: torch.zeros_like(mask, dtype=torch.bool)}
            # Samples whose only modality is m keep it (a model needs at least one input).
            alone = mask.bool() & ~torch.stack([v.bool() for v in others.values()]).any(0)
            reduced[m] = alone
            delta = full - prob(reduced)
            result[m] = torch.where(mask.bool() & ~alone, delta, torch.zeros_like(delta))
        return result
    finally:
        model.train(was_training)
