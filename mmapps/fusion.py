"""Fusion modules: dict of per-modality features + presence masks -> one fused vector.

Every module accepts any subset of modalities per sample (``present[m]`` is a bool [B] mask) and
records per-sample modality weights of its last forward in ``last_weights`` for explanations.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Registry

FUSIONS = Registry("fusion")


def get_fusion(name: str, in_dims: dict[str, int], out_dim: int = 128, **kwargs) -> nn.Module:
    """Build a registered fusion module; unknown names raise ValueError with the valid ones."""
    return FUSIONS.build(name, in_dims=in_dims, out_dim=out_dim, **kwargs)


def _stack_present(present: dict[str, torch.Tensor], names: list[str], ref: torch.Tensor) -> torch.Tensor:
    """[B, M] float mask in the module's modality order (absent key -> not present)."""
    cols = [present[m].to(ref.device).float() if m in present else torch.zeros(ref.shape[0], device=ref.device)
            for m in names]
    return torch.stack(cols, dim=1)


class _Fusion(nn.Module):
    def __init__(self, in_dims: dict[str, int], out_dim: int):
        super().__init__()
        if not in_dims:
            raise ValueError("fusion needs at least one modality in in_dims")
        self.names = list(in_dims)
        self.in_dims = dict(in_dims)
        self.out_dim = out_dim
        self.last_weights: dict[str, torch.Tensor] = {}

    def _features(self, features: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        ref = next(iter(features.values()))
        feats = [features[m] if m in features else ref.new_zeros(ref.shape[0], self.in_dims[m]) for m in self.names]
        return feats, ref

    def _record(self, weights: torch.Tensor) -> None:
        self.last_weights = {m: weights[:, i].detach() for i, m in enumerate(self.names)}


@FUSIONS.register("concat")
class ConcatFusion(_Fusion):
    """Concatenate features (zeros where missing) plus the presence indicators, then an MLP."""

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128, dropout: float = 0.1):
        super().__init__(in_dims, out_dim)
        total = sum(in_dims.values()) + len(in_dims)
        self.mlp = nn.Sequential(nn.Linear(total, out_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim))

    def forward(self, features, present):
        feats, ref = self._features(features)
        mask = _stack_present(present, self.names, ref)
        feats = [f * mask[:, i:i + 1] for i, f in enumerate(feats)]
        # Concat has no intrinsic weights: report the share of feature norm each present modality brings.
        norms = torch.stack([f.norm(dim=1) for f in feats], dim=1)
        self._record(norms / norms.sum(dim=1, keepdim=True).clamp(min=1e-8))
        return self.mlp(torch.cat(feats + [mask], dim=1))


@FUSIONS.register("weighted")
class WeightedFusion(_Fusion):
    """fused = sum_i alpha_i * proj_i(f_i), alpha = softmax over the present modalities of a learned score."""

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128):
        super().__init__(in_dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.score = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in in_dims.items()})

    def forward(self, features, present):
        feats, ref = self._features(features)
        mask = _stack_present(present, self.names, ref)
        projected = torch.stack([self.proj[m](f) for m, f in zip(self.names, feats)], dim=1)  # [B, M, D]
        scores = torch.cat([self.score[m](f) for m, f in zip(self.names, feats)], dim=1)  # [B, M]
        alpha = _masked_softmax(scores, mask)
        self._record(alpha)
        return (alpha.unsqueeze(-1) * projected).sum(dim=1)


@FUSIONS.register("gated")
class GatedFusion(_Fusion):
    """Each projected modality passes a sigmoid gate computed from all (masked) features."""

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128):
        super().__init__(in_dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.gate = nn.Linear(sum(in_dims.values()) + len(in_dims), len(in_dims))

    def forward(self, features, present):
        feats, ref = self._features(features)
        mask = _stack_present(present, self.names, ref)
        feats = [f * mask[:, i:i + 1] for i, f in enumerate(feats)]
        gates = torch.sigmoid(self.gate(torch.cat(feats + [mask], dim=1))) * mask  # [B, M]
        projected = torch.stack([torch.tanh(self.proj[m](f)) for m, f in zip(self.names, feats)], dim=1)
        self._record(gates / gates.sum(dim=1, keepdim=True).clamp(min=1e-8))
        return (gates.unsqueeze(-1) * projected).sum(dim=1)


@FUSIONS.register("attention")
class AttentionFusion(_Fusion):
    """A transformer over one token per modality (+ a learned summary token); missing ones are padding."""

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128, heads: int = 4, layers: int = 1,
                 dropout: float = 0.1):
        super().__init__(in_dims, out_dim)
        if out_dim % heads:
            heads = 1
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.modality_embed = nn.Parameter(torch.zeros(len(in_dims), out_dim))
        self.summary = nn.Parameter(torch.zeros(1, 1, out_dim))
        nn.init.normal_(self.modality_embed, std=0.02)
        nn.init.normal_(self.summary, std=0.02)
        layer = nn.TransformerEncoderLayer(out_dim, heads, 2 * out_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim)
        self.score = nn.Linear(out_dim, 1)  # attention-pool from the summary's view, for reported weights

    def forward(self, features, present):
        feats, ref = self._features(features)
        mask = _stack_present(present, self.names, ref)
        tokens = torch.stack([self.proj[m](f) for m, f in zip(self.names, feats)], dim=1) + self.modality_embed
        tokens = torch.cat([self.summary.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        pad = torch.cat([torch.zeros_like(mask[:, :1]), 1 - mask], dim=1).bool()  # summary token never padded
        h = self.encoder(tokens, src_key_padding_mask=pad)
        alpha = _masked_softmax(self.score(h[:, 1:]).squeeze(-1), mask)
        self._record(alpha)
        pooled = (alpha.unsqueeze(-1) * h[:, 1:]).sum(dim=1)
        return self.norm(h[:, 0] + pooled)


@FUSIONS.register("lowrank")
class LowRankTensorFusion(_Fusion):
    """Low-rank multimodal tensor fusion (Liu et al., 2018): product of rank-r modality factors.

    A missing modality contributes its "1" column only (the constant that makes the tensor product keep
    the other modalities' terms), so it works with any subset present.
    """

    def __init__(self, in_dims: dict[str, int], out_dim: int = 128, rank: int = 4):
        super().__init__(in_dims, out_dim)
        self.factors = nn.ParameterDict({m: nn.Parameter(torch.randn(rank, d + 1, out_dim) * (d + 1) ** -0.5)
                                         for m, d in in_dims.items()})
        self.rank_weights = nn.Parameter(torch.full((1, rank), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, features, present):
        feats, ref = self._features(features)
        mask = _stack_present(present, self.names, ref)
        fused = None
        norms = []
        for i, (m, f) in enumerate(zip(self.names, feats)):
            f = f * mask[:, i:i + 1]
            ones = torch.ones(f.shape[0], 1, device=f.device, dtype=f.dtype)
            z = torch.einsum("bd,rdo->rbo", torch.cat([ones, f], dim=1), self.factors[m])  # [r, B, O]
            fused = z if fused is None else fused * z
            norms.append(f.norm(dim=1))
        out = torch.einsum("r,rbo->bo", self.rank_weights.squeeze(0), fused) + self.bias
        norms = torch.stack(norms, dim=1)
        self._record(norms / norms.sum(dim=1, keepdim=True).clamp(min=1e-8))
        return out


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the present entries; a row with nothing present gets all zeros (never NaN)."""
    scores = scores.masked_fill(mask == 0, float("-inf"))
    alpha = torch.softmax(scores, dim=1)
    return torch.nan_to_num(alpha, nan=0.0)
