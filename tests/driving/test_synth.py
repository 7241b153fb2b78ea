"""Synthetic KITTI scenes: readable by our own loaders, deterministic, physically plausible."""
import hashlib

import numpy as np

from driving import io
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
    # ground returns sit ~1.73 m below the sensor
    ground = f.points[(np.abs(f.points[:, 1]) < 2) & (f.points[:, 0] > 5) & (f.points[:, 0] < 8)]
    assert abs(np.median(ground[:, 2]) + 1.73) < 0.1
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
    f = io.load_frame(split, "000000")
    near = [o for o in f.labels if o.type == "Car" and o.occluded == 0 and o.z < 30 and o.truncated < 0.1]
    assert near, "the scene should hold at least one near, fully visible car"
    for o in near:
        assert _points_in_box(f.points, io.label_to_lidar_box(o, f.calib)) > 20


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
    assert {k for _, k in a1} - {k for _, k in a0} <= {"Van"}
