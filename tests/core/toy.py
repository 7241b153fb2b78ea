"""A small two-modality task where each modality alone carries only part of the answer.

label = 1 if a[0] + b[0] > 0: modality "a" alone or "b" alone reaches about 75 % accuracy, both ~100 %.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mmapps.encoders import get_encoder
from mmapps.model import FusionModel, HeadSpec


class ToyDataset(Dataset):
    def __init__(self, n: int, seed: int, dim: int = 6):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(n, dim, generator=g)
        self.b = torch.randn(n, dim, generator=g)
        self.y = (self.a[:, 0] + self.b[:, 0] > 0).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.a[i], "b": self.b[i], "targets": {"label": self.y[i]}, "meta": {"index": i}}


def toy_model(modalities=("a", "b"), fusion="weighted", dim: int = 6, modality_dropout: float = 0.0) -> FusionModel:
    encoders = {m: get_encoder("tabular", in_features=dim, hidden=32, out_dim=16, dropout=0.0) for m in modalities}
    return FusionModel(encoders, {"label": HeadSpec("binary")}, fusion=fusion, fusion_dim=32,
                       modality_dropout=modality_dropout, head_hidden=16)


@torch.no_grad()
def accuracy(model, dataset, modalities=("a", "b")) -> float:
    from mmapps.data import collate_samples

    model.eval()
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    batch["present"] = {m: v for m, v in batch["present"].items() if m in modalities}
    logits = model(batch)["outputs"]["label"].reshape(-1)
    return float(((logits > 0).float() == batch["targets"]["label"]).float().mean())


def tensor_sample(i: int) -> dict:
    """What a worker of ``parallel_map`` returns when it reads a study: several tensors in nested containers."""
    return {"x": torch.full((4,), float(i)), "parts": [torch.tensor([i]), (torch.tensor([2 * i]),)], "id": i}
