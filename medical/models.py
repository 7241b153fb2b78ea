"""The medical model: CT and MRI 3D CNNs (core ``volume3d``) + record MLP (core ``tabular``) -> fusion -> heads.

Besides malignancy, auxiliary heads predict the nodule variables the CT shows (size, type, spiculation,
lobe, emphysema): multi-task supervision that teaches the small CT encoder what to look at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mmapps.config import check_choice, check_range
from mmapps.encoders import ResidualUnit
from mmapps.errors import UserError
from mmapps.trainer import TrainConfig

MODALITIES = ("ct", "mri", "record")
FUSIONS = ("concat", "weighted", "gated", "attention")
AUX_HEADS = {"nodule_size": "regression", "nodule_type": "multiclass", "spiculation": "binary",
             "upper_lobe": "binary", "emphysema": "binary"}
NODULE_TYPES = ("solid", "part-solid", "non-solid")
CT_WINDOW = (-1024.0, 400.0)  # HU range mapped to [0, 1]; keeps emphysema (< -950) apart from lung (-850)

# Measured CT variables (Brock's, from the detector and the lung mask), fed beside the CNN features and to the
# Brock/PLCO-shaped linear term of the malignancy head. Position in the lung box comes first (the old 5-number
# geometry is this vector's first 3 entries + radius + found flag when ``measured`` is off).
MEASURED_FEATURES = ("pos_z", "pos_y", "pos_x", "brock_size", "part_solid", "ground_glass", "spiculation",
                     "upper_lobe", "lobe_unknown", "emphysema_fraction", "nodule_count", "found")
GEOMETRY_FEATURES = 5

# Record features: value columns (scaled like the clinical model uses them) + one missing indicator each.
RECORD_FEATURES = ("age", "female", "family_history_lung_cancer", "education", "bmi", "copd",
                   "personal_cancer_history", "current_smoker", "former_smoker", "cigs_inverse",
                   "smoking_years", "years_quit", "pack_years")


def record_vector(fields: dict) -> np.ndarray:
    """Validated record fields -> float32 [2 * len(RECORD_FEATURES)]: values, then missing indicators.

    Missing fields are 0 with indicator 1 (never a silent zero). Never-smokers have known-zero smoking
    amounts, not missing ones.
    """
    status = fields.get("smoking_status")
    never = status == "never"
    vals: dict[str, float | None] = {
        "age": (fields["age"] - 62) / 10 if "age" in fields else None,
        "female": float(fields["sex"] == "female") if "sex" in fields else None,
        "family_history_lung_cancer": _b(fields.get("family_history_lung_cancer")),
        "education": (fields["education"] - 4) / 2 if "education" in fields else None,
        "bmi": (fields["bmi"] - 27) / 5 if "bmi" in fields else None,
        "copd": _b(fields.get("copd")),
        "personal_cancer_history": _b(fields.get("personal_cancer_history")),
        "current_smoker": None if status is None else float(status == "current"),
        "former_smoker": None if status is None else float(status == "former"),
    }
    cigs = fields.get("cigs_per_day")
    if never:
        vals.update(cigs_inverse=0.0, smoking_years=0.0, years_quit=0.0, pack_years=0.0)
    else:
        # PLCOm2012 uses (cigs/10)^-1: give the model the same transform, clipped for tiny intensities.
        vals["cigs_inverse"] = min(10.0 / max(cigs, 1.0) - 0.402, 5.0) if cigs is not None else None
        vals["smoking_years"] = (fields["smoking_years"] - 27) / 10 if "smoking_years" in fields else None
        vals["years_quit"] = (fields["years_quit"] - 10) / 10 if "years_quit" in fields else None
        vals["pack_years"] = fields["pack_years"] / 30 if "pack_years" in fields else None
    x = [0.0 if vals[k] is None else float(vals[k]) for k in RECORD_FEATURES]
    missing = [1.0 if vals[k] is None else 0.0 for k in RECORD_FEATURES]
    return np.asarray(x + missing, dtype=np.float32)


class VolumeEncoder(nn.Module):
    """3D CNN (residual units in MONAI's layout, ``mmapps.encoders.ResidualUnit``) with global mean + max pooling.

    The core ``volume3d`` encoder mean-pools, which dilutes one small nodule in a large volume; the max
    keeps "the most suspicious spot" (size, density, spiculation) visible. ``features`` is the Grad-CAM layer.
    """

    target_layer = "features"

    def __init__(self, in_channels: int = 1, out_dim: int = 64, channels=(16, 32, 64), dropout: float = 0.1):
        super().__init__()
        layers, c = [], in_channels
        for w in channels:
            layers.append(ResidualUnit(c, w, strides=2, subunits=2))
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * c, out_dim), nn.GELU())
        self.out_dim = out_dim

    def forward(self, x):
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))


class CTEncoder(nn.Module):
    """CT = coarse lung-region grid (emphysema, nodule count) + nodule-centred crop (size, density, spiculation)
    + candidate geometry (position in the lungs -> lobe). ``grid_net.features`` is the Grad-CAM layer."""

    target_layer = "grid_net.features"

    def __init__(self, out_dim: int = 64, channels=(16, 32, 64), crop_channels=(16, 32, 64), dropout: float = 0.1,
                 geom_dim: int = GEOMETRY_FEATURES):
        super().__init__()
        self.grid_net = VolumeEncoder(2, out_dim, channels, dropout)
        self.crop_net = VolumeEncoder(1, out_dim, crop_channels, dropout)
        self.geom = nn.Sequential(nn.Linear(geom_dim, 16), nn.GELU())
        self.proj = nn.Sequential(nn.Linear(2 * out_dim + 16, out_dim), nn.GELU())
        self.out_dim = out_dim

    def forward(self, x: dict):
        return self.proj(torch.cat([self.grid_net(x["grid"]), self.crop_net(x["crop"]), self.geom(x["geom"])], dim=1))


def _b(v):
    return None if v is None else float(bool(v))


@dataclass
class ModelConfig:
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    fusion: str = "attention"
    fusion_dim: int = 64
    encoder_dim: int = 64
    ct_grid: int = 32
    ct_crop: int = 32
    mri_grid: int = 24
    ct_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    mri_channels: list[int] = field(default_factory=lambda: [8, 16, 32])
    crop_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    record_hidden: int = 64
    modality_dropout: float = 0.25
    aux_heads: bool = True
    aux_weight: float = 0.3
    measured: bool = True  # measured Brock variables beside the CNN features + a linear Brock/PLCO term

    @property
    def geom_dim(self) -> int:
        return len(MEASURED_FEATURES) if self.measured else GEOMETRY_FEATURES

    def validate(self) -> None:
        if not self.modalities:
            raise UserError("modalities must be a non-empty subset of ct, mri, record")
        for m in self.modalities:
            check_choice("modality", m, MODALITIES)
        if len(set(self.modalities)) != len(self.modalities):
            raise UserError(f"modalities has duplicates: {','.join(self.modalities)}")
        check_choice("fusion", self.fusion, FUSIONS)
        check_range("ct_grid", self.ct_grid, 8, 128)
        check_range("ct_crop", self.ct_crop, 8, 128)
        check_range("mri_grid", self.mri_grid, 8, 128)
        check_range("modality_dropout", self.modality_dropout, 0.0, 0.9)


@dataclass
class MedicalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=24, batch_size=16, lr=2e-3, weight_decay=1e-4, patience=6, monitor="val_loss", mode="min", seed=0))
    val_fraction: float = 0.2
    workers: int = 1
    # "logistic": the head's Brock/PLCO linear term is a logistic regression fitted on the training split's measured
    # CT variables + record before the network trains, then frozen (the CNN learns the residual); "joint": learned
    # with the network from zero (the first round-2 model; its linear term alone reached only 0.68 AUROC)
    linear_term: str = "logistic"

    def validate(self) -> None:
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_choice("linear_term", self.linear_term, ("logistic", "joint"))


def build_model(cfg: ModelConfig):
    """FusionModel over the configured modalities, rebuilt from this config alone (checkpoints)."""
    from mmapps.encoders import get_encoder
    from mmapps.model import FusionModel, HeadSpec

    encoders = {}
    if "ct" in cfg.modalities:
        encoders["ct"] = CTEncoder(cfg.encoder_dim, tuple(cfg.ct_channels), tuple(cfg.crop_channels),
                                   geom_dim=cfg.geom_dim)
    if "mri" in cfg.modalities:
        encoders["mri"] = VolumeEncoder(1, cfg.encoder_dim, tuple(cfg.mri_channels))
    if "record" in cfg.modalities:
        encoders["record"] = get_encoder("tabular", in_features=2 * len(RECORD_FEATURES), hidden=cfg.record_hidden,
                                         out_dim=cfg.encoder_dim)
    heads = {"malignancy": BrockPLCOHead(cfg.fusion_dim, cfg.geom_dim if "ct" in cfg.modalities else 0,
                                         2 * len(RECORD_FEATURES) if "record" in cfg.modalities else 0)
             if cfg.measured else HeadSpec("binary", 1, 1.0)}
    if cfg.aux_heads:
        for name, kind in AUX_HEADS.items():
            heads[name] = HeadSpec(kind, len(NODULE_TYPES) if kind == "multiclass" else 1, cfg.aux_weight)
    return FusionModel(encoders, heads, fusion=cfg.fusion, fusion_dim=cfg.fusion_dim,
                       modality_dropout=cfg.modality_dropout)


class BrockPLCOHead(nn.Module):
    """Malignancy logit = a linear term on the measured CT variables and the record (the shape of the Brock and
    PLCOm2012 models: a logistic regression) + an MLP on the fused features that learns the residual.

    A modality that is absent (or dropped) contributes nothing to the linear term.
    """

    kind = "binary"
    weight = 1.0

    def __init__(self, fused_dim: int, measured_dim: int, record_dim: int, hidden: int = 64):
        super().__init__()
        self.residual = nn.Sequential(nn.Linear(fused_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.measured = nn.Linear(measured_dim, 1, bias=False) if measured_dim else None
        self.record = nn.Linear(record_dim, 1, bias=False) if record_dim else None
        self.parts = ("linear", "residual")  # evaluation switches one off to measure the other (ablation)

    def forward(self, fused, context=None):
        out = self.residual(fused)
        if "residual" not in self.parts:
            out = out * 0.0 + self.residual[-1].bias  # keep the bias: it is the shared intercept
        if "linear" not in self.parts:
            return out
        batch, present = (context or {}).get("batch", {}), (context or {}).get("present", {})
        if self.measured is not None and "ct" in present:
            out = out + self.measured(batch["ct"]["geom"]) * present["ct"].float()[:, None]
        if self.record is not None and "record" in present:
            out = out + self.record(batch["record"]) * present["record"].float()[:, None]
        return out

    def loss(self, output, target, context=None):
        from mmapps.model import head_loss

        return head_loss("binary", output, target)


def aux_targets(row: dict) -> dict:
    """Auxiliary targets from a manifest row (empty when the columns are absent: own cohorts)."""
    try:
        return {"nodule_size": np.float32(math.log2(float(row["nodule_size_mm"]) / 10.0)),
                "nodule_type": np.int64(NODULE_TYPES.index(row["nodule_type"])),
                "spiculation": np.float32(float(row["spiculation"])),
                "upper_lobe": np.float32(float(row["upper_lobe"])),
                "emphysema": np.float32(float(row["emphysema"]))}
    except (KeyError, ValueError, TypeError):
        return {}
