"""Hostile inputs for `mmapps driving`: every one must end in exit 2 with one `error:` line (see harness.py)."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np

from . import hostile as H
from .conftest import hostile_suite
from .harness import ROOT, Case

SAMPLES = ROOT / "data" / "driving" / "samples" / "training"
MODEL = ROOT / "data" / "driving" / "model.pt"
FRAME = "000000"


def _kitti_copy(dst: Path, frames=(FRAME,)) -> Path:
    """A small KITTI split (symlinks to the bundled sample frames) that a case then damages."""
    for sub, ext in (("velodyne", "bin"), ("image_2", "png"), ("calib", "txt"), ("label_2", "txt"), ("oxts", "txt")):
        (dst / "training" / sub).mkdir(parents=True, exist_ok=True)
        for f in frames:
            os.symlink(SAMPLES / sub / f"{f}.{ext}", dst / "training" / sub / f"{f}.{ext}")
    return dst


def _replace(root: Path, sub: str, name: str, make) -> None:
    p = root / "training" / sub / name
    p.unlink()
    make(p)


def make_files(d: Path) -> None:
    calib = SAMPLES / "calib" / f"{FRAME}.txt"
    H.fifo(d / "fifo.bin")
    H.dev_zero_link(d / "zero.bin")
    H.dev_zero_link(d / "zero.txt")
    H.dev_zero_link(d / "zero.png")
    H.fifo(d / "fifo.txt")
    H.sparse_file(d / "huge.bin", 16 * 12_000_000)
    H.png_bomb(d / "mp99.png", 10000, 9900)
    H.png_bomb(d / "mp192.png", 16000, 12000, full=False)
    H.write(d / "not_png.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    pts = np.fromfile(SAMPLES / "velodyne" / f"{FRAME}.bin", dtype="<f4").reshape(-1, 4)
    pts[: len(pts) // 5 * 5].tofile(d / "kitti_div5.bin")  # 4 values per point, size also a multiple of 20
    H.write(d / "nan.bin", np.full((100, 4), np.nan, dtype="<f4").tobytes())
    text = calib.read_text()
    H.write(d / "calib_ff.txt", H.bad_utf8(text, 10))
    H.write(d / "calib_missing.txt", "\n".join(l for l in text.splitlines() if not l.startswith("P2")))
    H.write(d / "calib_nan.txt", "\n".join("P2: nan" + l[l.index(" ", 4):] if l.startswith("P2:") else l
                                           for l in text.splitlines()) + "\n")
    H.write(d / "file_not_dir", "x")
    H.write(d / "bad.toml", H.bad_utf8("[train]\nepochs = 1\n", 3))
    # folders
    _replace(_kitti_copy(d / "fifo_label"), "label_2", f"{FRAME}.txt", H.fifo)
    _replace(_kitti_copy(d / "zero_label"), "label_2", f"{FRAME}.txt", H.dev_zero_link)
    _replace(_kitti_copy(d / "ff_label"), "label_2", f"{FRAME}.txt",
             lambda p: H.write(p, H.bad_utf8((SAMPLES / "label_2" / f"{FRAME}.txt").read_text(), 3)))
    _replace(_kitti_copy(d / "fifo_oxts"), "oxts", f"{FRAME}.txt", H.fifo)
    _replace(_kitti_copy(d / "bomb_image"), "image_2", f"{FRAME}.png", lambda p: shutil.copy(d / "mp192.png", p))
    _replace(_kitti_copy(d / "no_calib"), "calib", f"{FRAME}.txt", lambda p: None)
    _kitti_copy(d / "good")
    _kitti_copy(d / "good4", ("000000", "000001", "000002", "000003"))
    H.foreign_resume_state(d / "resumed.pt", "driving")
    # checkpoints
    def model_config(**kw):
        return lambda b: b["config"]["model"].update(kw)

    edits = {
        "ck_model_str": lambda b: b["config"].__setitem__("model", "gated"),
        "ck_image_huge": model_config(image_size=[20000, 20000]),
        "ck_range_huge": model_config(x_range=[0.0, 100000.0], y_range=[-100000.0, 100000.0]),
        "ck_cell_zero": model_config(cell=0.0),
        "ck_width_neg": model_config(width=-4),
        "ck_width_huge": model_config(width=100000),
        "ck_fusion": model_config(fusion="concatt"),
        "ck_classes_int": model_config(classes=5),
        "ck_stride_str": model_config(stride="two"),
        "ck_nan": lambda b: next(v for v in b["state_dict"].values() if v.is_floating_point()).fill_(math.nan),
    }
    for name, edit in edits.items():
        H.tampered_checkpoint(MODEL, d / f"{name}.pt", edit)


def cases(d: Path) -> list[Case]:
    lidar, image, calib = (str(SAMPLES / s / f"{FRAME}.{e}") for s, e in
                           (("velodyne", "bin"), ("image_2", "png"), ("calib", "txt")))
    p = ["driving", "perceive"]

    def single(lid=lidar, img=image, cal=calib, *extra):
        return p + ["--lidar", lid, "--image", img, "--calib", cal, *extra]

    c = [
        Case("lidar_fifo", single(f"{d}/fifo.bin"), category="special file"),
        Case("lidar_dev_zero", single(f"{d}/zero.bin"), category="special file"),
        Case("calib_dev_zero", single(lidar, image, f"{d}/zero.txt"), category="special file"),
        Case("calib_fifo", single(lidar, image, f"{d}/fifo.txt"), category="special file"),
        Case("image_dev_zero", single(lidar, f"{d}/zero.png"), category="special file"),
        Case("oxts_dev_zero", single(lidar, image, calib, "--oxts", f"{d}/zero.txt"), category="special file"),
        Case("lidar_12M_points", single(f"{d}/huge.bin"), category="budget", expect="at most 10,000,000 points"),
        Case("png_99_megapixels", single(lidar, f"{d}/mp99.png"), category="budget", expect="pixel limit"),
        Case("png_192_megapixels", single(lidar, f"{d}/mp192.png"), category="budget", expect="pixel limit"),
        Case("png_garbage", single(lidar, f"{d}/not_png.png"), category="format"),
        Case("lidar_nan", single(f"{d}/nan.bin"), category="format"),
        Case("point_dims_5_on_kitti", single(f"{d}/kitti_div5.bin", image, calib, "--point-dims", "5"), category="option",
             expect="--point-dims 5 does not fit"),
        Case("point_dims_3", single(lidar, image, calib, "--point-dims", "3"), category="option"),
        Case("calib_0xff", single(lidar, image, f"{d}/calib_ff.txt"), category="text"),
        Case("calib_missing_P2", single(lidar, image, f"{d}/calib_missing.txt"), category="format"),
        Case("calib_nan", single(lidar, image, f"{d}/calib_nan.txt"), category="format"),
        Case("bomb_image_in_folder", p + [f"{d}/bomb_image", "--out", f"{d}/out_bomb"], [f"{d}/out_bomb/{FRAME}.txt"],
             category="budget"),
        Case("fifo_oxts_in_folder", p + [f"{d}/fifo_oxts"], category="special file"),
        Case("missing_calib_in_folder", p + [f"{d}/no_calib"], category="format", expect="frame 000000 is incomplete"),
        Case("out_is_file", p + [f"{d}/good", "--out", f"{d}/file_not_dir"], category="output"),
        Case("out_inside_file", p + [f"{d}/good", "--out", f"{d}/file_not_dir/sub"], category="output"),
        Case("evaluate_fifo_label", ["driving", "evaluate", f"{d}/fifo_label", "--no-ablations"], category="special file"),
        Case("evaluate_dev_zero_label", ["driving", "evaluate", f"{d}/zero_label", "--no-ablations"],
             category="special file"),
        Case("evaluate_label_0xff", ["driving", "evaluate", f"{d}/ff_label", "--no-ablations"], category="text"),
        Case("evaluate_limit_0", ["driving", "evaluate", f"{d}/good", "--limit", "0"], category="option"),
        Case("evaluate_limit_negative", ["driving", "evaluate", f"{d}/good", "--limit", "-2"], category="option"),
        Case("train_out_inside_file", ["driving", "train", f"{d}/good", "--out", f"{d}/file_not_dir/m.pt"],
             category="output"),
        Case("resume_other_architecture", ["driving", "train", f"{d}/good4", "--out", f"{d}/resumed.pt", "--resume",
                                           "--epochs", "2"], [f"{d}/resumed.pt"], category="config",
             expect=r"--resume: .*saved by a different model architecture .*missing"),
        Case("train_lr_nan", ["driving", "train", f"{d}/good", "--out", f"{d}/m1.pt", "--set", "train.lr=nan"],
             [f"{d}/m1.pt"], category="config"),
        Case("train_width_negative", ["driving", "train", f"{d}/good", "--out", f"{d}/m2.pt", "--set", "model.width=-4"],
             [f"{d}/m2.pt"], category="config"),
        Case("train_config_0xff", ["driving", "train", f"{d}/good", "--out", f"{d}/m3.pt", "--config", f"{d}/bad.toml"],
             [f"{d}/m3.pt"], category="config"),
        Case("synth_out_is_file", ["driving", "synth", f"{d}/file_not_dir", "--frames", "1"], category="output"),
    ]
    c += [
        Case("shard_out_of_range", ["driving", "evaluate", f"{d}/good", "--shard", "2/2"], category="option"),
        Case("workers_zero", ["driving", "evaluate", f"{d}/good", "--workers", "0"], category="option"),
        Case("device_unknown", single(lidar, image, calib, "--device", "tpu"), category="option"),
        Case("model_fifo", single(lidar, image, calib, "--model", f"{d}/fifo.bin"), category="special file"),
        Case("model_dev_zero", single(lidar, image, calib, "--model", f"{d}/zero.bin"), category="special file"),
    ]
    ck = ["ck_model_str", "ck_image_huge", "ck_range_huge", "ck_cell_zero", "ck_width_neg", "ck_width_huge",
          "ck_fusion", "ck_classes_int", "ck_stride_str", "ck_nan"]
    c += [Case(n, single() + ["--model", f"{d}/{n}.pt"], category="checkpoint") for n in ck]
    return c


PENDING: dict[str, str] = {}
results, test_driving_hostile_input_is_one_clean_error = hostile_suite("driving", make_files, cases, PENDING)
