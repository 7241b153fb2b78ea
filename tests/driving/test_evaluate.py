"""The KITTI evaluator on hand-made cases with known answers."""
import copy
import math

import numpy as np
import pytest

from driving.evaluate import recall_within
from driving.geometry import bev_corners, clip_polygon, polygon_area
from driving.kitti_eval import iou_3d, iou_bev, kitti_ap, sample_thresholds
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


def test_rotated_intersection_matches_a_raster_count():
    """Random rotated rectangles (the fast float clipping NMS and the evaluator use) against counting the cells of
    a fine grid that fall inside both rectangles."""
    import numpy as np

    from driving.geometry import rotated_intersection

    rng = np.random.default_rng(3)
    xs = np.linspace(-6, 6, 801)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    cell = (xs[1] - xs[0]) ** 2

    def inside(b):
        cx, cy, l, w, yaw = b
        u = (gx - cx) * math.cos(yaw) + (gy - cy) * math.sin(yaw)
        v = -(gx - cx) * math.sin(yaw) + (gy - cy) * math.cos(yaw)
        return (np.abs(u) <= l / 2) & (np.abs(v) <= w / 2)

    overlapping = 0
    for _ in range(12):
        a, b = [(rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5), rng.uniform(0.5, 5), rng.uniform(0.5, 2.5),
                 rng.uniform(-math.pi, math.pi)) for _ in range(2)]
        raster = float((inside(a) & inside(b)).sum() * cell)
        assert rotated_intersection(a, b) == pytest.approx(raster, abs=0.03 + 0.01 * raster)
        overlapping += raster > 0.1
    assert overlapping >= 6  # the cases exercise real overlaps, not only disjoint pairs


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


def forty(shift=None):
    """40 frames, each with one easy Car and one easy Pedestrian and their perfect detections (scores 0.50..0.89)."""
    gts, dets = [], []
    for i in range(40):
        car, ped = obj(x=-5, z=10 + i), obj("Pedestrian", x=3, z=10 + i, l=0.8, w=0.6, h=1.7, box2d=(300, 100, 330, 170))
        d = det(car, 0.5 + i / 100, **(shift or {}))
        gts.append([car, ped])
        dets.append([d, det(ped, 0.5 + i / 100)])
    return gts, dets


def test_r40_skips_the_first_recall_point():
    """Reference algorithm by hand: thresholds are the true positives' scores sampled at recall steps; AP_R40 sums
    the monotone precision at sampled points 1..40 (point 0 is skipped, points not reached count 0)."""
    one = obj()
    assert kitti_ap([[one]], [[det(one)]])["ap3d"]["Car"]["moderate"] == 0.0  # 1 threshold -> only point 0
    two = [[obj(x=-5), obj(x=5)]]
    r = kitti_ap(two, [[det(o, s) for o, s in zip(two[0], (0.9, 0.8))]])
    assert r["ap3d"]["Car"]["moderate"] == pytest.approx(1 / 40, abs=1e-4)  # 2 thresholds: point 1 has precision 1
    gts, dets = forty()
    r = kitti_ap(gts, dets)
    for cls in ("Car", "Pedestrian"):
        assert r["ap3d"][cls]["moderate"] == pytest.approx(39 / 40, abs=1e-4)  # 40 thresholds: points 1..39
        assert r["apbev"][cls]["easy"] == pytest.approx(39 / 40, abs=1e-4) and r["ap2d"][cls]["hard"] == pytest.approx(39 / 40, abs=1e-4)
    assert r["ap3d"]["Cyclist"]["moderate"] is None


def test_threshold_sampling_takes_one_score_per_recall_step():
    scores = [1 - i / 100 for i in range(80)]
    picked = sample_thresholds(scores, 80)
    # by hand: recall steps of 1/80 against sampling points of 1/40 keep scores 0, 1, 3, 5, ..., 77 and the last
    assert picked == [scores[i] for i in [0, 1, *range(3, 78, 2), 79]] and len(picked) == 41
    assert sample_thresholds(scores[:40], 40) == scores[:40]


def test_no_detections_and_unfound_class():
    gts = [[obj()]]
    r = kitti_ap(gts, [[]])
    assert r["ap3d"]["Car"]["moderate"] == 0.0
    assert r["ap3d"]["Pedestrian"]["moderate"] is None  # nothing to find: not a number
    assert r["n_gt"]["Car"]["moderate"] == 1


def test_shifted_boxes_pass_bev_fail_3d_threshold():
    g = obj()
    d = det(g, x=0.6, y=g.y - 0.2)  # IoU = 3.4*2 / (16 - 6.8) = 0.739 BEV; with the height shift 3D falls below 0.7
    assert iou_bev(g, d) > 0.7 > iou_3d(g, d)
    gts, dets = forty(shift={"x": -5 + 0.6, "y": g.y - 0.2})
    r = kitti_ap(gts, dets)
    assert r["apbev"]["Car"]["moderate"] == pytest.approx(39 / 40, abs=1e-4)
    assert r["ap3d"]["Car"]["moderate"] == 0.0


def test_false_positive_ranked_first():
    gts, dets = forty()
    fp = det(obj(x=0, z=60), 0.95)
    r = kitti_ap(gts + [[]], dets + [[fp]])
    # by hand: at the k-th threshold tp = k+1, fp = 1 -> precision (k+1)/(k+2), monotone max 40/41 at points 1..39
    assert r["ap3d"]["Car"]["moderate"] == pytest.approx(39 / 41, abs=1e-4)
    low = det(obj(x=0, z=60), 0.1)  # below every sampled threshold: it never counts
    assert kitti_ap(gts + [[]], dets + [[low]])["ap3d"]["Car"]["moderate"] == pytest.approx(39 / 40, abs=1e-4)


def test_van_person_sitting_ignored_and_dontcare_for_2d_only():
    gts, dets = forty()
    van = obj("Van", x=0, z=20)
    sitting = obj("Person_sitting", x=4, z=20, l=0.8, w=0.6, h=1.2, box2d=(300, 100, 330, 170))
    dc = Object3D("DontCare", -1, -1, -10, (500, 100, 600, 200), -1, -1, -1, -1000, -1000, -1000, -10)
    extra = [det(van, 0.9, type="Car"), det(sitting, 0.9, type="Pedestrian"),
             det(obj(x=0, z=40, box2d=(510, 110, 590, 190)), 0.95)]  # a Car inside the DontCare region
    r = kitti_ap(gts + [[van, sitting, dc]], dets + [extra])
    assert r["ap3d"]["Pedestrian"]["moderate"] == pytest.approx(39 / 40, abs=1e-4)  # the det on Person_sitting: ignored
    assert r["ap2d"]["Car"]["moderate"] == pytest.approx(39 / 40, abs=1e-4)  # 2D: DontCare drops the false positive
    assert r["ap3d"]["Car"]["moderate"] == pytest.approx(39 / 41, abs=1e-4)  # 3D / BEV: the reference keeps it
    assert r["apbev"]["Car"]["moderate"] == pytest.approx(39 / 41, abs=1e-4)
    # the Van-matched Car is ignored: as a Truck (another class) it becomes a second false positive ranked first
    r2 = kitti_ap(gts + [[det(van, type="Truck"), obj("Misc", x=4, z=20, box2d=(300, 100, 330, 170)), dc]],
                  dets + [extra])
    assert r2["ap3d"]["Car"]["moderate"] == pytest.approx(39 / 42, abs=1e-4)  # precision (k+1)/(k+3) -> 40/42 at points 1..39
    assert r2["ap3d"]["Pedestrian"]["moderate"] == pytest.approx(39 / 41, abs=1e-4)


def test_low_detections_are_ignored_whatever_their_class():
    """The reference marks a detection lower than the minimum height 'ignored' before it looks at the class. In the
    pass that collects true-positive scores a label takes the highest-scoring such detection, so a small Pedestrian
    box scored 0.99 on a small Car label hides the Car detection's score (0.3) from the threshold sampling."""
    gts, dets = forty()
    small = obj(x=0, z=60, box2d=(100, 100, 150, 130))  # 30 px: counted for moderate
    car = det(small, 0.3)
    tiny_ped = det(small, 0.99, type="Pedestrian", box2d=(100, 100, 150, 120))  # 20 px: below moderate's 25
    r = kitti_ap(gts + [[small]], dets + [[car, tiny_ped]])
    assert r["n_gt"]["Car"]["moderate"] == 41
    # thresholds come from the 40 other scores only; precision is 1 at each of them
    n = len(sample_thresholds([0.5 + i / 100 for i in range(40)], 41))
    assert n == 40 and r["ap3d"]["Car"]["moderate"] == pytest.approx((n - 1) / 40, abs=1e-4)
    # without the small Pedestrian the 0.3 score is sampled too: 41 thresholds, every point 1..40 at precision 1
    assert kitti_ap(gts + [[small]], dets + [[car]])["ap3d"]["Car"]["moderate"] == pytest.approx(1.0)


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


def test_sensor_variants_map_boxes_back_to_the_recorded_frame():
    from driving.evaluate import sensor_variants

    b = np.array([12.0, -3.0, -0.8, 4.0, 1.7, 1.5, 0.4])
    ahead = b[:3] + [np.cos(b[6]), np.sin(b[6]), 0.0]
    variants = sensor_variants()
    assert len(variants) == 8
    for name, (pts, box) in variants.items():
        p = pts(np.array([[*b[:3], 0.3], [*ahead, 0.3]]))
        if name.startswith("reflectance"):
            assert np.allclose(p[:, :3], [b[:3], ahead]) and not np.allclose(p[:, 3], 0.3)
        else:
            assert not np.allclose(p[0, :3], b[:3]), name  # the change moved the car in the sensor's frame
        yaw = np.arctan2(p[1, 1] - p[0, 1], p[1, 0] - p[0, 0])  # its heading as the changed sensor sees it
        back = box(np.r_[p[0, :3], b[3:6], yaw])
        np.testing.assert_allclose(back[:6], b[:6], atol=1e-9, err_msg=name)
        assert abs((back[6] - b[6] + np.pi) % (2 * np.pi) - np.pi) < 1e-3, name  # pitch tilts the heading slightly


def test_export_variants_write_the_reflectance_as_an_8_bit_intensity():
    from driving.evaluate import export_variants
    from driving.io import unit_reflectance

    pts = np.array([[10.0, 1.0, -1.0, 0.0], [20.0, -2.0, -0.5, 0.06], [5.0, 0.0, 0.0, 1.0]], np.float32)
    (name, (change, box)), = export_variants().items()
    out = change(pts)
    assert "8-bit" in name and np.array_equal(out[:, 3], [0, 15, 255]) and np.array_equal(out[:, :3], pts[:, :3])
    assert pts[2, 3] == 1.0  # the input is not changed
    b = np.arange(7.0)
    assert np.array_equal(box(b), b)
    back, note = unit_reflectance(out)  # what the pipeline does with it
    assert note and np.abs(back[:, 3] - pts[:, 3]).max() <= 0.5 / 255 + 1e-6
