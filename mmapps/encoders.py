"""Generic modality encoders. Each maps one modality to [B, out_dim] and declares ``out_dim``.

Scenario-specific encoders live in the scenario packages; these are the shared building blocks.
Nothing here loads pretrained weights: the machine (and our users) may be offline.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .registry import Registry

ENCODERS = Registry("encoder")


def get_encoder(name: str, **kwargs) -> nn.Module:
    """Build a registered encoder by name; an unknown name raises ValueError listing the valid ones."""
    return ENCODERS.build(name, **kwargs)


class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit(3, in, out, strides, kernel_size=3, subunits, norm="batch")`` (conv -> batch norm ->
    PReLU per subunit, plus a convolutional shortcut), with the same module names, so MONAI-built checkpoints load
    unchanged (tests compare both on the same weights). Our own because ``import monai`` loads every MONAI
    submodule (transformers, triton, ...): ~9 s on each CLI call on a 2-core machine, for 20 lines of network."""

    def __init__(self, in_channels: int, out_channels: int, strides: int = 1, subunits: int = 1):
        super().__init__()
        self.conv = nn.Sequential()
        for i in range(max(1, subunits)):
            unit = nn.Sequential()
            unit.add_module("conv", nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3,
                                              stride=strides if i == 0 else 1, padding=1))
            unit.add_module("adn", nn.Sequential(OrderedDict(N=nn.BatchNorm3d(out_channels), A=nn.PReLU())))
            self.conv.add_module(f"unit{i}", unit)
        if strides != 1 or in_channels != out_channels:  # MONAI: a 1-voxel kernel unless the unit strides
            k = 3 if strides != 1 else 1
            self.residual = nn.Conv3d(in_channels, out_channels, k, stride=strides, padding=k // 2)
        else:
            self.residual = nn.Identity()

    def forward(self, x):
        return self.conv(x) + self.residual(x)


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim), nn.GELU())


class TabularEncoder(nn.Module):
    """Numeric features (already scaled, with 0/1 missing indicators) plus optional categorical columns.

    Input: float [B, in_features], or a dict {"numeric": [B, F], "categorical": long [B, C]} when
    ``cardinalities`` is given (one embedding per categorical column; index 0 can mean "missing").
    """

    def __init__(self, in_features: int, hidden: int = 64, out_dim: int = 64, cardinalities: tuple[int, ...] = (),
                 embed_dim: int = 8, dropout: float = 0.1):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, embed_dim) for c in cardinalities)
        self.mlp = _mlp(in_features + embed_dim * len(cardinalities), hidden, out_dim, dropout)
        self.out_dim = out_dim

    def forward(self, x):
        if isinstance(x, dict):
            parts = [x["numeric"].float()]
            parts += [emb(x["categorical"][:, i]) for i, emb in enumerate(self.embeddings)]
            x = torch.cat(parts, dim=1)
        return self.mlp(x.float())


class SmallCNN2d(nn.Module):
    """A compact 2D CNN (conv-BN-ReLU stages, global average pool)."""

    def __init__(self, in_channels: int = 3, out_dim: int = 128, width: int = 32, stages: int = 4):
        super().__init__()
        layers, c = [], in_channels
        for i in range(stages):
            w = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c, out_dim)
        self.out_dim = out_dim

    def forward(self, x):
        return self.proj(self.features(x).mean(dim=(2, 3)))


class ResNet18Encoder(nn.Module):
    """torchvision ResNet-18, randomly initialised (no weight download), with a projection to out_dim."""

    def __init__(self, in_channels: int = 3, out_dim: int = 128):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Linear(net.fc.in_features, out_dim)
        self.net = net
        self.out_dim = out_dim

    def forward(self, x):
        return self.net(x)


class Volume3dEncoder(nn.Module):
    """3D CNN for CT/MRI volumes built from residual units (MONAI's design, see ``ResidualUnit``), global pooled.

    ``target_layer`` names the last convolutional stage for Grad-CAM (monai.visualize.GradCAM).
    """

    target_layer = "features"

    def __init__(self, in_channels: int = 1, out_dim: int = 128, channels: tuple[int, ...] = (16, 32, 64),
                 dropout: float = 0.1):
        super().__init__()
        layers, c = [], in_channels
        for w in channels:
            layers.append(ResidualUnit(c, w, strides=2, subunits=1))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, out_dim), nn.GELU())
        self.out_dim = out_dim

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


class AudioEncoder(nn.Module):
    """Log-mel spectrogram [B, n_mels, T] -> CNN over (mel, time) -> attention-free mean+max pooling."""

    def __init__(self, n_mels: int = 64, out_dim: int = 128, width: int = 32):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Linear(8 * width, out_dim)
        self.out_dim = out_dim

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        h = self.cnn(x).mean(dim=2)  # collapse mel axis -> [B, C, T']
        return self.proj(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class SequenceEncoder(nn.Module):
    """Token ids [B, T] (0 = padding) -> per-token features and a masked-mean pooled vector."""

    def __init__(self, vocab_size: int, emb_dim: int = 128, out_dim: int = 128, kind: str = "gru",
                 layers: int = 1, heads: int = 4, max_len: int = 256, dropout: float = 0.1):
        super().__init__()
        from .errors import check_choice

        check_choice("kind", kind, ["gru", "transformer"])
        self.kind = kind
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        if kind == "gru":
            self.rnn = nn.GRU(emb_dim, out_dim // 2, num_layers=layers, batch_first=True, bidirectional=True)
            self.token_dim = 2 * (out_dim // 2)
        else:
            self.pos = nn.Embedding(max_len, emb_dim)
            layer = nn.TransformerEncoderLayer(emb_dim, heads, 2 * emb_dim, dropout, batch_first=True)
            self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.token_proj = nn.Linear(emb_dim, out_dim)
            self.token_dim = out_dim
        self.out_proj = nn.Linear(self.token_dim, out_dim) if self.token_dim != out_dim else nn.Identity()
        self.out_dim = out_dim

    def forward_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.kind == "gru":
            h, _ = self.rnn(x)
        else:
            pos = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.pos.num_embeddings - 1)
            h = self.token_proj(self.transformer(x + self.pos(pos), src_key_padding_mask=ids == 0))
        return self.out_proj(h)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.forward_tokens(ids)
        mask = (ids != 0).unsqueeze(-1).float()
        return (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)


ENCODERS.register("tabular")(TabularEncoder)
ENCODERS.register("image2d")(SmallCNN2d)
ENCODERS.register("resnet18")(ResNet18Encoder)
ENCODERS.register("volume3d")(Volume3dEncoder)
ENCODERS.register("audio")(AudioEncoder)
ENCODERS.register("sequence")(SequenceEncoder)

# Small example inputs per encoder: used by the contract test and by documentation.
EXAMPLE_INPUTS = {
    "tabular": (dict(in_features=6), lambda b: torch.randn(b, 6)),
    "image2d": (dict(in_channels=3, out_dim=32, width=8), lambda b: torch.randn(b, 3, 32, 32)),
    "resnet18": (dict(in_channels=3, out_dim=32), lambda b: torch.randn(b, 3, 32, 32)),
    "volume3d": (dict(in_channels=1, out_dim=32, channels=(4, 8)), lambda b: torch.randn(b, 1, 16, 16, 16)),
    "audio": (dict(n_mels=16, out_dim=32, width=8), lambda b: torch.randn(b, 16, 40)),
    "sequence": (dict(vocab_size=50, emb_dim=16, out_dim=32),
                 lambda b: torch.randint(1, 50, (b, 7))),
}
