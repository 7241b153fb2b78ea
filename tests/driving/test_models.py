"""Detector contract: shapes, loss, ablations, target encoding/decoding, flip consistency, classical."""
import numpy as np
import pytest
import torch

from driving import io
from driving.boxes import decode, encode_targets, rotated_nms
from driving.classical import classical_detect
from driving.models import BEVFusionDetector, DetectorConfig
from driving.preprocess import gt_boxes, lidar_bev, make_sample
from driving.train import FrameDataset
from mmapps.data import collate_samples


@pytest.fixture(scope="module")
def frame(syn_root):
    return io.load_frame(io.resolve_split(syn_root), "000000")


def test_forward_backward_and_missing_modalities(frame):
    cfg = DetectorConfig()
    torch.manual_seed(0)
    model = BEVFusionDetector(cfg)
    batch = collate_samples([make_sample(frame, cfg, targets=True), make_sample(frame, cfg, targets=True, flip=True)])
    out = model(batch)
    assert out["heatmap"].shape == (2, 3, cfg.nx // 2, cfg.ny // 2)
    assert out["regression"].shape == (2, 8, cfg.nx // 2, cfg.ny // 2)
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


def test_targets_decode_back_to_the_labels(frame):
    cfg = DetectorConfig()
    boxes, cls = gt_boxes(frame, cfg)
    in_grid = (boxes[:, 0] > 0) & (boxes[:, 0] < 70) & (np.abs(boxes[:, 1]) < 40)
    t = encode_targets(boxes, cls, cfg)
    assert t["mask"].sum() == in_grid.sum()
    logit = torch.logit(t["heatmap"].clamp(1e-4, 1 - 1e-4))[None]
    dets = decode({"heatmap": logit, "regression": t["regression"][None]}, cfg, 0.5, 100)[0]
    assert len(dets) == in_grid.sum()
    for b in boxes[in_grid]:
        best = min(dets, key=lambda d: np.hypot(*(d["box3d"][:2] - b[:2])))
        np.testing.assert_allclose(best["box3d"][:6], b[:6], atol=1e-4)
        assert np.cos(best["box3d"][6] - b[6]) == pytest.approx(1, abs=1e-5)


def test_flip_keeps_camera_geometry(frame):
    """After the flip augmentation a lidar point still projects onto the same (mirrored) image pixel."""
    cfg = DetectorConfig()
    s, f = make_sample(frame, cfg), make_sample(frame, cfg, flip=True)
    p = torch.tensor([20.0, 3.0, -1.0, 1.0])
    pf = torch.tensor([20.0, -3.0, -1.0, 1.0])
    a = s["proj"] @ p
    b = f["proj"] @ pf
    assert (a[0] / a[2]).item() == pytest.approx(-(b[0] / b[2]).item(), abs=1e-5)
    assert (a[1] / a[2]).item() == pytest.approx((b[1] / b[2]).item(), abs=1e-5)
    same = (f["lidar"] == torch.flip(s["lidar"], dims=[2])).float().mean()
    assert same > 0.99  # the BEV grid is symmetric in y: cells mirror onto cells


def test_lidar_bev_counts_points():
    cfg = DetectorConfig()
    pts = np.array([[10.1, 0.1, -1.0, 0.5], [10.2, 0.15, 0.2, 0.7], [-5, 0, 0, 0.1]], np.float32)
    bev = lidar_bev(pts, cfg)
    ix, iy = int(10.1 / cfg.cell), int((0.1 + 40) / cfg.cell)
    assert bev[0].sum() > 0 and bev[0, ix, iy] == pytest.approx(np.log1p(2) / np.log(64))
    assert bev[3, ix, iy] == pytest.approx(0.6)
    assert bev[4:, ix, iy].sum() == 2  # two height slices occupied


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


def test_classical_finds_cars(frame):
    dets = classical_detect(frame.points)
    boxes, cls = gt_boxes(frame, DetectorConfig())
    cars = boxes[(cls == 0) & (boxes[:, 0] < 25)]
    found = sum(any(d["class"] == "Car" and np.hypot(*(d["box3d"][:2] - b[:2])) < 1.5 for d in dets) for b in cars)
    assert found >= 1


def test_dataset_caches_and_returns_targets(syn_root):
    ds = FrameDataset(io.resolve_split(syn_root), ["000000"], DetectorConfig())
    a, b = ds[0], ds[0]
    assert torch.equal(a["lidar"], b["lidar"]) and a["lidar"].dtype == torch.float32
    assert a["targets"]["mask"].sum() > 0
