"""Property-based: random and mutated bytes or JSON values never get past a reader as anything but a UserError
(core budget readers, config loading, KITTI readers, the assistant's dataset readers)."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmapps.config import load_config
from mmapps.errors import UserError
from mmapps.inputs import check_audio_file, check_image, check_nifti, read_dicom_header, read_json

from . import hostile as H
from .test_core_budget import Settings

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=12)


def _png(width: int, height: int) -> bytes:
    raw = (b"\x00" + b"\x7f" * 3 * width) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + H._png_chunk(b"IHDR", ihdr) + H._png_chunk(b"IDAT", zlib.compress(raw))
            + H._png_chunk(b"IEND", b""))


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    return {"png": _png(8, 6), "wav": H.wav(d / "s.wav", 0.2).read_bytes(),
            "nii": H.nifti_gz_bomb(d / "s.nii.gz", shape=(4, 4, 4), data_bytes=1).read_bytes(),
            "dcm": H.dicom_huge_header(d / "s.dcm", rows=4, cols=4, frames=1).read_bytes()}


@SETTINGS
@given(kind=st.sampled_from(["png", "wav", "nii", "dcm"]), edits=EDITS, cut=st.integers(1, 4096))
def test_mutated_headers_pass_or_fail_cleanly(tmp_path, samples, kind, edits, cut):
    reader = {"png": check_image, "wav": check_audio_file, "nii": check_nifti, "dcm": read_dicom_header}[kind]
    f = tmp_path / f"m.{kind if kind != 'nii' else 'nii.gz'}"
    f.write_bytes(_mutate(samples[kind], edits)[:cut])
    try:
        reader(f)
    except UserError as e:
        assert "m." in str(e)


@SETTINGS
@given(value=JSON_VALUES)
def test_config_files_of_any_shape_load_or_fail_cleanly(tmp_path, value):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": value} if not isinstance(value, dict) else value))
    try:
        cfg = load_config(Settings, f)
        assert np.isfinite(cfg.train.lr) and cfg.model.encoder_dim >= 1
    except UserError:
        pass


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_json_bytes(tmp_path, data):
    f = tmp_path / "r.json"
    f.write_bytes(data)
    try:
        read_json(f)
    except UserError as e:
        assert "r.json" in str(e)


@SETTINGS
@given(text=st.text(max_size=400), dims=st.sampled_from([4, 5]), cloud=st.binary(max_size=400))
def test_kitti_readers(tmp_path, text, dims, cloud):
    from driving.io import read_calib, read_label, read_oxts, read_velodyne

    (tmp_path / "t.txt").write_text(text)
    (tmp_path / "v.bin").write_bytes(cloud)
    for read in (read_calib, read_label, read_oxts):
        try:
            read(tmp_path / "t.txt")
        except UserError:
            pass
    try:
        pts = read_velodyne(tmp_path / "v.bin", dims)
        assert pts.shape[1] == 4 and np.isfinite(pts).all()
    except UserError:
        pass


@SETTINGS
@given(rows=st.lists(JSON_VALUES, min_size=1, max_size=4))
def test_assistant_manifest_rows_of_any_shape(tmp_path, rows):
    from assistant.io import read_manifest

    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        for ex in read_manifest(f):
            assert isinstance(ex["intent"], str) and all(isinstance(t, str) for t in ex["tags"])
    except UserError:
        pass
