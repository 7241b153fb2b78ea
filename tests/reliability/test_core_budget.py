"""The core reliability layer, in-process and fast: input budgets before decoding, config validation, trainer
guards (unwritable --out, --resume mismatch, strict-JSON metrics), checkpoint shape check, stale temp files,
warnings held back on clean errors."""
from __future__ import annotations

import json
import math
import os
import resource
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mmapps.checkpoint import CheckpointError, save_checkpoint
from mmapps.config import load_config
from mmapps.errors import UserError
from mmapps.inputs import (LIMITS, check_audio_file, check_image, check_nifti, check_points_file, check_raw_audio,
                           parse_json, read_bytes, read_dicom, read_dicom_header, read_json, read_text)
from mmapps.io import atomic_write_text, remove_stale_temps
from mmapps.pipeline import Pipeline
from mmapps.trainer import TrainConfig, Trainer

from . import hostile as H


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- input budget --------------------------------------------------------------------------------------------
def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path):
    bomb = H.dicom_deflate_bomb(tmp_path / "bomb.dcm", inflated_bytes=2**31)
    before = _peak_mb()
    with pytest.raises(UserError, match="bomb.dcm: deflated DICOM inflates to more than"):
        read_dicom_header(bomb)
    assert _peak_mb() - before < 200  # chunked inflate, output discarded


def test_dicom_declaring_a_huge_image_is_refused_from_the_header(tmp_path):
    f = H.dicom_huge_header(tmp_path / "huge.dcm")
    with pytest.raises(UserError, match="huge.dcm: DICOM image of 65535x65535x2000 .* larger than the"):
        read_dicom(f)


def test_nifti_gz_declaring_huge_dims_is_refused_from_the_header(tmp_path):
    f = H.nifti_gz_bomb(tmp_path / "b.nii.gz", data_bytes=2**20)
    with pytest.raises(UserError, match=r"b.nii.gz: NIfTI header declares 2048x2048x1024"):
        check_nifti(f)


@pytest.mark.parametrize("size", [(10000, 9900), (16000, 12000)])
def test_png_over_the_pixel_budget_is_refused_without_pil_warnings(tmp_path, size):
    f = H.png_bomb(tmp_path / "big.png", *size, full=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        with pytest.raises(UserError, match="big.png: .*larger than the 64,000,000-pixel limit"):
            check_image(f)


def test_audio_budgets_come_from_header_and_size(tmp_path):
    assert check_audio_file(H.wav(tmp_path / "ok.wav", 1.0)).frames == 16000
    with pytest.raises(UserError, match="long.wav: the audio is 61.0 s long"):
        check_audio_file(H.wav(tmp_path / "long.wav", 61.0, rate=8000))
    with pytest.raises(UserError, match=r"3h.raw: raw audio of 10800.0 s"):
        check_raw_audio(H.sparse_file(tmp_path / "3h.raw", 3 * 3600 * 16000 * 2))


def test_point_cloud_count_from_file_size(tmp_path):
    assert check_points_file(H.sparse_file(tmp_path / "ok.bin", 16 * 1000)) == 1000
    with pytest.raises(UserError, match="at most 10,000,000 points"):
        check_points_file(H.sparse_file(tmp_path / "huge.bin", 16 * (LIMITS.points + 1)))


@pytest.mark.parametrize("make", [H.fifo, H.dev_zero_link], ids=["fifo", "dev_zero"])
def test_special_files_are_refused_by_every_reader(tmp_path, make):
    f = make(tmp_path / "special.dat")
    for reader in (read_bytes, read_text, read_json, check_audio_file, check_raw_audio, check_points_file,
                   check_image, check_nifti, read_dicom_header):
        with pytest.raises(UserError, match="special.dat: is a (FIFO|device)"):
            reader(f)


def test_read_bytes_reads_in_chunks_and_caps(tmp_path):
    f = H.write(tmp_path / "x.bin", b"a" * 1000)
    assert read_bytes(f) == b"a" * 1000  # the 4 GiB default cap is not allocated up front
    with pytest.raises(UserError, match="1,000 bytes is more than the 999-byte limit"):
        read_bytes(f, 999)


def test_text_and_json_errors_name_file_and_line(tmp_path):
    f = H.write(tmp_path / "t.txt", b"ok\nok\n" + H.bad_utf8("x", 0))
    with pytest.raises(UserError, match=r"t.txt: line 3: .* not valid UTF-8 \(byte 0xff\)"):
        read_text(f)
    with pytest.raises(UserError, match="d.json: JSON file is nested too deeply"):
        read_json(H.write(tmp_path / "d.json", H.deep_json(100_000)))
    with pytest.raises(UserError, match=r"m.jsonl: line 7: not valid JSON"):
        parse_json("{", "m.jsonl", line=7)


# -- configs -------------------------------------------------------------------------------------------------
@dataclass
class ModelCfg:
    encoder_dim: int = 64
    char_dim: int = 0  # 0 = off: a size whose default is 0 may be 0
    dropout: float = 0.1


@dataclass
class Settings:
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainConfig = field(default_factory=TrainConfig)


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr must be a finite number"),
    ("train.lr=inf", "train.lr must be a finite number"),
    ("model.dropout=-inf", "model.dropout must be a finite number"),
    ("model.encoder_dim=-4", "model.encoder_dim must be >= 1"),
    ("model.encoder_dim=0", "model.encoder_dim must be >= 1"),
    ("model.char_dim=-1", "model.char_dim must be >= 0"),
    ("train.batch_size=0", "batch_size must be >= 1"),
    ("train.epochs=true", "train.epochs must be an integer"),
])
def test_config_overrides_are_validated(override, message):
    with pytest.raises(UserError, match=message):
        load_config(Settings, None, [override])
    assert load_config(Settings, None, ["model.char_dim=0"]).model.char_dim == 0


def test_config_files_not_utf8_or_too_deep_are_clean_errors(tmp_path):
    with pytest.raises(UserError, match=r"c.toml: line 2: config file is not valid UTF-8"):
        load_config(Settings, H.write(tmp_path / "c.toml", b"[train]\n" + H.bad_utf8("epochs = 1\n", 2)))
    with pytest.raises(UserError, match="deep.json: config is nested too deeply"):
        load_config(Settings, H.write(tmp_path / "deep.json", H.deep_json(100_000, key="train")))
    with pytest.raises(UserError, match="is a FIFO"):
        load_config(Settings, H.fifo(tmp_path / "fifo.toml"))


# -- trainer -------------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.lin = nn.Linear(2, width)
        self.out = nn.Linear(width, 1)

    def forward(self, batch):
        y = self.out(torch.relu(self.lin(batch["x"]))).squeeze(-1)
        return {"loss": ((y - batch["y"]) ** 2).mean()}


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return [{"x": x[i], "y": x[i].sum()} for i in range(n)]


def _collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


def _trainer(out, width=4, **cfg):
    return Trainer(Net(width), TrainConfig(epochs=2, batch_size=8, amp=False, **cfg), out, collate_fn=_collate, quiet=True)


def test_trainer_refuses_an_impossible_out_before_training(tmp_path):
    H.write(tmp_path / "file", "x")
    with pytest.raises(UserError, match="file is a file, not a folder"):
        _trainer(tmp_path / "file" / "m.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(UserError, match="is a folder; give a file name"):
        _trainer(tmp_path / "dir.pt")


def test_trainer_config_nan_is_refused_even_when_built_directly(tmp_path):
    with pytest.raises(UserError, match="lr must be a finite number"):
        _trainer(tmp_path / "m.pt", lr=math.nan)


def test_resume_with_another_architecture_names_the_mismatch(tmp_path):
    _trainer(tmp_path / "m.pt", width=4).fit(_data())
    t = Trainer(Net(8), TrainConfig(epochs=3, batch_size=8, amp=False), tmp_path / "m.pt", collate_fn=_collate,
                quiet=True)
    with pytest.raises(UserError, match=r"--resume: .*m.last.pt was saved by a different model .*shape: lin.weight"):
        t.fit(_data(), resume=True)


def test_metrics_jsonl_is_strict_json_even_with_nan(tmp_path):
    t = _trainer(tmp_path / "m.pt", patience=0)
    t.eval_fn = lambda model, loader, device: {"val_loss": 1.0, "auroc": math.nan}
    t.fit(_data(), _data(4))
    lines = (tmp_path / "m.metrics.jsonl").read_text().splitlines()
    records = [json.loads(l, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) for l in lines]
    assert [r["auroc"] for r in records] == [None, None]


# -- checkpoints ---------------------------------------------------------------------------------------------
@dataclass
class WideCfg:
    vocab: int = 10

    def validate(self):
        pass


class WidePipeline(Pipeline):
    scenario = "wide"
    config_class = WideCfg

    @classmethod
    def build_model(cls, config):
        return nn.Embedding(config.vocab, 64)


def test_tampered_config_is_refused_before_allocating(tmp_path):
    f = tmp_path / "m.pt"
    save_checkpoint(f, nn.Embedding(10, 64), {"scenario": "wide", "model": {"vocab": 10}})
    assert WidePipeline.from_checkpoint(f, device="cpu").model.weight.shape == (10, 64)
    bundle = torch.load(f, weights_only=True)
    bundle["config"]["model"]["vocab"] = 10**9  # 256 GB of float32 if it were built for real
    torch.save(bundle, f)
    before = _peak_mb()
    with pytest.raises(CheckpointError, match=r"does not match the stored weights .*weight \(10, 64\) vs \(1000000000, 64\)"):
        WidePipeline.from_checkpoint(f, device="cpu")
    assert _peak_mb() - before < 200


# -- atomic outputs ------------------------------------------------------------------------------------------
def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".m.pt.{host}-{2**22 + 12345}.x.tmp.pt"   # above the default pid_max: no such process
    live = tmp_path / f".m.pt.{host}-{os.getpid()}.y.tmp.pt"
    other_host = tmp_path / ".m.pt.otherhost-1.z.tmp.pt"
    for f in (dead, live, other_host):
        f.write_text("partial")
    atomic_write_text(tmp_path / "m.pt", "done")
    assert not dead.exists() and live.exists() and other_host.exists()
    assert remove_stale_temps(tmp_path / "m.pt") == []


# -- the CLI's error path ------------------------------------------------------------------------------------
def test_warnings_are_dropped_on_a_clean_error_and_kept_on_success(capsys):
    import typer

    from mmapps.cli_utils import run_command

    def bad():
        warnings.warn("noisy library warning", UserWarning)
        raise UserError("x.dat: broken")

    def good():
        warnings.warn("useful library warning", UserWarning)
        return 1

    with pytest.raises(typer.Exit) as e:
        run_command(bad)
    assert e.value.exit_code == 2
    assert capsys.readouterr().err == "error: x.dat: broken\n"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert run_command(good) == 1
    assert [str(w.message) for w in seen] == ["useful library warning"]
