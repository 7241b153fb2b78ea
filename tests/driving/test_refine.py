"""The second stage: residual coding, points in the box frame, IoU targets, learning, and the pipeline's use of it."""
import math

import numpy as np
import pytest
import torch

from driving import io
from driving.models import BEVFusionDetector, BoxRefiner, DetectorConfig
from driving.refine import (apply_residual, box_iou_3d, box_points, encode_residual, fit_refiner, iou_target,
                            proposal_targets, refine_detections, wrap_axis)

CAR = np.array([10.0, 2.0, -0.9, 4.0, 1.8, 1.5, 0.3])


def car_surface(box, n=400, seed=0):
    """Points on the two sides of a box the sensor at the origin sees (an L), plus a little road around it."""
    rng = np.random.default_rng(seed)
    l, w, h = box[3:6]
    u = np.r_[rng.uniform(-l / 2, l / 2, n // 2), np.full(n // 2, -l / 2)]
    v = np.r_[np.full(n // 2, -w / 2), rng.uniform(-w / 2, w / 2, n // 2)]
    z = rng.uniform(-h / 2, h / 2, n)
    c, s = math.cos(box[6]), math.sin(box[6])
    pts = np.c_[box[0] + c * u - s * v, box[1] + s * u + c * v, box[2] + z, np.full(n, 0.3)]
    return pts.astype(np.float32)


def test_residual_round_trip_and_axis_wrap():
    rng = np.random.default_rng(0)
    props = np.c_[rng.uniform(0, 40, (20, 3)), rng.uniform(0.5, 5, (20, 3)), rng.uniform(-3, 3, 20)]
    targets = props + np.c_[rng.normal(0, 0.4, (20, 3)), np.zeros((20, 3)), rng.normal(0, 0.3, 20)]
    targets[:, 3:6] = props[:, 3:6] * np.exp(rng.normal(0, 0.1, (20, 3)))
    back = apply_residual(props, encode_residual(props, targets))
    assert np.allclose(back[:, :6], targets[:, :6], atol=1e-9)
    assert np.allclose(wrap_axis(back[:, 6] - targets[:, 6]), 0, atol=1e-9)
    # a target that points the other way along the same axis needs no heading change
    flipped = props[:1].copy()
    flipped[0, 6] += math.pi
    assert abs(encode_residual(props[:1], flipped)[0, 6]) < 1e-9
    assert -math.pi / 2 <= float(wrap_axis(math.pi / 2)) < math.pi / 2


def test_box_iou_3d_known_values():
    assert box_iou_3d(CAR, CAR) == pytest.approx(1.0)
    shifted = CAR.copy()
    shifted[0] += 2.0 * math.cos(CAR[6])
    shifted[1] += 2.0 * math.sin(CAR[6])  # half a length along the heading: overlap 2/4, IoU 1/3
    assert box_iou_3d(CAR, shifted) == pytest.approx(1 / 3, abs=1e-6)
    lifted = CAR.copy()
    lifted[2] += CAR[5]
    assert box_iou_3d(CAR, lifted) == 0.0
    assert iou_target([0.2, 0.5, 0.8]).tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_box_points_are_in_the_box_frame():
    pts = car_surface(CAR)
    far = np.array([[40.0, -20.0, -1.0, 0.5]], np.float32)
    feats, mask = box_points(np.r_[pts, far], CAR[None], n=512)
    m = mask[0]
    assert m.sum() == len(pts)  # every surface point, not the far one
    local = feats[0, m, :3]
    assert np.abs(local[:, 0]).max() <= CAR[3] / 2 + 1e-4 and np.abs(local[:, 1]).max() <= CAR[4] / 2 + 1e-4
    # the long side lies at v = -w/2 in the box frame; the normalised copy at -1
    assert np.isclose(local[:, 1], -CAR[4] / 2, atol=1e-4).sum() >= len(pts) // 2
    assert np.isclose(feats[0, m, 4], -1.0, atol=1e-4).sum() >= len(pts) // 2
    sub, sub_mask = box_points(pts, CAR[None], n=64)
    assert sub_mask.sum() == 64
    again, _ = box_points(pts, CAR[None], n=64)
    assert np.array_equal(sub, again)  # the default draw is repeatable
    empty, empty_mask = box_points(pts[:0], CAR[None], n=64)
    assert not empty_mask.any() and not empty.any()


def test_proposal_targets_match_the_nearest_label():
    near = CAR.copy()
    near[0] += 0.3
    far = CAR.copy()
    far[1] += 10.0
    iou, res, close = proposal_targets(np.stack([near, far]), CAR[None])
    assert close.tolist() == [True, False]
    assert 0.75 < iou[0] < 1.0 and iou[1] == 0.0
    assert np.allclose(apply_residual(near[None], res[:1])[0, :6], CAR[:6])


def test_refiner_starts_as_identity_and_handles_empty_boxes():
    cfg = DetectorConfig(refine=True)
    refiner = BoxRefiner(cfg).eval()
    dets = [{"class": "Car", "score": 0.8, "box3d": CAR.astype(np.float32)},
            {"class": "Pedestrian", "score": 0.5, "box3d": np.array([30.0, -5, -1, 0.8, 0.6, 1.7, 0], np.float32)}]
    with torch.no_grad():
        out = refine_detections(refiner, car_surface(CAR), dets, cfg)
    assert len(out) == 2
    car = next(d for d in out if d["class"] == "Car")
    assert np.allclose(car["box3d"], CAR, atol=1e-5)  # zero-initialised residual layer
    assert 0 < car["score"] < 1 and all(np.isfinite(d["score"]) for d in out)


def test_refiner_learns_to_correct_shifted_boxes():
    """A small problem with one answer: proposals shifted along and across the car, the car's points tell by how
    much. After training, the refined boxes must be much closer than the proposals."""
    rng = np.random.default_rng(0)
    cfg = DetectorConfig(refine=True, refine_points=32)
    examples = {k: [] for k in ("points", "mask", "sizes", "classes", "scores", "iou", "residual", "close")}
    truths, props = [], []
    for i in range(400):
        box = CAR.copy()
        box[0], box[1], box[6] = rng.uniform(8, 30), rng.uniform(-8, 8), rng.uniform(-math.pi, math.pi)
        prop = box.copy()
        prop[:2] += rng.normal(0, 0.4, 2)
        prop[6] += rng.normal(0, 0.15)
        feats, mask = box_points(car_surface(box, 100, seed=i), prop[None], cfg.refine_points, rng)
        iou, res, close = proposal_targets(prop[None], box[None])
        for k, v in (("points", feats), ("mask", mask), ("sizes", prop[None, 3:6]), ("classes", [0]),
                     ("scores", [0.5]), ("iou", iou), ("residual", res), ("close", close)):
            examples[k].append(np.asarray(v))
        truths.append(box)
        props.append(prop)
    dtypes = {"mask": torch.bool, "classes": torch.long, "close": torch.bool}
    data = {k: torch.tensor(np.concatenate(v), dtype=dtypes.get(k, torch.float32)) for k, v in examples.items()}
    train = {k: v[:300] for k, v in data.items()}
    test = {k: v[300:] for k, v in data.items()}
    torch.manual_seed(0)
    refiner = BoxRefiner(cfg)
    fit_refiner(refiner, train, epochs=15, batch_size=32, lr=3e-3, quiet=True)
    with torch.no_grad():
        out = refiner(test["points"], test["mask"], test["sizes"], test["classes"], test["scores"])
    refined = apply_residual(np.array(props[300:]), out["residual"].double().numpy())
    truth = np.array(truths[300:])
    before = np.hypot(*(np.array(props[300:])[:, :2] - truth[:, :2]).T).mean()
    after = np.hypot(*(refined[:, :2] - truth[:, :2]).T).mean()
    assert after < 0.6 * before, (before, after)
    iou_before = np.mean([box_iou_3d(p, t) for p, t in zip(props[300:], truth)])
    iou_after = np.mean([box_iou_3d(r, t) for r, t in zip(refined, truth)])
    assert iou_after > iou_before + 0.1, (iou_before, iou_after)


def test_pipeline_uses_the_refiner_and_can_skip_it(syn_root):
    from driving.pipeline import Pipeline

    torch.manual_seed(0)
    cfg = DetectorConfig(refine=True)
    model = BEVFusionDetector(cfg).eval()
    with torch.no_grad():  # a refiner that moves every box 1 m along its heading: visible in the output
        model.refiner.residual.bias[0] = 1.0
    frame = io.load_frame(io.resolve_split(syn_root), "000000")
    pipe = Pipeline(model, cfg, device="cpu", score_thresh=0.0)
    refined = pipe.detect(frame)
    pipe.refine = False
    first = pipe.detect(frame)
    assert refined and first
    assert not any(np.allclose(r["box3d"][:2], f["box3d"][:2], atol=1e-3) for r in refined[:5] for f in first[:1])
    # camera only: the refiner, which reads lidar points, stays out
    pipe.refine = True
    camera_only = pipe.detect(frame, ("camera",))
    pipe.refine = False
    assert [d["box3d"].tolist() for d in camera_only] == [d["box3d"].tolist() for d in pipe.detect(frame, ("camera",))]
    # an older config without the key rebuilds without a second stage
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith("refine")}
    assert BEVFusionDetector(DetectorConfig.from_dict(old)).refiner is None


def test_cropping_the_sweep_before_sorting_changes_nothing(syn_root):
    """refine_detections sorts only the points near some box; the boxes must be those of the whole sweep."""
    from driving import refine
    from driving.pipeline import Pipeline

    torch.manual_seed(0)
    cfg = DetectorConfig(refine=True)
    model = BEVFusionDetector(cfg).eval()
    with torch.no_grad():
        model.refiner.residual.bias[:2] = 0.3  # boxes move between the passes
    frame = io.load_frame(io.resolve_split(syn_root), "000000")
    pipe = Pipeline(model, cfg, device="cpu", score_thresh=0.0)
    pipe.refine = False
    dets = pipe.detect(frame)[:20]
    with torch.no_grad():
        cropped = refine_detections(model.refiner, frame.points, dets, cfg)
        ordered = refine.sort_by_x(frame.points)
        whole = dets
        for k in range(cfg.refine_passes):
            whole = refine._refine_once(model.refiner, ordered, whole, cfg)
    assert len(dets) > 3 and len(cropped) == len(whole)
    assert all(np.array_equal(a["box3d"], b["box3d"]) and a["score"] == b["score"] for a, b in zip(cropped, whole))


def test_grid_pooling_puts_each_point_in_its_cell_of_the_grown_box():
    cfg = DetectorConfig(refine=True, refine_grid=(4, 2, 2))
    refiner = BoxRefiner(cfg)
    size = torch.tensor([[4.0, 2.0, 1.2]])  # grown by the margins: half extents 2.6, 1.6, 1.0
    pts = torch.zeros(1, 6, 7)
    pts[0, :, :3] = torch.tensor([[-2.5, -1.5, -0.9],  # rear, right, low corner -> cell (0, 0, 0)
                                  [2.5, 1.5, 0.9],  # front, left, high -> (3, 1, 1)
                                  [0.1, -0.1, 0.1],  # just in front of the centre -> (2, 0, 1)
                                  [-1.0, 0.5, -0.5],  # (1, 1, 0)
                                  [9.0, 9.0, 9.0],  # outside (clipped to the last cell): (3, 1, 1)
                                  [0.0, 0.0, 0.0]])  # padding
    mask = torch.tensor([[True, True, True, True, True, False]])
    cells = refiner.cell_index(pts, mask, size)[0].tolist()

    def flat(i, j, k):
        return (i * 2 + j) * 2 + k

    assert cells == [flat(0, 0, 0), flat(3, 1, 1), flat(2, 0, 1), flat(1, 1, 0), flat(3, 1, 1), 16]


def test_grid_refiner_ignores_padding_trains_and_round_trips_through_a_checkpoint(tmp_path):
    from mmapps.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = DetectorConfig(refine=True, refine_grid=(6, 4, 2))
    model = BEVFusionDetector(cfg)
    refiner = model.refiner.eval()
    feats, mask = box_points(car_surface(CAR, 60), CAR[None], 128)
    args = (torch.tensor(CAR[None, 3:6], dtype=torch.float32), torch.tensor([0]), torch.tensor([0.5]))
    garbage = torch.from_numpy(feats).clone()
    garbage[~torch.from_numpy(mask)] = 7.0  # what padding holds must not matter
    with torch.no_grad():
        a = refiner(torch.from_numpy(feats), torch.from_numpy(mask), *args)
        b = refiner(garbage, torch.from_numpy(mask), *args)
    assert torch.allclose(a["iou"], b["iou"]) and torch.allclose(a["residual"], b["residual"])
    refiner.train()
    out = refiner(torch.from_numpy(feats).repeat(4, 1, 1), torch.from_numpy(mask).repeat(4, 1),
                  *(t.repeat(4, *[1] * (t.dim() - 1)) for t in args))
    out["iou"].sum().backward()
    assert refiner.grid_cells[0].weight.grad.abs().sum() > 0  # the grid branch learns
    from driving.train import checkpoint_config

    save_checkpoint(tmp_path / "m.pt", model, checkpoint_config(cfg), {})
    cfg2 = DetectorConfig.from_dict(load_checkpoint(tmp_path / "m.pt")["config"]["model"])
    assert cfg2.refine_grid == (6, 4, 2)
    BEVFusionDetector(cfg2).load_state_dict(model.state_dict())  # strict: same tensors


def test_refine_grid_is_validated():
    from mmapps.errors import UserError

    from driving.cli import parse_grid

    assert parse_grid("6x4x2") == (6, 4, 2) and parse_grid("") == ()
    for bad in ("6x4", "0x4x2", "axbxc", "6x4x99"):
        with pytest.raises(UserError, match="--grid"):
            parse_grid(bad)
    with pytest.raises(UserError, match="refine_grid"):
        DetectorConfig(refine_grid=(6, 4)).validate()


def test_weak_boxes_skip_the_last_pass_without_changing_the_result(syn_root, monkeypatch):
    """With the caller's score floor, boxes that cannot reach it are not refined again; every box at or above the
    floor is the same as when all boxes go through every pass (the refiner sees each box on its own)."""
    from driving import refine
    from driving.pipeline import Pipeline

    pipe = Pipeline.from_checkpoint()
    frame = io.load_frame(io.resolve_split(syn_root), "000000")
    with torch.no_grad():
        proposals = pipe._proposals(pipe._forward(pipe.preprocess(frame)), frame)
    seen = []
    real_pass = refine._refine_once
    monkeypatch.setattr(refine, "_refine_once", lambda r, o, d, c: seen.append(len(d)) or real_pass(r, o, d, c))
    floor = 0.3
    everything = [d for d in refine_detections(pipe.model.refiner, frame.points, proposals, pipe.config)
                  if d["score"] >= floor]
    pruned = refine_detections(pipe.model.refiner, frame.points, proposals, pipe.config, floor)
    full_last, pruned_last = seen[pipe.config.refine_passes - 1], seen[-1]
    assert everything and pruned_last < full_last  # the floor saved work ...
    kept = [d for d in pruned if d["score"] >= floor]  # ... and changed nothing (up to float rounding of the batch)
    assert [d["class"] for d in everything] == [d["class"] for d in kept]
    np.testing.assert_allclose([d["box3d"] for d in everything], [d["box3d"] for d in kept], atol=1e-5)
    np.testing.assert_allclose([d["score"] for d in everything], [d["score"] for d in kept], atol=1e-6)
