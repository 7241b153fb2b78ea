"""The KITTI evaluator on hand-made cases with known answers."""
import copy
import math

import numpy as np
import pytest

from driving.evaluate import (bev_corners, clip_polygon, iou_3d, iou_bev, kitti_ap, polygon_area,
                              recall_within)
from driving.io import Object3D


def obj(cls="Car", x=0.0, z=20.0, ry=0.0, l=4.0, w=2.0, h=1.5, y=1.6, box2d=(100, 100, 200, 160), occ=0,
        trunc=0.0, score=None):
    return Object3D(cls, trunc, occ, 0.0, box2d, h, w, l, x, y, z, ry, score)


def det(o, score=0.9, **kw):
    d = copy.deepcopy(o)
    d.score = score
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_polygon_clipping_known_areas():
    a = bev_corners(0, 0, 2, 2, 0)
    assert polygon_area(a) == pytest.approx(4)
    b = bev_corners(1, 1, 2, 2, 0)
    assert abs(polygon_area(clip_polygon(a, b))) == pytest.approx(1)
    # a square rotated 45 degrees inside a bigger one: full containment
    c = bev_corners(0, 0, 1, 1, math.pi / 4)
    assert abs(polygon_area(clip_polygon(c, bev_corners(0, 0, 4, 4, 0)))) == pytest.approx(1)
    assert len(clip_polygon(a, bev_corners(10, 10, 1, 1, 0))) == 0


def test_iou_shifted_rotated_and_height():
    a = obj()
    assert iou_bev(a, a) == pytest.approx(1) and iou_3d(a, a) == pytest.approx(1)
    b = det(a, x=1.0)  # ry=0: length along camera x; 1 m shift -> 3x2 overlap
    assert iou_bev(a, b) == pytest.approx(6 / 10)
    c = det(a, ry=math.pi / 2)  # crossed: 2x2 overlap
    assert iou_bev(a, c) == pytest.approx(4 / 12)
    d = det(a, y=a.y - 0.75)  # half the height overlaps
    inter = 8 * 0.75
    assert iou_bev(a, d) == pytest.approx(1)
    assert iou_3d(a, d) == pytest.approx(inter / (2 * 12 - inter))
    assert iou_bev(a, det(a, ry=a.ry + math.pi)) == pytest.approx(1)  # heading flip: same footprint


def test_perfect_detections_give_ap_one():
    gts = [[obj(x=-5), obj("Pedestrian", x=3, l=0.8, w=0.6, h=1.7), obj("Cyclist", x=6, l=1.8, w=0.6, h=1.7)],
           [obj(x=2, z=30)]]
    dets = [[det(o) for o in f] for f in gts]
    r = kitti_ap(gts, dets)
    for cls in ("Car", "Pedestrian", "Cyclist"):
        assert r["ap3d"][cls]["moderate"] == pytest.approx(1.0)
        assert r["apbev"][cls]["easy"] == pytest.approx(1.0)


def test_no_detections_and_unfound_class():
    gts = [[obj()]]
    r = kitti_ap(gts, [[]])
    assert r["ap3d"]["Car"]["moderate"] == 0.0
    assert r["ap3d"]["Pedestrian"]["moderate"] is None  # nothing to find: not a number
    assert r["n_gt"]["Car"]["moderate"] == 1


def test_shifted_boxes_pass_bev_fail_3d_threshold():
    g = obj()
    d = det(g, x=0.6)  # IoU = 3.4*2 / (16 - 6.8) = 0.739 BEV; with height shift 3D falls below 0.7
    d.y = g.y - 0.2
    assert iou_bev(g, d) > 0.7 > iou_3d(g, d)
    r = kitti_ap([[g]], [[d]])
    assert r["apbev"]["Car"]["moderate"] == pytest.approx(1.0)
    assert r["ap3d"]["Car"]["moderate"] == 0.0


def test_false_positive_ranked_first_halves_early_precision():
    gts = [[obj(x=-5), obj(x=5)]]
    dets = [[det(gts[0][0], 0.8), det(gts[0][1], 0.7), det(obj(x=0, z=50), 0.95)]]
    ap = kitti_ap(gts, dets)["ap3d"]["Car"]["moderate"]
    # precision at recall 0.5 is 1/2, at recall 1 is 2/3 -> interpolated 2/3 everywhere
    assert ap == pytest.approx(2 / 3, abs=1e-3)
    # a low-scored false positive does not hurt: the PR curve reaches recall 1 before it
    dets2 = [[det(gts[0][0], 0.8), det(gts[0][1], 0.7), det(obj(x=0, z=50), 0.1)]]
    assert kitti_ap(gts, dets2)["ap3d"]["Car"]["moderate"] == pytest.approx(1.0)


def test_van_person_sitting_and_dontcare_are_not_false_positives():
    van = obj("Van")
    sitting = obj("Person_sitting", x=4, l=0.8, w=0.6, h=1.2)
    dc = Object3D("DontCare", -1, -1, -10, (500, 100, 600, 200), -1, -1, -1, -1000, -1000, -1000, -10)
    car = obj(x=-6)
    gts = [[van, sitting, dc, car]]
    dets = [[det(car, 0.5), det(van, 0.9, type="Car"),
             det(sitting, 0.9, type="Pedestrian"),
             det(obj(x=0, z=40, box2d=(510, 110, 590, 190)), 0.95)]]  # inside the DontCare region
    r = kitti_ap(gts, dets)
    assert r["ap3d"]["Car"]["moderate"] == pytest.approx(1.0)
    # without the DontCare row the same detection is a false positive ranked first
    r2 = kitti_ap([[van, sitting, car]], dets)
    assert r2["ap3d"]["Car"]["moderate"] == pytest.approx(0.5)


def test_difficulty_by_height_occlusion_truncation():
    small = obj(box2d=(100, 100, 150, 130))  # 30 px: moderate, not easy
    occluded = obj(x=5, occ=2)
    truncated = obj(x=-5, trunc=0.4)
    r = kitti_ap([[small, occluded, truncated]], [[]])
    assert r["n_gt"]["Car"] == {"easy": 0, "moderate": 1, "hard": 3}


def test_recall_within_range():
    near, far = obj(z=20), obj(x=3, z=60)
    r = recall_within([[near, far]], [[det(near)]], "Car", 40.0)
    assert r["total"] == 1 and r["recall"] == 1.0
