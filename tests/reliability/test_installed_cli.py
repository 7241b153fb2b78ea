"""A few hostile inputs through the installed `mmapps` script itself (a fresh interpreter each, as a user runs
it, under the same memory cap), so the batched in-process runs of the other modules cannot hide a difference."""
from __future__ import annotations

import pytest

from . import hostile as H
from .conftest import judge
from .harness import ROOT, Case, run_cli

SAMPLES = ROOT / "data" / "driving" / "samples" / "training"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("installed")
    H.dicom_deflate_bomb(d / "bomb.dcm")
    H.dev_zero_link(d / "zero.bin")
    H.sparse_file(d / "long.raw", 3 * 3600 * 16000 * 2)
    return d


@pytest.mark.parametrize("scenario, argv", [
    ("medical", ["medical", "predict", "{d}/bomb.dcm", "--json"]),
    ("driving", ["driving", "perceive", "--lidar", "{d}/zero.bin", "--image", str(SAMPLES / "image_2/000000.png"),
                 "--calib", str(SAMPLES / "calib/000000.txt")]),
    ("assistant", ["assistant", "understand", "--audio", "{d}/long.raw", "--raw"]),
], ids=["medical-deflate-bomb", "driving-dev-zero-lidar", "assistant-3h-raw"])
def test_installed_cli_gives_one_clean_error(files, scenario, argv):
    result = run_cli(Case(f"installed-{scenario}", [a.format(d=files) for a in argv]))
    judge(scenario, result)
