"""Ground-truth sampling: the bank holds real object points, pasted objects never overlap, labels follow."""
import numpy as np

from driving import io
from driving.gt_sampling import ObjectBank, points_in_box
from driving.models import DetectorConfig
from driving.preprocess import gt_boxes
from driving.train import AugmentSettings, FrameDataset, paste_objects


def test_points_in_box_respects_heading():
    box = np.array([10.0, 0.0, -1.0, 4.0, 2.0, 1.5, np.pi / 2])  # 4 m long along y
    pts = np.array([[10.0, 1.8, -1.0, 0], [11.8, 0.0, -1.0, 0], [10.0, 0.0, -0.1, 0]])
    assert points_in_box(pts, box).tolist() == [True, False, False]
    assert points_in_box(pts, box, margin=0.9).tolist() == [True, True, True]


def test_bank_and_paste_add_objects_without_overlap(syn_root):
    split, cfg = io.resolve_split(syn_root), DetectorConfig()
    ids = io.list_frames(split)
    bank = ObjectBank.from_frames(split, ids, cfg, min_points=5)
    assert len(bank) > 0 and sum(bank.counts().values()) == len(bank)
    for objs in bank.by_class.values():
        for o in objs[:20]:  # stored relative to the box centre: all inside the box at the origin
            centred = np.concatenate([o.box[:3] * 0, o.box[3:]])
            assert points_in_box(o.points, centred, margin=1e-3).all() and len(o.points) >= 5
    frame = io.load_frame(split, ids[0])
    boxes, labels = gt_boxes(frame, cfg)
    rng = np.random.default_rng(0)
    # the fixture is one 3-frame sequence: every bank object stands where a labelled one already is, so none fits
    same = bank.paste(frame.points, boxes, labels, rng, {c: 6 for c in range(3)})
    assert len(same[1]) == len(boxes) and same[0] is frame.points
    # keep only the farthest labelled object: the others' places are free now
    far = [int(np.argmax(np.hypot(boxes[:, 0], boxes[:, 1])))]
    boxes, labels = boxes[far], labels[far]
    points, nb, nl = bank.paste(frame.points, boxes, labels, rng, {c: 6 for c in range(3)})
    assert len(nb) == len(nl) > len(boxes) and np.array_equal(nb[:len(boxes)], boxes)
    for i in range(len(nb)):  # footprints never touch: centre distance beyond the two half-diagonals
        for j in range(i + 1, len(nb)):
            if i >= len(boxes) or j >= len(boxes):
                d = np.hypot(*(nb[i, :2] - nb[j, :2]))
                assert d >= 0.5 * (np.hypot(*nb[i, 3:5]) + np.hypot(*nb[j, 3:5]))
    for b in nb[len(boxes):]:
        assert points_in_box(points, b).sum() >= 5


def test_dataset_pastes_labels_that_round_trip_and_settings_validate(syn_root):
    import pytest

    from mmapps.errors import UserError

    split, cfg = io.resolve_split(syn_root), DetectorConfig()
    ids = io.list_frames(split)
    ds = FrameDataset(split, ids, cfg, augment=True, seed=0, gt_sampling={"Car": 3, "Pedestrian": 3, "Cyclist": 3})
    from dataclasses import replace

    frame = replace(io.load_frame(split, ids[0]), labels=[])  # free places (see above)
    pasted = paste_objects(frame, ds.bank, cfg, np.random.default_rng(1), ds.gt_sampling)
    before, after = gt_boxes(frame, cfg), gt_boxes(pasted, cfg)
    assert len(after[0]) > len(before[0])
    new = after[0][len(before[0]):]
    assert all(points_in_box(pasted.points, b, margin=0.05).sum() >= 5 for b in new)
    sample = ds[0]
    assert sample["targets"]["heatmap"].max() == 1.0
    assert ds.bank is not None and FrameDataset(split, ids, cfg, augment=True).bank is None  # off by default
    assert AugmentSettings(gt_cyclist=3).gt_sampling() == {"Car": 0, "Pedestrian": 0, "Cyclist": 3}
    with pytest.raises(UserError, match="augment.gt_car"):
        AugmentSettings(gt_car=-1).validate()
