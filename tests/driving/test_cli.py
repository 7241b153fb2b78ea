"""The `mmapps driving` CLI through Typer's CliRunner, the Python API and tracking."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from driving.cli import app
from mmapps.paths import data_dir

runner = CliRunner()
HAVE_MODEL = (data_dir() / "driving" / "model.pt").is_file()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="bundled driving model not trained yet")


def _lines(out):
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


@needs_model
def test_perceive_real_frame(kitti_real, tmp_path):
    r = runner.invoke(app, ["perceive", str(kitti_real / "kitti_object"), "--frame", "000001", "--out",
                            str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert res["frame"] == "000001" and res["latency_ms"] > 0
    assert res["input"].endswith("training")
    lines = (tmp_path / "000001.txt").read_text().splitlines()
    assert len(lines) == len(res["objects"])
    assert all(len(l.split()) == 16 for l in lines)
    assert (tmp_path / "000001_bev.png").stat().st_size > 10_000
    assert (tmp_path / "000001_camera.png").stat().st_size > 10_000
    # the folder has label_2: the labels are drawn (dashed, in the label green) on the camera picture
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "000001_camera.png").convert("RGB")).reshape(-1, 3)
    assert (pixels == (51, 229, 76)).all(1).sum() > 50
    for o in res["objects"]:
        assert o["class"] in ("Car", "Pedestrian", "Cyclist") and 0 < o["score"] <= 1
        assert set(o["box3d"]) == {"x", "y", "z", "l", "w", "h", "yaw"} and len(o["box2d"]) == 4


@needs_model
def test_perceive_single_files_with_oxts_gives_world(kitti_real, tmp_path):
    d = kitti_real / "kitti_object_mmdet3d_demo"
    ox = kitti_real / "kitti_raw/2011_09_26/2011_09_26_drive_0001_sync/oxts/data/0000000000.txt"
    r = runner.invoke(app, ["perceive", "--lidar", str(d / "000008.bin"), "--image", str(d / "000008.png"),
                            "--calib", str(d / "derived/calib_000008.txt"), "--oxts", str(ox), "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert res["objects"], "the reduced 000008 sweep holds six labelled cars"
    for o in res["objects"]:
        assert abs(o["world"]["lat"] - 49.015) < 0.001 and abs(o["world"]["lon"] - 8.434) < 0.002


def test_bad_bin_refused_and_nothing_written(kitti_real, tmp_path):
    bad = tmp_path / "bad/training"
    for d in ("velodyne", "image_2", "calib"):
        (bad / d).mkdir(parents=True)
    (bad / "velodyne/000000.bin").write_bytes(b"\0" * 15)
    (bad / "image_2/000000.png").write_bytes((kitti_real / "kitti_object/training/image_2/000001.png").read_bytes())
    (bad / "calib/000000.txt").write_text((kitti_real / "kitti_object/training/calib/000001.txt").read_text())
    out = tmp_path / "out"
    r = runner.invoke(app, ["perceive", str(bad), "--frame", "000000", "--out", str(out), "--json"])
    assert r.exit_code == 2
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "000000.bin" in err[0] and "multiple of 16" in err[0]
    assert not out.exists() or not any(out.iterdir())


@needs_model
def test_perceive_reads_and_detects_each_frame_once(syn_root, tmp_path, monkeypatch):
    """Several frames with --out: every frame is read from disk once and the detector runs once per frame, plus
    one untimed warm-up pass on the first frame (so latency_ms is the per-frame cost)."""
    import driving.io
    from driving.pipeline import Pipeline

    reads, forwards = [], []
    read = driving.io.read_velodyne
    forward = Pipeline._forward
    monkeypatch.setattr(driving.io, "read_velodyne", lambda path, *a, **k: reads.append(path) or read(path, *a, **k))
    monkeypatch.setattr(Pipeline, "_forward", lambda self, inputs: forwards.append(1) or forward(self, inputs))
    r = runner.invoke(app, ["perceive", str(syn_root), "--out", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert len(_lines(r.stdout)) == 3 and len(reads) == 3 and len(forwards) == 3 + 1
    assert len(list((tmp_path / "out").glob("*_camera.png"))) == 3
    assert not list((tmp_path / "out").glob(".perceive-partial-*"))


@needs_model
def test_a_bad_frame_after_good_ones_leaves_no_output(syn_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(syn_root / "training", data / "training")
    (data / "training/velodyne/000002.bin").write_bytes(b"\0" * 17)
    out = tmp_path / "out"
    r = runner.invoke(app, ["perceive", str(data), "--out", str(out), "--json"])
    assert r.exit_code == 2 and "000002.bin" in r.stderr
    assert not list(out.iterdir()) and not r.stdout.strip()


def test_classical_needs_no_checkpoint_and_threads_is_a_keyword(syn_root):
    from driving.io import load_frame
    from driving.pipeline import Pipeline

    pipe = Pipeline.classical(threads=2)
    assert pipe.model is None and pipe.threads == 2 and "threads" not in getattr(Pipeline, "__dataclass_fields__", {})
    res = pipe.perceive(load_frame(syn_root / "training", "000000"))
    assert res["method"] == "classical" and res["objects"]


def test_usage_errors(tmp_path):
    r = runner.invoke(app, ["perceive", "--json"])
    assert r.exit_code == 2 and r.stderr.startswith("error:")
    r = runner.invoke(app, ["perceive", str(tmp_path / "nope"), "--json"])
    assert r.exit_code == 2 and "not found" in r.stderr
    r = runner.invoke(app, ["evaluate", str(tmp_path), "--method", "clasical", "--json"])
    assert r.exit_code == 2


def test_synth_cli_and_classical_evaluate(tmp_path):
    r = runner.invoke(app, ["synth", str(tmp_path / "s"), "--frames", "2", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert _lines(r.stdout)[0]["frames"] == 2
    r = runner.invoke(app, ["evaluate", str(tmp_path / "s"), "--method", "classical", "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert res["frames"] == 2 and set(res["ap3d"]) == {"Car", "Pedestrian", "Cyclist"}


@needs_model
def test_evaluate_learned_with_ablations(syn_root):
    r = runner.invoke(app, ["evaluate", str(syn_root / "training"), "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert set(res["ablations"]) == {"fusion", "lidar_only", "camera_only"}
    car = res["ap3d"]["Car"]["hard"]
    assert car is not None and 0 <= car <= 1


@needs_model
def test_python_api_and_tracking(syn_root):
    from driving import Pipeline
    from driving.io import load_frame
    from driving.tracking import Tracker

    import torch

    pipe = Pipeline.from_checkpoint()
    tracker = Tracker()
    ids_per_frame = []
    threads = torch.get_num_threads()
    for fid in ("000000", "000001", "000002"):
        res = pipe.perceive(load_frame(syn_root / "training", fid), tracker)
        ids_per_frame.append({o["track_id"] for o in res["objects"]})
        assert all("world" in o and "velocity" in o for o in res["objects"])
    assert ids_per_frame[0] & ids_per_frame[2], "some objects keep their track id over the sequence"
    assert torch.get_num_threads() == threads  # single-threaded inference restores the caller's setting


def test_tracker_on_labels_compensates_ego_motion(syn_root):
    """Ground-truth boxes through the tracker: parked cars read ~0 m/s although the ego moves."""
    from driving.io import label_to_lidar_box, load_frame
    from driving.tracking import Tracker

    tracker = Tracker()
    for fid in ("000000", "000001", "000002"):
        f = load_frame(syn_root / "training", fid)
        objs = [{"class": o.type, "box3d": dict(zip("x y z l w h yaw".split(), label_to_lidar_box(o, f.calib)))}
                for o in f.labels if o.type == "Car"]
        tracker.update(f, objs)
    speeds = [o["velocity"]["speed"] for o in objs]
    assert f.oxts[8] > 0.5, "the ego should move in this sequence"
    assert min(speeds) < 0.7  # the parked cars stand still in the world
    assert len({o["track_id"] for o in objs}) == len(objs)


def test_lazy_package_import():
    import subprocess
    import sys

    code = "import sys, driving; assert 'torch' not in sys.modules; from driving import Pipeline; print(Pipeline.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "Pipeline"


@needs_model
def test_demo_hook(tmp_path):
    from driving.cli import demo

    summary = demo(tmp_path)
    assert len(summary["frames"]) == 4
    assert len(list(tmp_path.glob("*_bev.png"))) == 4 and len(list(tmp_path.glob("*.txt"))) == 4


@needs_model
def test_evaluate_workers_match_inline(syn_root):
    from driving.evaluate import evaluate_split
    from driving.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint()
    a = evaluate_split(syn_root / "training", pipe, ablations=False, workers=1)
    b = evaluate_split(syn_root / "training", pipe, ablations=False, workers=2)
    assert a["ap3d"] == b["ap3d"] and a["n_gt"] == b["n_gt"]


@pytest.mark.slow
def test_train_cli_resume_and_reload(syn_root, tmp_path):
    from driving import Pipeline

    out = tmp_path / "m.pt"
    args = ["train", str(syn_root), "--out", str(out), "--set", "train.batch_size=2", "--set", "model.width=8",
            "--fusion", "weighted", "--json"]
    r = runner.invoke(app, args + ["--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "m.metrics.jsonl").is_file()
    r = runner.invoke(app, args + ["--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert _lines(r.stdout)[0]["history"]["epoch"] == 2
    pipe = Pipeline.from_checkpoint(out)
    assert pipe.config.width == 8 and pipe.config.fusion == "weighted"
    r = runner.invoke(app, ["train", str(syn_root), "--out", str(out), "--fusion", "concatt"])
    assert r.exit_code == 2 and "did you mean 'concat'" in r.stderr


@needs_model
def test_camera_can_be_gated_off(syn_root):
    r = runner.invoke(app, ["perceive", str(syn_root), "--frame", "000000", "--modalities", "lidar", "--json"])
    assert r.exit_code == 0, r.output
    assert _lines(r.stdout)[0]["frame"] == "000000"
    r = runner.invoke(app, ["perceive", str(syn_root), "--frame", "000000", "--modalities", "lidar,radar"])
    assert r.exit_code == 2 and "--modalities must be one of" in r.stderr


@needs_model
def test_default_sensors_come_from_the_checkpoint(syn_root, tmp_path):
    """A checkpoint whose meta says "modalities": ["lidar"] gates the camera by default; --modalities overrides."""
    import torch

    from driving.io import load_frame
    from driving.pipeline import Pipeline

    bundle = torch.load(data_dir() / "driving" / "model.pt", map_location="cpu", weights_only=True)
    bundle["meta"] = {**bundle.get("meta", {}), "modalities": ["lidar"]}
    gated = tmp_path / "lidar_only.pt"
    torch.save(bundle, gated)
    frame = load_frame(syn_root / "training", "000000")
    lidar_pipe = Pipeline.from_checkpoint(gated)
    assert lidar_pipe.modalities == ("lidar",)
    assert Pipeline.from_checkpoint(gated, modalities=("lidar", "camera")).modalities == ("lidar", "camera")
    expected = [d["score"] for d in lidar_pipe.detect(frame, ("lidar",))]
    r = runner.invoke(app, ["perceive", str(syn_root), "--frame", "000000", "--model", str(gated), "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert res["modalities"] == ["lidar"]
    assert [o["score"] for o in res["objects"]] == pytest.approx(expected, abs=1e-4)
    r = runner.invoke(app, ["perceive", str(syn_root), "--frame", "000000", "--model", str(gated),
                            "--modalities", "lidar,camera", "--json"])
    assert _lines(r.stdout)[0]["modalities"] == ["lidar", "camera"]


@needs_model
def test_train_refiner_cli_adds_a_second_stage(syn_root, tmp_path):
    from driving import Pipeline

    out = tmp_path / "refined.pt"
    init = data_dir() / "driving" / "model.pt"
    r = runner.invoke(app, ["train-refiner", str(syn_root), "--init", str(init), "--out", str(out), "--epochs", "2",
                            "--json"])
    assert r.exit_code == 0, r.output
    res = _lines(r.stdout)[0]
    assert res["train_examples"] > 0 and res["history"]["epoch"] == 2
    pipe = Pipeline.from_checkpoint(out)
    assert pipe.config.refine and pipe.model.refiner is not None
    assert pipe.meta["refiner"]["first_stage"] == str(init)
    assert pipe.modalities == Pipeline.from_checkpoint(init).modalities  # the first stage's meta is kept
    r = runner.invoke(app, ["perceive", str(syn_root), "--frame", "000000", "--model", str(out), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train-refiner", str(syn_root), "--init", str(tmp_path / "none.pt"), "--out", str(out)])
    assert r.exit_code == 2 and "error:" in r.stderr and "checkpoint file not found" in r.stderr


@needs_model
def test_perceive_reads_a_0_255_intensity_cloud_as_the_same_frame(syn_root, tmp_path):
    """A cloud exported with an 8-bit intensity (nuScenes, many drivers) is detected like its KITTI original, with
    one warning line on stderr and the warning in the JSON; unscaled, the detector would see it uniformly bright."""
    import numpy as np

    from driving.io import read_velodyne, write_velodyne

    split = syn_root / "training"
    pts = read_velodyne(split / "velodyne/000000.bin")
    bright = pts.copy()
    bright[:, 3] = pts[:, 3] * 255.0
    write_velodyne(tmp_path / "000000.bin", bright)
    runs = {}
    for name, lidar in (("kitti", split / "velodyne/000000.bin"), ("bright", tmp_path / "000000.bin")):
        r = runner.invoke(app, ["perceive", "--lidar", str(lidar), "--image", str(split / "image_2/000000.png"),
                                "--calib", str(split / "calib/000000.txt"), "--json"])
        assert r.exit_code == 0, r.output
        runs[name] = (_lines(r.stdout)[0], r.stderr)
    (kitti, kitti_err), (scaled, scaled_err) = runs["kitti"], runs["bright"]
    assert kitti["warnings"] == [] and "warning" not in kitti_err
    assert len(scaled["warnings"]) == 1 and "8-bit intensity" in scaled["warnings"][0]
    assert scaled_err.count("warning: frame 000000: lidar reflectance") == 1
    assert kitti["objects"], "the synthetic frame holds labelled objects"
    assert [o["class"] for o in scaled["objects"]] == [o["class"] for o in kitti["objects"]]
    for a, b in zip(scaled["objects"], kitti["objects"]):
        assert all(abs(a["box3d"][k] - b["box3d"][k]) < 0.01 for k in a["box3d"])
