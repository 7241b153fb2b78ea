"""Detector contract: shapes, loss, ablations, target encoding/decoding, flip consistency, classical."""
import numpy as np
import pytest
import torch

from driving import io
from driving.boxes import decode, rotated_nms
from driving.classical import classical_detect
from driving.models import BEVFusionDetector, DetectorConfig
from driving.preprocess import augmentation, gt_boxes, lidar_bev, make_sample, transform_boxes
from driving.train import FrameDataset
from mmapps.data import collate_samples


@pytest.fixture(scope="module")
def frame(syn_root):
    return io.load_frame(io.resolve_split(syn_root), "000000")


def test_forward_backward_and_missing_modalities(frame):
    cfg = DetectorConfig()
    torch.manual_seed(0)
    model = BEVFusionDetector(cfg)
    T = augmentation(np.random.default_rng(0))
    batch = collate_samples([make_sample(frame, cfg, targets=True), make_sample(frame, cfg, targets=True, transform=T)])
    out = model(batch)
    assert out["heatmap"].shape == (2, 3, cfg.nx // 2, cfg.ny // 2)
    assert out["regression"].shape == (2, 9, cfg.nx // 2, cfg.ny // 2)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    for present in ({"lidar": [True, False], "camera": [False, True]}, {"lidar": [False, False], "camera": [True, True]}):
        b = {**batch, "present": {k: torch.tensor(v) for k, v in present.items()}}
        o = model(b)
        assert torch.isfinite(o["heatmap"]).all()
        assert set(o["weights"]) == {"lidar", "camera"}
    # masking the camera changes the output (it is used), masking nothing reproduces it
    full = model(batch)["heatmap"]
    no_cam = model({**batch, "present": {"lidar": torch.tensor([True, True]), "camera": torch.tensor([False, False])}})["heatmap"]
    assert not torch.allclose(full, no_cam)


def test_skipping_an_absent_camera_changes_nothing(frame):
    """With no sample seeing the camera, eval skips the camera branch: a sample's outputs equal those it gets in a
    batch where the branch runs for a neighbour and is masked out for it; and a blank image (camera=False) too."""
    cfg = DetectorConfig()
    torch.manual_seed(1)
    model = BEVFusionDetector(cfg).eval()
    lidar_only = collate_samples([make_sample(frame, cfg, camera=False)])
    both = collate_samples([make_sample(frame, cfg), make_sample(frame, cfg)])
    with torch.no_grad():
        skipped = model({**lidar_only, "present": {"lidar": torch.tensor([True]), "camera": torch.tensor([False])}})
        ran = model({**both, "present": {"lidar": torch.tensor([True, True]), "camera": torch.tensor([True, False])}})
    for key in ("heatmap", "regression"):
        assert torch.allclose(skipped[key][0], ran[key][1], atol=1e-5)
        assert not torch.allclose(ran[key][0], ran[key][1], atol=1e-5)  # the camera does change a sample that sees it


def test_no_absolute_position_input():
    """Without coordinate channels the network is translation-equivariant in BEV: the same object two cells
    further right gives the same heatmap peak two cells further right."""
    cfg = DetectorConfig(coords=False)
    torch.manual_seed(0)
    model = BEVFusionDetector(cfg).eval()
    lidar = torch.zeros(1, cfg.lidar_channels, cfg.nx, cfg.ny)
    lidar[0, :, 60:70, 80:84] = 1.0
    moved = torch.roll(lidar, shifts=(0, 8), dims=(2, 3))
    base = {"camera": torch.zeros(1, 3, *cfg.image_size), "proj": torch.zeros(1, 3, 4),
            "present": {"lidar": torch.tensor([True]), "camera": torch.tensor([False])}}
    with torch.no_grad():
        a = model({**base, "lidar": lidar})["heatmap"][0, :, 20:45, 30:50]
        b = model({**base, "lidar": moved})["heatmap"][0, :, 20:45, 34:54]
    assert torch.allclose(a, b, atol=1e-5)


def test_targets_decode_back_to_the_labels(frame):
    cfg = DetectorConfig()
    s = make_sample(frame, cfg, targets=True, transform=augmentation(np.random.default_rng(3)))
    t = s["targets"]
    boxes, cls = gt_boxes(frame, cfg)
    boxes = transform_boxes(boxes, augmentation(np.random.default_rng(3)))
    in_grid = (boxes[:, 0] >= 0) & (boxes[:, 0] < 70.4) & (np.abs(boxes[:, 1]) < 40)
    assert t["mask"].sum() == in_grid.sum()
    logit = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))[None]
    dets = decode({"heatmap": logit, "regression": t["regression"][None], "ground": s["ground"][None]}, cfg, 0.5, 100)[0]
    assert len(dets) == in_grid.sum()
    for b in boxes[in_grid]:
        best = min(dets, key=lambda d: np.hypot(*(d["box3d"][:2] - b[:2])))
        np.testing.assert_allclose(best["box3d"][:6], b[:6], atol=1e-4)
        assert np.cos(best["box3d"][6] - b[6]) == pytest.approx(1, abs=1e-5)  # the full heading, not only its axis


def test_augmentation_keeps_camera_geometry_and_boxes(frame):
    """After the transform a lidar point still projects onto the same pixel, and each box keeps its points."""
    cfg = DetectorConfig()
    T = augmentation(np.random.default_rng(1))
    s, f = make_sample(frame, cfg), make_sample(frame, cfg, transform=T)
    p = np.array([20.0, 3.0, -1.0, 1.0])
    a = s["proj"] @ torch.tensor(p, dtype=torch.float32)
    b = f["proj"] @ torch.tensor(T @ p, dtype=torch.float32)
    assert (a[:2] / a[2]).numpy() == pytest.approx((b[:2] / b[2]).numpy(), abs=1e-4)
    boxes, _ = gt_boxes(frame, cfg)
    moved = transform_boxes(boxes, T)
    pts = frame.points.copy()
    pts[:, :3] = pts[:, :3] @ T[:3, :3].T + T[:3, 3]
    for b0, b1 in zip(boxes, moved):
        n0, n1 = _inside(frame.points, b0), _inside(pts, b1)
        assert abs(n0 - n1) <= max(2, 0.002 * n0)  # float32 points on the faces may fall either way


def _inside(points, box):
    x, y, z, l, w, h, yaw = box
    d = points[:, :3] - [x, y, z]
    c, s = np.cos(-yaw), np.sin(-yaw)
    lx, ly = c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]
    return int(((np.abs(lx) < l / 2 - 1e-3) & (np.abs(ly) < w / 2 - 1e-3) & (np.abs(d[:, 2]) < h / 2 - 1e-3)).sum())


def test_lidar_bev_counts_points():
    cfg = DetectorConfig(ground_relative=False, slices=(-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0))
    pts = np.array([[10.1, 0.1, -1.0, 0.5], [10.2, 0.15, 0.2, 0.7], [-5, 0, 0, 0.1]], np.float32)
    bev, ground = lidar_bev(pts, cfg)
    ix, iy = int(10.1 / cfg.cell), int((0.1 + 40) / cfg.cell)
    assert ground is None and bev[0].sum() > 0 and bev[0, ix, iy] == pytest.approx(np.log1p(2) / np.log(64))
    assert bev[3, ix, iy] == pytest.approx(0.6)
    assert bev[4:, ix, iy].sum() == 2  # two height slices occupied


def test_heights_are_relative_to_the_local_ground(frame):
    """Lifting the whole sweep by 0.4 m (another mounting height or a slope) leaves the features unchanged."""
    cfg = DetectorConfig()
    pts = frame.points[(frame.points[:, 2] > -2.5) & (frame.points[:, 2] < 0.5)]
    up = pts + np.array([0, 0, 0.4, 0], np.float32)
    (a, ga), (b, gb) = lidar_bev(pts, cfg), lidar_bev(up, cfg)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(gb - ga, torch.full_like(ga, 0.4), atol=1e-4)


def test_rotated_nms_keeps_separate_boxes():
    a = {"class": "Car", "score": 0.9, "box3d": np.array([10, 0, -1, 4, 2, 1.5, 0.0])}
    b = {"class": "Car", "score": 0.8, "box3d": np.array([10.3, 0.1, -1, 4, 2, 1.5, 0.1])}
    c = {"class": "Car", "score": 0.7, "box3d": np.array([10, 5, -1, 4, 2, 1.5, 0.0])}
    kept = rotated_nms([b, c, a])
    assert [k["score"] for k in kept] == [0.9, 0.7]


def test_nms_across_classes():
    car = {"class": "Car", "score": 0.9, "box3d": np.array([10, 0, -1, 4, 1.8, 1.5, 0.3])}
    ped_inside = {"class": "Pedestrian", "score": 0.6, "box3d": np.array([10.5, 0.2, -1, 0.8, 0.6, 1.7, 0.0])}
    ped_beside = {"class": "Pedestrian", "score": 0.5, "box3d": np.array([10, 1.6, -1, 0.8, 0.6, 1.7, 0.3])}
    kept = rotated_nms([ped_inside, car, ped_beside])
    assert [k["score"] for k in kept] == [0.9, 0.5]  # the Pedestrian on the parked car goes, the one beside stays
    # a stronger Pedestrian wins over a weak Car box around it (highest score first, whatever the class)
    weak_car = dict(car, score=0.4)
    assert [k["class"] for k in rotated_nms([weak_car, ped_inside])] == ["Pedestrian"]
    # proposals for the refiner keep both hypotheses of a place; same-class duplicates still go
    kept = rotated_nms([weak_car, ped_inside, dict(car, score=0.3)], cross_class_overlap=float("inf"))
    assert sorted(k["class"] for k in kept) == ["Car", "Pedestrian"]


def test_nms_circle_precheck_drops_no_overlapping_pair():
    """The vectorised circumscribed-circle test only skips pairs that cannot overlap: the result equals a greedy NMS
    that clips every pair."""
    import math

    from driving.geometry import rotated_intersection

    def every_pair(dets, cross):
        kept = []
        for d in sorted(dets, key=lambda d: -d["score"]):
            b = d["box3d"]
            for k in kept:
                kb = k["box3d"]
                inter = rotated_intersection((b[0], b[1], b[3], b[4], b[6]), (kb[0], kb[1], kb[3], kb[4], kb[6]))
                a, ka = b[3] * b[4], kb[3] * kb[4]
                if (inter / (a + ka - inter) > 0.1) if k["class"] == d["class"] else (inter / min(a, ka) > cross):
                    break
            else:
                kept.append(d)
        return kept

    rng = np.random.default_rng(7)
    for _ in range(60):
        dets = [{"class": str(rng.choice(["Car", "Pedestrian", "Cyclist"])), "score": float(rng.random()),
                 "box3d": np.array([rng.uniform(0, 30), rng.uniform(-10, 10), -1, rng.uniform(0.5, 5),
                                    rng.uniform(0.5, 2), 1.5, rng.uniform(-3, 3)])} for _ in range(int(rng.integers(0, 60)))]
        for cross in (0.5, math.inf):
            assert [id(d) for d in rotated_nms(dets, cross_class_overlap=cross)] == \
                [id(d) for d in every_pair(dets, cross)]


def test_classical_finds_cars(frame):
    dets = classical_detect(frame.points)
    boxes, cls = gt_boxes(frame, DetectorConfig())
    cars = boxes[(cls == 0) & (boxes[:, 0] < 25)]
    found = sum(any(d["class"] == "Car" and np.hypot(*(d["box3d"][:2] - b[:2])) < 1.5 for d in dets) for b in cars)
    assert found >= 1


def test_dataset_augments_on_the_fly(syn_root):
    ds = FrameDataset(io.resolve_split(syn_root), ["000000"], DetectorConfig(), augment=True, seed=0)
    a, b = ds[0], ds[0]
    assert not torch.equal(a["lidar"], b["lidar"]) and a["lidar"].dtype == torch.float32  # a new draw each time
    assert a["targets"]["mask"].sum() > 0
    again = FrameDataset(io.resolve_split(syn_root), ["000000"], DetectorConfig(), augment=True, seed=0)
    assert torch.equal(again[0]["lidar"], a["lidar"])  # same seed, same augmentations


def test_warm_start_copies_matching_and_slices_changed_tensors(tmp_path):
    import torch as th

    from driving.train import checkpoint_config, warm_start
    from mmapps.checkpoint import save_checkpoint

    # a checkpoint of the first bundled model's shape: coordinate channels, sin/cos heading (8 regression outputs)
    old_cfg = DetectorConfig(coords=True, heading="sincos")
    th.manual_seed(1)
    save_checkpoint(tmp_path / "old.pt", BEVFusionDetector(old_cfg), checkpoint_config(old_cfg), {})
    model = BEVFusionDetector(DetectorConfig())
    counts = warm_start(model, tmp_path / "old.pt")
    old = th.load(tmp_path / "old.pt", weights_only=True)["state_dict"]
    assert counts["sliced"] >= 2 and counts["copied"] > 50
    assert th.equal(model.state_dict()["camera.cnn.0.0.weight"], old["camera.cnn.0.0.weight"])
    w = model.state_dict()["b2.0.weight"]  # lost the two coordinate input channels
    assert w.shape[1] == old["b2.0.weight"].shape[1] - 2 and th.equal(w, old["b2.0.weight"][:, : w.shape[1]])


def test_separable_ground_pool_equals_the_square_pool():
    import torch as th
    import torch.nn.functional as F

    from driving.preprocess import _max_pool_separable

    th.manual_seed(0)
    x = th.randn(1, 1, 40, 50)
    x[0, 0, ::7, ::5] = float("-inf")  # empty cells, as the ground map has them
    for k in (1, 3, 9, 27):
        assert th.equal(_max_pool_separable(x, k), F.max_pool2d(x, k, 1, k // 2))
