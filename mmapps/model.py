"""FusionModel: per-modality encoders -> fusion -> one or more task heads with a weighted multi-task loss.

In the shape of TorchMultimodal's ``LateFusion(encoders, fusion, head)`` over dicts of modalities, except that
missing modalities are the normal case. Heads are injectable:

- a :class:`HeadSpec` builds the default MLP head on the fused vector (binary / multiclass / multilabel /
  regression), with the natural loss of its kind;
- any ``nn.Module`` can be a head. It is called as ``head(fused, context)`` where ``context`` holds, per
  modality, what the encoder returned (an encoder may return a dict with ``"pooled"`` [B, D] for fusion plus
  e.g. ``"sequence"`` [B, T, D] for a token head), the ``present`` masks and the batch. It computes its own loss
  with ``head.loss(output, target, context)`` and has a ``weight`` attribute (default 1.0).

Modality dropout lives here only (training mode), never in a scenario.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import check_choice
from .fusion import get_fusion

HEAD_KINDS = ("binary", "multiclass", "multilabel", "regression")


@dataclass
class HeadSpec:
    kind: str = "binary"
    num_outputs: int = 1
    weight: float = 1.0

    def __post_init__(self):
        check_choice("head kind", self.kind, HEAD_KINDS)


def head_loss(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The natural loss of each head kind; NaN regression targets are ignored (missing labels)."""
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), target.float().reshape(-1))
    if kind == "multiclass":
        return F.cross_entropy(logits, target.long().reshape(-1), ignore_index=-100)
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    target = target.float().reshape(logits.shape)
    keep = ~torch.isnan(target)
    if not keep.any():
        return logits.sum() * 0.0
    return F.smooth_l1_loss(logits[keep], target[keep])


def predict_proba(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits -> probabilities (binary: [B]; multiclass: [B, K]; multilabel: [B, K]; regression: values)."""
    if kind == "binary":
        return torch.sigmoid(logits.reshape(-1))
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    if kind == "multilabel":
        return torch.sigmoid(logits)
    return logits


def modality_dropout(present: dict[str, torch.Tensor], p: float, generator=None) -> dict[str, torch.Tensor]:
    """Drop each present modality with probability p, but never all modalities of a sample."""
    if p <= 0 or not present:
        return present
    names = list(present)
    mask = torch.stack([present[m].bool() for m in names], dim=1)  # [B, M]
    drop = torch.rand(mask.shape, device=mask.device, generator=generator) < p
    kept = mask & ~drop
    # Where everything would vanish, keep one randomly chosen present modality.
    empty = ~kept.any(dim=1) & mask.any(dim=1)
    if empty.any():
        scores = torch.rand(mask.shape, device=mask.device, generator=generator).masked_fill(~mask, -1.0)
        keep_one = F.one_hot(scores.argmax(dim=1), len(names)).bool()
        kept = torch.where(empty.unsqueeze(1), keep_one, kept)
    return {m: kept[:, i] for i, m in enumerate(names)}


class MLPHead(nn.Sequential):
    """The default head: Linear -> GELU -> Linear on the fused vector (a Sequential, so state keys stay 0/2)."""

    def __init__(self, in_dim: int, spec: HeadSpec, hidden: int = 64):
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, spec.num_outputs))
        self.kind = spec.kind
        self.weight = spec.weight

    def forward(self, fused, context=None):  # noqa: D401 - Sequential.forward with a context it ignores
        return super().forward(fused)

    def loss(self, output, target, context=None):
        return head_loss(self.kind, output, target)


class FusionModel(nn.Module):
    """LateFusion-style model over a dict of modalities; missing modalities are the normal case."""

    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, HeadSpec | nn.Module],
                 fusion: str | nn.Module = "attention",
                 fusion_dim: int = 128, modality_dropout: float = 0.1, head_hidden: int = 64):
        super().__init__()
        if not encoders:
            raise ValueError("FusionModel needs at least one encoder")
        if not heads:
            raise ValueError("FusionModel needs at least one head")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion if isinstance(fusion, nn.Module) else get_fusion(
            fusion, {m: e.out_dim for m, e in encoders.items()}, out_dim=fusion_dim)
        self.heads = nn.ModuleDict({
            name: MLPHead(self.fusion.out_dim, spec, head_hidden) if isinstance(spec, HeadSpec) else spec
            for name, spec in heads.items()})
        for name, head in self.heads.items():
            if not callable(getattr(head, "loss", None)):
                raise ValueError(f"head {name!r} ({type(head).__name__}) needs a loss(output, target, context) method")
        self.modality_dropout = modality_dropout
        self.modalities = list(encoders)

    def encode(self, batch: dict, context: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run each encoder on the samples where its modality is present (others get zeros).

        Returns (features {modality: [B, D]}, present {modality: [B] bool}). When ``context`` is given, each
        encoder's full output (a dict when it returns more than the pooled vector) is stored in it."""
        present = {m: batch["present"][m] for m in self.modalities if m in batch.get("present", {}) and m in batch}
        if self.training and self.modality_dropout > 0:
            present = modality_dropout(present, self.modality_dropout)
        features = {}
        for m in self.modalities:
            if m not in present:
                continue
            mask = present[m].bool()
            if not mask.any():
                continue
            x = batch[m]
            if mask.all():
                out = self.encoders[m](x)
            else:
                # Encode only present rows: saves compute on big volumes and keeps BatchNorm statistics clean.
                out = _scatter(self.encoders[m](_index(x, mask)), mask)
            if isinstance(out, dict):
                if context is not None:
                    context[m] = out
                out = out["pooled"]
            features[m] = out
        if not features:
            raise ValueError("every sample in the batch has no modality present")
        return features, present

    def decode(self, features: dict, present: dict, context: dict) -> dict:
        """Fusion + heads on encoded features: {"outputs", "fused", "weights", "present"}. Split from forward so
        a caller can encode once and decode under several presence masks (``with_present``)."""
        context["present"] = present
        fused = self.fusion(features, present)
        outputs = {name: head(fused, context) for name, head in self.heads.items()}
        return {"outputs": outputs, "fused": fused, "weights": dict(getattr(self.fusion, "last_weights", {})),
                "present": present}

    @staticmethod
    def with_present(features: dict, context: dict, present: dict) -> tuple[dict, dict]:
        """Encoded features and encoder context as ``encode`` would have returned them under a narrower presence
        mask: rows of a masked modality become zeros, a modality absent everywhere is left out."""
        feats, ctx = {}, {k: v for k, v in context.items() if k not in features}
        for m, f in features.items():
            mask = present.get(m)
            if mask is None or not mask.any():
                continue
            feats[m] = _zero_rows(f, mask)
            if m in context:
                ctx[m] = _zero_rows(context[m], mask)
        return feats, ctx

    def forward(self, batch: dict) -> dict:
        """Args:
            batch: {modality: Tensor or dict of Tensors [B, ...], "present": {modality: [B] bool},
                optional "targets": {head: Tensor}}.
        Returns:
            {"outputs": {head: Tensor}, "fused": [B, F], "weights": {modality: [B]}, "present": ..., and when
            targets are given "losses": {head: scalar}, "loss": weighted sum}.
        """
        context: dict = {"batch": batch}
        features, present = self.encode(batch, context)
        result = self.decode(features, present, context)
        targets = batch.get("targets")
        if targets:
            outputs, device = result["outputs"], result["fused"].device
            losses = {name: self.heads[name].loss(outputs[name], _to(targets[name], device), context)
                      for name in self.heads if name in targets}
            result["losses"] = losses
            result["loss"] = sum(float(getattr(self.heads[n], "weight", 1.0)) * l for n, l in losses.items())
        return result


def _to(x, device):
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _index(x, mask):
    if isinstance(x, dict):
        return {k: _index(v, mask) for k, v in x.items()}
    return x[mask]


def _zero_rows(x, mask):
    if isinstance(x, dict):
        return {k: _zero_rows(v, mask) for k, v in x.items()}
    return x * mask.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _scatter(out, mask):
    """Encoder output for the present rows -> full batch, zeros where the modality is missing."""
    if isinstance(out, dict):
        return {k: _scatter(v, mask) for k, v in out.items()}
    full = out.new_zeros((mask.shape[0], *out.shape[1:]))
    full[mask] = out
    return full
