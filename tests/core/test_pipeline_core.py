"""The core Pipeline base, injectable FusionModel heads, the validation split, the bench schema and the input
budget, tested on a toy scenario (no scenario package involved)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mmapps.bench import BenchReport, Target, median_seconds
from mmapps.checkpoint import CheckpointError, save_checkpoint
from mmapps.errors import ModelError, UserError
from mmapps.inputs import check_image, check_regular_file, check_voxels, read_text
from mmapps.model import FusionModel, HeadSpec
from mmapps.pipeline import Pipeline, check_finite_output
from mmapps.splits import validation_split


class Toy(nn.Module):
    out_dim = 4

    def __init__(self, width: int = 3):
        super().__init__()
        self.lin = nn.Linear(width, 4)

    def forward(self, x):
        return self.lin(x)


@dataclass
class ToyConfig:
    width: int = 3

    def validate(self):
        if self.width < 1:
            raise UserError(f"width must be >= 1; got {self.width}")


class ToyPipeline(Pipeline):
    scenario = "toy"
    config_class = ToyConfig

    @classmethod
    def build_model(cls, config):
        return Toy(config.width)

    def preprocess(self, values):
        return {"x": torch.tensor([values], dtype=torch.float32)}

    def _forward(self, inputs):
        return {"y": self.model(inputs["x"])}

    def postprocess(self, outputs, inputs):
        check_finite_output(outputs)
        return {"y": outputs["y"][0].tolist()}


def _save(path, scenario="toy", width=3, state=None):
    state = state if state is not None else Toy(max(width, 1)).state_dict()
    save_checkpoint(path, state, {"scenario": scenario, "model": {"width": width}})
    return path


def test_from_checkpoint_round_trip_and_call(tmp_path):
    pipe = ToyPipeline.from_checkpoint(_save(tmp_path / "m.pt"), device="cpu")
    assert pipe.device.type == "cpu" and not pipe.model.training
    assert len(pipe([1.0, 2.0, 3.0])["y"]) == 4


@pytest.mark.parametrize("kind,match", [("scenario", "not a toy checkpoint"), ("config", "invalid model config"),
                                        ("nan", "NaN")])
def test_from_checkpoint_refuses_bad_bundles(tmp_path, kind, match):
    if kind == "scenario":
        path = _save(tmp_path / "m.pt", scenario="medical")
    elif kind == "config":
        path = _save(tmp_path / "m.pt", width=-4, state=Toy(3).state_dict())
    else:
        state = {k: torch.full_like(v, float("nan")) for k, v in Toy(3).state_dict().items()}
        path = _save(tmp_path / "m.pt", state=state)
    with pytest.raises(CheckpointError, match=match):
        ToyPipeline.from_checkpoint(path)


def test_nan_output_is_an_error():
    with pytest.raises(ModelError):
        check_finite_output({"p": torch.tensor([0.5, float("nan")])})


class TokenHead(nn.Module):
    """An injected token head: reads the sequence the encoder put in the context."""

    weight = 0.5

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, fused, context):
        return self.lin(context["tokens"]["sequence"] + fused[:, None, :])

    def loss(self, output, target, context):
        return nn.functional.cross_entropy(output.reshape(-1, 2), target.reshape(-1))


class SeqEncoder(nn.Module):
    out_dim = 4

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)

    def forward(self, x):
        seq = self.lin(x)
        return {"pooled": seq.mean(1), "sequence": seq}


def test_fusion_model_with_an_injected_token_head_trains_and_handles_missing_rows():
    torch.manual_seed(0)
    model = FusionModel({"tokens": SeqEncoder(), "other": Toy(3)},
                        {"intent": HeadSpec("multiclass", 3), "slots": TokenHead()}, fusion="concat", fusion_dim=4)
    batch = {"tokens": torch.randn(5, 6, 3), "other": torch.randn(5, 3),
             "present": {"tokens": torch.ones(5, dtype=torch.bool),
                         "other": torch.tensor([True, False, True, False, True])},
             "targets": {"intent": torch.randint(0, 3, (5,)), "slots": torch.randint(0, 2, (5, 6))}}
    out = model(batch)
    assert out["outputs"]["slots"].shape == (5, 6, 2) and out["outputs"]["intent"].shape == (5, 3)
    expected = out["losses"]["intent"] + 0.5 * out["losses"]["slots"]
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert model.heads["slots"].lin.weight.grad.abs().sum() > 0


def test_validation_split_is_deterministic_and_stratified():
    labels = [0] * 90 + [1] * 10
    tr, va = validation_split(100, 0.2, seed=3, labels=labels)
    assert (tr, va) == validation_split(100, 0.2, seed=3, labels=labels)
    assert sorted(tr + va) == list(range(100)) and not set(tr) & set(va)
    assert sum(labels[i] for i in va) == 2 and len(va) == 20
    assert validation_split(100, 0.2, seed=4, labels=labels)[1] != va
    assert len(validation_split(3, 0.1, seed=0)[1]) == 1  # tiny sets still validate on something


def test_bench_report_rows_and_markdown():
    rep = BenchReport("toy", "unit", 1)
    rep.add("accuracy", 0.9, Target(">=", 0.85))
    rep.add("latency s", 2.0, Target("<=", 1.0))
    rep.add("reference", 0.5)
    assert [r.met for r in rep.rows] == [True, False, None]
    md = rep.to_markdown()
    assert "| accuracy | 0.9 | >= 0.85 | met |" in md and "| latency s | 2 | <= 1 | missed |" in md
    assert rep.to_dict()["rows"][0] == {"metric": "accuracy", "measured": 0.9, "target": ">= 0.85", "met": True}
    med, times = median_seconds(lambda: None, repeats=3)
    assert len(times) == 3 and med >= 0


def test_input_budget(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="FIFO"):
        check_regular_file(fifo)
    with pytest.raises(UserError, match="device"):
        check_regular_file("/dev/zero")
    link = tmp_path / "zero.bin"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserError, match="device"):
        read_text(link)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nfine\n\xff oops\n")
    with pytest.raises(UserError, match="line 3.*UTF-8"):
        read_text(bad)
    big = tmp_path / "big.txt"
    big.write_text("x" * 100)
    with pytest.raises(UserError, match="limit"):
        read_text(big, max_bytes=10)
    with pytest.raises(UserError, match="voxel"):
        check_voxels((4096, 4096, 4096), "v.nii")
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("L", (300, 200)).save(img)
    assert check_image(img) == (300, 200)
    with pytest.raises(UserError, match="pixel limit"):
        check_image(img, max_pixels=1000)
