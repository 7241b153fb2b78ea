"""KITTI readers/writers on real files and hand-made broken ones."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from driving import io
from mmapps.errors import UserError


def test_velodyne_roundtrip_and_dims(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    io.write_velodyne(tmp_path / "a.bin", pts)
    np.testing.assert_array_equal(io.read_velodyne(tmp_path / "a.bin"), pts)
    five = np.c_[pts, np.arange(100)].astype(np.float32)  # nuScenes: x y z intensity ring
    (tmp_path / "n.bin").write_bytes(five.tobytes())
    np.testing.assert_array_equal(io.read_velodyne(tmp_path / "n.bin", dims=5), pts)


@pytest.mark.parametrize("data,needle", [(b"\0" * 15, "multiple of 16"), (b"", "empty"),
                                         (np.array([[np.nan, 0, 0, 0]], np.float32).tobytes(), "NaN"),
                                         (np.array([[np.inf, 0, 0, 0]], np.float32).tobytes(), "NaN or inf")])
def test_bad_velodyne(tmp_path, data, needle):
    p = tmp_path / "bad.bin"
    p.write_bytes(data)
    with pytest.raises(UserError, match=needle) as e:
        io.read_velodyne(p)
    assert str(p) in str(e.value)


def test_real_frame_loads(kitti_real):
    split = io.resolve_split(kitti_real / "kitti_object")
    f = io.load_frame(split, "000001")
    assert f.points.shape == (120268, 4)
    assert f.image.shape == (375, 1242, 3)
    assert [o.type for o in f.labels].count("DontCare") == 4
    assert {o.type for o in f.labels} >= {"Truck", "Car", "Cyclist"}


def test_reduced_cloud_and_both_image_sizes(kitti_real):
    t = kitti_real / "kitti_object_mmdet3d_tests/training"
    assert io.read_velodyne(t / "velodyne_reduced/000000.bin").shape[1] == 4
    calib = io.read_calib(kitti_real / "kitti_object/training/calib/000001.txt")
    sizes = set()
    for name in ("000000.png", "000007.png"):
        im = io.read_image(t / "image_2" / name)
        calib.check_image(im.shape)  # both KITTI sizes fit the KITTI calibration
        sizes.add(im.shape[:2])
    assert sizes == {(370, 1224), (375, 1242)}
    with pytest.raises(UserError, match="does not fit"):
        calib.check_image((100, 3000, 3), "x.png")


def test_raw_calib_trio_matches_object_calib(kitti_real):
    raw = io.read_raw_calib(kitti_real / "kitti_raw/2011_09_26")
    obj = io.read_calib(kitti_real / "kitti_object/training/calib/000001.txt")
    np.testing.assert_allclose(raw.P2, obj.P2, atol=1e-3)  # same 2011_09_26 rig
    np.testing.assert_allclose(raw.R0, obj.R0, atol=1e-6)
    np.testing.assert_allclose(raw.V2C, obj.V2C, atol=1e-6)
    np.testing.assert_allclose(raw.I2V, obj.I2V, atol=1e-6)


def test_calib_missing_key_and_wrong_count(tmp_path, kitti_real):
    text = (kitti_real / "kitti_object/training/calib/000001.txt").read_text()
    p = tmp_path / "c.txt"
    p.write_text("\n".join(l for l in text.splitlines() if not l.startswith("R0_rect")))
    with pytest.raises(UserError, match="R0_rect is missing"):
        io.read_calib(p)
    p.write_text(text.replace("P2: 7.215377000000e+02", "P2:"))
    with pytest.raises(UserError, match="P2 has 11 values, expected 12"):
        io.read_calib(p)


def test_label_and_result_files(tmp_path, kitti_real):
    objs = io.read_label(kitti_real / "kitti_object/training/label_2/000001.txt")
    for o in objs:
        o.score = 0.5
    io.write_label(tmp_path / "r.txt", objs)
    lines = (tmp_path / "r.txt").read_text().splitlines()
    assert {len(l.split()) for l in lines} == {16}
    back = io.read_label(tmp_path / "r.txt", with_score=True)
    assert [o.type for o in back] == [o.type for o in objs] and back[0].score == 0.5
    (tmp_path / "bad.txt").write_text("Car 0 0 0 1 2 3 4 1 1 1 1 1\n")
    with pytest.raises(UserError, match="line 1 has 13 columns"):
        io.read_label(tmp_path / "bad.txt")


def test_box_conversion_roundtrip(kitti_real):
    calib = io.read_calib(kitti_real / "kitti_object/training/calib/000001.txt")
    car = [o for o in io.read_label(kitti_real / "kitti_object/training/label_2/000001.txt") if o.type == "Car"][0]
    box = io.label_to_lidar_box(car, calib)
    assert box[0] > 50  # 58 m ahead in the camera frame -> x forward in the lidar frame
    back = io.lidar_box_to_label(box, calib, "Car")
    for k in ("x", "y", "z", "h", "w", "l"):
        assert getattr(back, k) == pytest.approx(getattr(car, k), abs=1e-6)
    assert math.cos(back.ry - car.ry) == pytest.approx(1.0)
    # the projected box matches the annotated 2D box roughly (annotators draw tight boxes)
    l, t, r, b = io.project_box2d(box, calib)
    assert abs((l + r) / 2 - (car.box2d[0] + car.box2d[2]) / 2) < 10


def test_oxts_and_world_transform(kitti_real):
    pkt = io.read_oxts(kitti_real / "kitti_raw/2011_09_26/2011_09_26_drive_0001_sync/oxts/data/0000000000.txt")
    assert pkt.shape == (30,) and pkt[0] == pytest.approx(49.015003823272)
    calib = io.read_raw_calib(kitti_real / "kitti_raw/2011_09_26")
    scale = math.cos(math.radians(pkt[0]))
    T = io.oxts_pose(pkt, scale)
    # pykitti: tx = scale * lon * pi * r / 180, ty = scale * r * log(tan((90 + lat) * pi / 360))
    assert T[0, 3] == pytest.approx(scale * pkt[1] * math.pi * 6378137 / 180)
    assert T[1, 3] == pytest.approx(scale * 6378137 * math.log(math.tan((90 + pkt[0]) * math.pi / 360)))
    ll = io.lidar_to_world(np.array([[0.0, 0, 0], [100.0, 0, 0]]), pkt, calib)
    m_per_deg = 6378137 * math.pi / 180
    d0 = math.hypot((ll[0, 0] - pkt[0]) * m_per_deg, (ll[0, 1] - pkt[1]) * m_per_deg * scale)
    assert d0 < 1.5  # the lidar sits ~0.9 m from the IMU
    # 100 m straight ahead along the heading (yaw from east, counter-clockwise)
    dn = (ll[1, 0] - ll[0, 0]) * m_per_deg
    de = (ll[1, 1] - ll[0, 1]) * m_per_deg * scale
    assert math.hypot(dn, de) == pytest.approx(100, abs=1)
    assert math.atan2(dn, de) == pytest.approx(pkt[5], abs=0.03)


def test_oxts_29_fields(tmp_path, kitti_real):
    src = kitti_real / "kitti_raw/2011_09_26/2011_09_26_drive_0001_sync/oxts/data/0000000000.txt"
    p = tmp_path / "o.txt"
    p.write_text(" ".join(src.read_text().split()[:29]))
    with pytest.raises(UserError, match="29 fields, expected 30"):
        io.read_oxts(p)


def test_missing_image_in_folder(tmp_path, syn_root):
    import shutil

    split = tmp_path / "training"
    shutil.copytree(syn_root / "training", split)
    (split / "image_2" / "000000.png").unlink()
    with pytest.raises(UserError, match="image not found"):
        io.load_frame(split, "000000")


_fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(st.binary(max_size=200))
def test_fuzz_velodyne(tmp_path, data):
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    try:
        pts = io.read_velodyne(p)
        assert pts.shape[1] == 4 and np.isfinite(pts).all()
    except UserError:
        pass


@_fuzz
@given(st.data())
def test_fuzz_text_formats(tmp_path, kitti_real, data):
    """Mutated calib / label / oxts files: parse or refuse with UserError, nothing else."""
    files = {"calib": (kitti_real / "kitti_object/training/calib/000001.txt", io.read_calib),
             "label": (kitti_real / "kitti_object/training/label_2/000001.txt", io.read_label),
             "oxts": (kitti_real / "kitti_raw/2011_09_26/2011_09_26_drive_0001_sync/oxts/data/0000000000.txt",
                      io.read_oxts)}
    kind = data.draw(st.sampled_from(sorted(files)))
    src, reader = files[kind]
    raw = bytearray(src.read_bytes())
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:pos + data.draw(st.integers(1, 40))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    p = tmp_path / f"m_{kind}.txt"
    p.write_bytes(bytes(raw))
    try:
        reader(p)
    except UserError:
        pass


def test_unit_reflectance_reads_8_and_16_bit_intensities_as_kitti_reflectance():
    from driving.io import unit_reflectance

    rng = np.random.default_rng(0)
    kitti = np.c_[rng.normal(size=(500, 3)), rng.uniform(0, 1, 500)].astype(np.float32)
    same, note = unit_reflectance(kitti)
    assert same is kitti and note is None  # already in [0, 1]: untouched, no copy
    for scale, word in ((255.0, "8-bit"), (65535.0, "16-bit")):
        raw = kitti.copy()
        raw[:, 3] = np.round(kitti[:, 3] * scale)
        out, note = unit_reflectance(raw)
        assert word in note and f"{scale:g}" in note
        assert np.abs(out[:, 3] - kitti[:, 3]).max() <= 0.5 / scale + 1e-6
        assert np.array_equal(out[:, :3], kitti[:, :3]) and raw[:, 3].max() > 1  # the input is not changed
    odd = kitti.copy()
    odd[:, 3] *= 1.5  # neither scale: divided by its maximum
    out, note = unit_reflectance(odd)
    assert "unknown scale" in note and np.isclose(out[:, 3].max(), 1.0)
    dark = kitti.copy()
    dark[:, 3] = 0.0  # a sensor without intensity: kept, and said
    out, note = unit_reflectance(dark)
    assert out is dark and "0 for every point" in note
