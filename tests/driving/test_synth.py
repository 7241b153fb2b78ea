"""Synthetic KITTI scenes: readable by our own loaders, deterministic, physically plausible."""
import hashlib

import numpy as np
import pytest

from driving import io
from mmapps.errors import UserError
from driving.synth import synth_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted((root / "training").rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_layout_and_contents(syn_root):
    split = io.resolve_split(syn_root)
    ids = io.list_frames(split)
    assert ids == ["000000", "000001", "000002"]
    f = io.load_frame(split, "000000")
    assert 80_000 < len(f.points) < 140_000  # HDL-64E-like sweep
    # ground returns sit ~1.73 m below the sensor (mounting height and pitch vary by a few cm / degrees)
    ground = f.points[(np.abs(f.points[:, 1]) < 2) & (f.points[:, 0] > 5) & (f.points[:, 0] < 8)]
    assert abs(np.median(ground[:, 2]) + 1.73) < 0.35
    assert 0 <= f.points[:, 3].min() and f.points[:, 3].max() < 1
    assert f.image.shape == (375, 1242, 3) and f.image.std() > 10
    assert f.oxts is not None and abs(f.oxts[0] - 49.0) < 0.1
    kinds = {o.type for fid in ids for o in io.load_frame(split, fid).labels}
    assert "Car" in kinds
    for o in f.labels:
        if o.type == "DontCare":
            continue
        assert 0 <= o.truncated <= 1 and o.occluded in (0, 1, 2)
        box = io.label_to_lidar_box(o, f.calib)
        inside = _points_in_box(f.points, box)
        assert inside >= 0  # (occluded objects may have none)


def _points_in_box(points, box):
    x, y, z, l, w, h, yaw = box
    d = points[:, :3] - [x, y, z]
    c, s = np.cos(-yaw), np.sin(-yaw)
    lx, ly = c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]
    return int(((np.abs(lx) < l / 2) & (np.abs(ly) < w / 2) & (np.abs(d[:, 2]) < h / 2)).sum())


def test_visible_objects_have_lidar_points(syn_root):
    split = io.resolve_split(syn_root)
    near = [(f, o) for f in (io.load_frame(split, fid) for fid in io.list_frames(split)) for o in f.labels
            if o.type == "Car" and o.occluded == 0 and o.z < 30 and o.truncated < 0.1]
    assert near, "the scenes should hold at least one near, fully visible car"
    for f, o in near:
        assert _points_in_box(f.points, io.label_to_lidar_box(o, f.calib)) > 10  # dark paint drops some returns


def test_same_seed_same_bytes_and_shards(tmp_path, syn_root):
    a = tmp_path / "a"
    synth_dataset(a, 3, seed=7, seq_len=3)
    assert _digest(a) == _digest(syn_root)
    b = tmp_path / "b"
    synth_dataset(b, 2, seed=8, seq_len=1, shard=(1, 2))  # only the second slice
    assert io.list_frames(b / "training") == ["000001"]
    c = tmp_path / "c"
    synth_dataset(c, 2, seed=8, seq_len=1)
    assert (c / "training/velodyne/000001.bin").read_bytes() == (b / "training/velodyne/000001.bin").read_bytes()


def test_sequence_moves_the_ego(syn_root):
    split = io.resolve_split(syn_root)
    o0 = io.load_frame(split, "000000").oxts
    o2 = io.load_frame(split, "000002").oxts
    moved = np.hypot((o2[0] - o0[0]) * 111_000, (o2[1] - o0[1]) * 111_000 * np.cos(np.radians(o0[0])))
    assert abs(moved - o0[8] * 0.2) < 0.2  # forward speed x 0.2 s, up to GPS noise


def test_clutter_adds_street_furniture_without_changing_the_rest():
    from driving.synth import make_scene

    s0, a0, i0 = make_scene(np.random.default_rng([1, 0]), 1, clutter=False)
    s1, a1, i1 = make_scene(np.random.default_rng([1, 0]), 1, clutter=True)
    assert len(s1) > len(s0) and i0 == i1
    assert [t.box.tolist() for t, _ in a0] == [t.box.tolist() for t, _ in a1[: len(a0)]]
    assert {k for _, k in a1} - {k for _, k in a0} <= {"Van", "Truck"}


def test_randomised_world():
    """Domain randomisation: the ego is not aligned with the road, cars stand at any yaw, car paint is dark."""
    from driving.synth import HDL64_ELEVATION_DEG, make_scene

    yaws, car_yaws = [], []
    for k in range(12):
        static, agents, info = make_scene(np.random.default_rng([3, k]), 1)
        yaws.append(info["yaw"])
        car_yaws += [t.box[6] for t, kind in agents if kind == "Car"]
    assert np.ptp(yaws) > 0.3 and max(abs(y) for y in yaws) <= 0.45
    off_axis = np.abs(np.sin(np.asarray(car_yaws))) > 0.35  # more than ~20 degrees off the road axis
    assert 0.2 < off_axis.mean() < 0.8
    gaps = -np.diff(HDL64_ELEVATION_DEG)
    assert len(HDL64_ELEVATION_DEG) == 64 and gaps[:31].mean() < 0.4 < gaps[32:].mean()  # the two laser blocks


def test_interrupted_synth_resumes_and_is_reported(tmp_path, syn_root):
    import json

    from typer.testing import CliRunner

    from driving.cli import app

    root = tmp_path / "s"
    synth_dataset(root, 3, seed=7, seq_len=3)
    split = root / "training"
    whole = (split / "velodyne/000002.bin").read_bytes()
    # as if killed while writing frame 2: its sweep (written last) is missing and the run is not marked complete
    (split / "velodyne/000002.bin").unlink()
    progress = split / "synth_progress.json"
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "complete": False}))
    runner = CliRunner()
    r = runner.invoke(app, ["perceive", str(root), "--frame", "000002", "--method", "classical"])
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(err) == 1 and "interrupted (2 of 3 frames complete)" in err[0]
    assert "mmapps driving synth" in err[0] and "--seed 7" in err[0]
    r = runner.invoke(app, ["evaluate", str(root), "--method", "classical", "--json"])
    assert r.exit_code == 0 and "interrupted" in r.stderr  # the complete frames are usable, with a warning
    with pytest.raises(UserError, match="other settings"):
        synth_dataset(root, 3, seed=8, seq_len=3)
    synth_dataset(root, 3, seed=7, seq_len=3)  # the same command resumes
    assert (split / "velodyne/000002.bin").read_bytes() == whole
    assert json.loads(progress.read_text())["complete"] is True
    assert _digest(root) == _digest(syn_root)


def test_bench_split_is_reused_until_the_generator_changes(tmp_path, monkeypatch):
    import json

    import driving.synth
    from driving.bench import bench_split

    monkeypatch.setenv("MMAPPS_CACHE", str(tmp_path))
    split = bench_split(2)
    sweep = split / "velodyne/000000.bin"
    stamp = sweep.stat().st_mtime_ns
    assert bench_split(2) == split and sweep.stat().st_mtime_ns == stamp  # reused, not rewritten
    monkeypatch.setattr(driving.synth, "SIM_VERSION", driving.synth.SIM_VERSION + 1)
    bench_split(2)
    assert sweep.stat().st_mtime_ns != stamp  # a new generator version regenerates
    assert json.loads((split / "synth_progress.json").read_text())["settings"]["sim_version"] == driving.synth.SIM_VERSION


def test_kitti_car_sizes_and_porous_vegetation():
    """Simulator 3: car sizes around the KITTI class mean (3.9 m, many small city cars); a hedge's lidar hits scatter
    in depth and come back less often than a wall's of the same shape."""
    from driving.synth import FOLIAGE_DEPTH, Thing, box_mesh, camera_rays, make_scene, render_frame

    lengths = np.array([t.box[3] for k in range(12) for t, kind in make_scene(np.random.default_rng([3, k]), 1)[1]
                        if kind == "Car"])
    assert 3.75 < lengths.mean() < 4.05 and (lengths < 3.5).mean() > 0.1
    info = dict(road_half=5.0, ego_y=0.0, ego_speed=0.0, span=(-40.0, 110.0), yaw=0.0, pitch=0.0, roll=0.0,
                height=1.73)
    wall = (Thing("clutter", (0.5, 0.5, 0.5)), [box_mesh(0.3, 6, 2.0, (10.0, -4.0, 1.0))])
    hedge = (Thing("vegetation", (0.2, 0.5, 0.2)), [box_mesh(0.3, 6, 2.0, (10.0, 4.0, 1.0))])
    points = render_frame([wall, hedge], [], info, 0, np.random.default_rng(0), camera_rays())[0]
    near = points[(points[:, 0] > 8) & (points[:, 0] < 14) & (points[:, 2] > -1.5)]
    w, h = near[near[:, 1] < 0], near[near[:, 1] > 0]
    assert len(w) > 100 and 0.3 * len(w) < len(h) < 0.85 * len(w)
    assert np.std(w[:, 0]) < 0.1 and np.std(h[:, 0]) > 0.5 * FOLIAGE_DEPTH


def test_two_seat_city_cars_are_drawn():
    """Simulator 4: a few Cars are two-seaters (2.4-3.0 m long); the Gaussian alone puts 0.5 % of these scenes' Cars
    in that size box."""
    from driving.scene import MICROCAR_SHARE, MICROCAR_SIZE, make_scene

    cars = np.array([t.box[3:6] for k in range(40) for t, kind in make_scene(np.random.default_rng([4, k]), 1)[1]
                     if kind == "Car"])
    (l_lo, l_hi), (w_lo, w_hi), (h_lo, h_hi) = MICROCAR_SIZE
    two_seat = (cars[:, 0] <= l_hi) & (cars[:, 1] >= w_lo) & (cars[:, 1] <= w_hi) & (cars[:, 2] >= h_lo) & \
        (cars[:, 2] <= h_hi)
    assert len(cars) > 300
    assert 0.5 * MICROCAR_SHARE < two_seat.mean() < 2.5 * MICROCAR_SHARE
    assert (cars[two_seat, 0] >= l_lo).all()
