"""The assessability gate and the nodule detector on synthetic phantoms (in memory, fast) and on the real scans
in ../shared/data (skipped when absent)."""
import numpy as np
import pytest

from medical.io import Volume
from medical.lungs import read_chest_ct
from medical.nodules import detect_nodules


def _volume(arr, spacing):
    """A Volume whose LPS coordinates equal the synthetic generator's (centred) mm coordinates."""
    from medical.io import default_affine

    aff = default_affine(spacing)
    aff[:3, 3] = [-(arr.shape[2] - 1) * spacing[2] / 2, -(arr.shape[1] - 1) * spacing[1] / 2,
                  -(arr.shape[0] - 1) * spacing[0] / 2]
    return Volume(arr.astype(np.float32), spacing, "CT", "phantom", affine=aff)


def _chest(seed, size_mm=None, shape=(64, 128, 128)):
    from medical.synth import render_ct, sample_variables

    rng = np.random.default_rng([seed, 77])
    v = sample_variables(rng)
    if size_mm is not None:
        v["nodule_size_mm"] = size_mm
    ct, spacing, extra = render_ct(v, rng, shape)
    return _volume(ct, spacing), v, extra


def _abdomen():
    """Body with soft tissue, fat, a spine and bowel-gas pockets: air inside the body but no lungs."""
    z, y, x = np.ogrid[-31.5:32.5, -63.5:64.5, -63.5:64.5]
    sp = (5.0, 2.7, 2.7)
    body = (y * sp[1] / 110) ** 2 + (x * sp[2] / 160) ** 2 <= 1
    arr = np.where(body, 40.0, -1000.0) + np.random.default_rng(0).normal(0, 15, (64, 128, 128))
    rng = np.random.default_rng(1)
    for _ in range(12):
        c = rng.uniform([-25, -25, -40], [25, 25, 40])
        r = rng.uniform(3, 7)
        arr[((z - c[0]) / (r * 0.6)) ** 2 + ((y - c[1]) / r) ** 2 + ((x - c[2]) / r) ** 2 <= 1] = -1000
    return _volume(arr, sp)


def test_synthetic_chest_is_assessable_and_its_large_nodule_found():
    vol, v, extra = _chest(5, size_mm=18.0)
    scan = read_chest_ct(vol)
    assert scan.assessable and not scan.reasons
    # whole lungs inside the scan: no coverage warning; only the one about its 5 mm slices
    assert [w.split(" mm apart")[0] for w in scan.warnings] == [f"slices {vol.spacing[0]:.1f}"]
    assert vol.spacing[0] > 2.5 and "Lung-RADS" in scan.warnings[0]
    assert 2000 < scan.stats["lung_volume_ml"] < 8000
    nodules = detect_nodules(scan)
    true = np.array([extra["centre_mm"][2], extra["centre_mm"][1], extra["centre_mm"][0]])  # z,y,x -> x,y,z
    dist = [np.linalg.norm(np.subtract(n["center_mm"], true)) for n in nodules]
    hit = nodules[int(np.argmin(dist))]
    assert min(dist) < 9.0
    assert abs(hit["diameter_mm"] - 18.0) / 18.0 < 0.3
    assert hit["upper_lobe"] == bool(v["upper_lobe"])


def test_thin_slices_carry_no_slice_thickness_warning():
    vol, _, _ = _chest(5, size_mm=18.0, shape=(160, 128, 128))
    scan = read_chest_ct(vol)
    assert vol.spacing[0] == 2.0 and scan.assessable and scan.warnings == []


def test_abdomen_head_and_single_slice_are_not_assessable():
    from pydicom.data import get_testdata_file

    from medical.io import load_ct

    scan = read_chest_ct(_abdomen())
    assert not scan.assessable and any("lung" in r for r in scan.reasons)
    head = read_chest_ct(load_ct(get_testdata_file("CT_small.dcm")))  # real CT, one 85 mm slice
    assert not head.assessable and any("slice" in r for r in head.reasons)


def test_a_ct_without_its_rescale_intercept_is_refused_with_that_reason():
    """Stored pixel values (HU + 1024, the intercept lost by an export) used to read as 'no lungs found'."""
    vol, _, _ = _chest(5, size_mm=18.0)
    vol.tags = {"BodyPartExamined": "CHEST"}
    assert read_chest_ct(vol).assessable
    for stored in (vol.array + 1024.0, np.where(vol.array > -1500, vol.array + 1024.0, -2000.0)):  # padding kept
        shifted = Volume(stored, vol.spacing, "CT", "phantom", affine=vol.affine, tags=vol.tags)
        scan = read_chest_ct(shifted)
        assert not scan.assessable and len(scan.reasons) == 1  # no 'BodyPartExamined says CHEST' hint either
        assert "not Hounsfield units" in scan.reasons[0] and "Rescale Intercept" in scan.reasons[0]
    assert not any("Intercept" in r for r in read_chest_ct(_abdomen()).reasons)  # a real non-chest reason stays


def test_a_refused_scan_keeps_its_middle_slice_for_the_report(tmp_path):
    from PIL import Image

    from medical.pipeline import Pipeline

    vol = _abdomen()
    scan = read_chest_ct(vol)
    image, pixel_mm = scan.preview
    assert not scan.assessable and image.shape == vol.array.shape[1:] and pixel_mm == vol.spacing[1:]
    np.testing.assert_array_equal(image, vol.array[vol.array.shape[0] // 2])  # stored in the usual order already
    res = Pipeline.from_checkpoint().predict(study=vol, report=tmp_path)
    assert res["risk_category"] == "not_assessable"
    png = np.asarray(Image.open(res["report"]).convert("L"))
    right = png[40:, png.shape[1] * 2 // 3:]  # the slice panel: the body's grey and the air's black
    assert (right < 30).mean() > 0.1 and ((right > 150) & (right < 240)).mean() > 0.1  # 40 HU: grey 204


def test_partial_chest_slab_is_assessed_with_a_coverage_warning():
    vol, _, _ = _chest(6)
    slab = Volume(vol.array[28:40], vol.spacing, "CT", "slab", affine=vol.affine)
    scan = read_chest_ct(slab)
    assert scan.assessable and any("covers 60 mm" in w for w in scan.warnings)


def test_real_scans(shared_data):
    from medical.io import load_ct

    m = shared_data / "medical"
    head = read_chest_ct(load_ct(m / "monai_CT_DICOM"))
    assert not head.assessable
    scan = read_chest_ct(load_ct(m / "lidc_idri_0001_slab" / "ct"))
    assert scan.assessable and any("partial chest coverage" in w for w in scan.warnings)
    nodules = detect_nodules(scan)
    near = [n for n in nodules if np.hypot(n["center_mm"][0] - 56.2, n["center_mm"][1] - 85.6) <= 10]
    assert near and -125 <= near[0]["center_mm"][2] <= -107.5


def test_ground_glass_nodule_is_found_like_a_solid_one():
    """The LoG answers a -520 HU ground-glass nodule at ~1/3 of a solid one; the contrast gain makes the score
    judge the shape, so a 14 mm ground-glass nodule is reported (it was not before the gain)."""
    from medical.nodules import MAX_CONTRAST_GAIN, contrast_gain

    vol, v, extra = _chest(5, size_mm=14.0)
    v["nodule_type"] = "non-solid"
    from medical.synth import render_ct

    ct, spacing, extra = render_ct(v, np.random.default_rng([5, 77, 1]), (64, 128, 128))
    scan = read_chest_ct(_volume(ct, spacing))
    true = np.array([extra["centre_mm"][2], extra["centre_mm"][1], extra["centre_mm"][0]])
    nodules = detect_nodules(scan)
    dist = [np.linalg.norm(np.subtract(n["center_mm"], true)) for n in nodules]
    assert dist and min(dist) < 9.0
    hit = nodules[int(np.argmin(dist))]
    assert hit["type"] in ("ground-glass", "part-solid")
    idx = tuple(hit["center_voxel"])
    assert 1.5 < contrast_gain(scan.hu, idx, hit["radius_mm"], scan.spacing_mm) <= MAX_CONTRAST_GAIN
    # A solid nodule is scored as before (gain 1).
    vol, _, extra = _chest(5, size_mm=18.0)
    scan = read_chest_ct(vol)
    true = np.array([extra["centre_mm"][2], extra["centre_mm"][1], extra["centre_mm"][0]])
    solid = min(detect_nodules(scan), key=lambda n: np.linalg.norm(np.subtract(n["center_mm"], true)))
    assert contrast_gain(scan.hu, tuple(solid["center_voxel"]), solid["radius_mm"], scan.spacing_mm) == 1.0


def test_elongation_tells_a_ball_from_a_vessel_segment():
    from medical.nodules import MAX_ELONGATION, elongation

    z, y, x = np.ogrid[-8:9, -8:9, -8:9]
    ball = z ** 2 + y ** 2 + x ** 2 <= 9
    tube = (y ** 2 + z ** 2 <= 1) & (np.abs(x) <= 6)
    assert elongation(ball, 2.7) < 1.1
    assert elongation(tube, 2.7) > 2 * MAX_ELONGATION
    assert elongation(np.ones((1, 1, 1), bool), 2.7) == pytest.approx(1.0)


def test_round_8_to_10_mm_solid_nodules_are_reported():
    """Most 8-10 mm solid nodules of synthetic scans are reported (vessels beside one can still hide it)."""
    from medical.synth import render_ct, sample_variables

    found = 0
    for seed in range(8):
        v = sample_variables(np.random.default_rng([100 + seed, 77]))  # _chest's draw, without its render
        v.update(nodule_size_mm=8.0 + 0.25 * seed, nodule_type="solid", spiculation=0)
        ct, spacing, extra = render_ct(v, np.random.default_rng([100 + seed, 77, 1]), (64, 128, 128))
        scan = read_chest_ct(_volume(ct, spacing))
        true = np.array([extra["centre_mm"][2], extra["centre_mm"][1], extra["centre_mm"][0]])
        found += any(np.linalg.norm(np.subtract(n["center_mm"], true)) < 6.0 for n in detect_nodules(scan))
    assert found >= 6


def test_small_round_masks_are_not_judged_by_their_fill_ratio():
    """Why the fill-ratio test starts at FILL_MIN_DIAMETER_MM: the pixelated mask of a ~9 mm nodule on a 2.7 mm
    grid (3 voxels across, 5 slices after z interpolation) fills less than MIN_FILL_RATIO of the sphere over its
    longest extent, although it is round."""
    from medical.nodules import (FILL_MIN_DIAMETER_MM, MAX_ELONGATION, MIN_FILL_RATIO, elongation, fill_ratio,
                                 longest_axial_diameter)

    mask = np.zeros((5, 3, 3), bool)  # the mask of a 9 mm solid nodule the old test rejected (fill 0.26)
    mask[1:4, 1, :] = mask[1:4, :, 1] = True  # a plus-shaped cross-section on 3 slices, one voxel above and below
    mask[0, 1, 1] = mask[4, 1, 1] = True
    assert fill_ratio(mask, 2.7) < MIN_FILL_RATIO
    assert elongation(mask, 2.7) <= MAX_ELONGATION
    assert longest_axial_diameter(mask, 2.7)[0] < FILL_MIN_DIAMETER_MM


def test_froc_ranks_every_candidate_and_reports_the_operating_point_beside_it():
    """The FROC curve extends past the reporting threshold (every measured candidate, as LUNA16 scores a list);
    the reported nodules are a subset, so they can neither find more nor raise more false candidates."""
    from medical.evaluate import FROC_FP_RATES, detection_froc
    from medical.nodules import default_classifier, measure_candidates, report_nodules, score_candidates

    froc = detection_froc(n_scans=3, seed=4242)
    assert froc["targets"] > 0
    assert froc["candidates_sensitivity"] >= froc["sensitivity"]
    assert froc["candidates_false_per_scan"] >= froc["false_per_scan"]
    curve = [froc["sensitivity_at_fp"][str(r)] for r in FROC_FP_RATES]
    assert curve == sorted(curve) and curve[-1] <= froc["candidates_sensitivity"] + 1e-9
    scan = read_chest_ct(_chest(9)[0])
    measured = score_candidates(measure_candidates(scan))
    assert report_nodules(measured) == detect_nodules(scan)  # the reporting rule is the product's
    assert any(n["detection_score"] < default_classifier().threshold for n in report_nodules(measured, 0.0, None))


def test_faint_candidates_are_segmented_at_half_their_contrast():
    """A -520 HU ground-glass nodule blurred by 5 mm slices keeps a core near -600 HU: segmented above -600 HU
    it was 2-3 voxels and failed the shape tests; at half its contrast over the lung it keeps its size."""
    from medical.nodules import DENSE_HU, MIN_HALF_CONTRAST_HU, dense_threshold, segment

    z, y, x = np.ogrid[-12:13, -12:13, -12:13]
    d = np.sqrt(z ** 2 + y ** 2 + x ** 2) * 2.7
    lung = np.full(d.shape, -850.0)
    faint = np.where(d <= 4.5, -620.0, lung)  # a 9 mm blob only 230 HU above the lung
    solid = np.where(d <= 4.5, 30.0, lung)
    c = (12, 12, 12)
    t = dense_threshold(faint, c, 4.0, 2.7)
    assert -850 + MIN_HALF_CONTRAST_HU <= t < DENSE_HU and t == pytest.approx(-735, abs=10)
    assert dense_threshold(solid, c, 4.0, 2.7) == DENSE_HU  # solid nodules are measured as before
    assert not (faint > DENSE_HU).any()  # the old fixed threshold saw nothing here
    assert np.array_equal(segment(faint, c, 4.0, 2.7)[0], segment(solid, c, 4.0, 2.7)[0])
    assert segment(faint, c, 4.0, 2.7)[0].sum() >= 7


def test_nodule_classifier_fits_ranks_and_round_trips(tmp_path):
    """`train-detector` on a few synthetic scans: the JSON it writes loads back, ranks true candidates above false
    ones on its fitting scans, and a file of another feature set is refused with a clear message."""
    import json

    from mmapps.errors import UserError
    from mmapps.metrics import binary_metrics

    from medical.nodules import CLASSIFIER_FEATURES, NoduleClassifier, score_candidates
    from medical.train import _labelled_candidates, train_nodule_classifier

    out = tmp_path / "clf.json"
    res = train_nodule_classifier(out, scans=8, seed=97531)
    clf = NoduleClassifier.load(out)
    assert 0 < clf.threshold < 1 and res["threshold"] == clf.threshold
    assert clf.meta["held_out"]["scans"] == 2 and "--scans 8 --seed 97531" in clf.meta["command"]
    rows = [c for i in range(6) for c in _labelled_candidates((97531, i, (64, 128, 128)))["candidates"]]
    y = np.array([c["label"] for c in rows])
    assert 0 < y.sum() < len(y)
    p = np.array([c["detection_score"] for c in score_candidates(rows, clf)])
    assert binary_metrics(y, p)["auroc"] > 0.8
    d = json.loads(out.read_text())
    d["features"] = list(CLASSIFIER_FEATURES[:-1])
    out.write_text(json.dumps(d))
    with pytest.raises(UserError, match="train-detector"):
        NoduleClassifier.load(out)


def test_bundled_classifier_prefers_round_blobs():
    """The bundled classifier's direction on shape: the same candidate reads less like a nodule when elongated or
    when its Hessian says tube rather than blob."""
    from medical.nodules import default_classifier

    clf = default_classifier()
    ball = {"response": 400.0, "blobness": 0.8, "contrast_gain": 1.0, "fill_ratio": 0.6, "elongation": 1.2,
            "diameter_mm": 10.0, "radius_mm": 4.0}
    p_ball, p_long, p_tube = clf.probability([ball, {**ball, "elongation": 1.9}, {**ball, "blobness": 0.3}])
    assert p_ball > clf.threshold and p_ball > p_long and p_ball > p_tube


def test_a_wider_opening_frees_a_nodule_sitting_on_a_vessel_but_not_a_vessel():
    """A 13 mm nodule threaded on a 6 mm vessel: opened with half its LoG radius the vessel stays attached
    (sparse 24 mm mask, rejected by the fill-ratio rule); the detector's second opening (OPENINGS) frees the round
    body. A vessel alone stays elongated under both openings, so the rules still reject it."""
    from medical.nodules import (FILL_MIN_DIAMETER_MM, MAX_ELONGATION, MIN_FILL_RATIO, OPENINGS, elongation,
                                 fill_ratio, longest_axial_diameter, segment)

    z, y, x = np.mgrid[-12:13, -12:13, -16:17]
    sp = 2.7
    vessel = np.full(z.shape, -850.0)
    vessel[np.sqrt(z ** 2 + y ** 2) * sp <= 3.0] = 35.0
    nodule = vessel.copy()
    nodule[np.sqrt(z ** 2 + y ** 2 + x ** 2) * sp <= 6.5] = 30.0

    def passes(hu, opening):
        mask, outline, _ = segment(hu, (12, 12, 16), 6.0, sp, opening)
        diameter = longest_axial_diameter(outline, sp)[0]
        ok = elongation(mask, sp) <= MAX_ELONGATION and not (
            fill_ratio(mask, sp) < MIN_FILL_RATIO and diameter >= FILL_MIN_DIAMETER_MM)
        return ok, diameter

    assert OPENINGS[0] == 0.5 and len(OPENINGS) > 1
    assert not passes(nodule, OPENINGS[0])[0]
    ok, diameter = passes(nodule, OPENINGS[-1])
    assert ok and 8.0 <= diameter <= 16.0
    assert not any(passes(vessel, o)[0] for o in OPENINGS)


def test_scale_space_threads_give_the_serial_candidates(monkeypatch):
    """The LoG scales run in parallel threads for speed: the candidates must be exactly those of one thread."""
    from medical import nodules
    from medical.synth import synthetic_chest_scan

    scan = read_chest_ct(synthetic_chest_scan(777, 3)[0])
    monkeypatch.setattr(nodules, "SCALE_THREADS", 1)
    serial = nodules.find_candidates(scan.hu, scan.lung, scan.spacing_mm)
    monkeypatch.setattr(nodules, "SCALE_THREADS", 3)
    threaded = nodules.find_candidates(scan.hu, scan.lung, scan.spacing_mm)
    assert len(serial) > 5
    assert serial == threaded


def _stored_differently(vol, flips=(), order=(0, 1, 2)):
    """The same scan as a scanner might store it: array axes flipped and permuted, the affine saying so."""
    from medical.io import Volume

    arr, aff = vol.array, vol.affine.copy()
    for axis in flips:
        arr = np.flip(arr, axis)
        # stored index i on a flipped axis is original index n-1-i
        col = aff[:3, axis].copy()
        aff[:3, 3] = aff[:3, 3] + col * (vol.array.shape[axis] - 1)
        aff[:3, axis] = -col
    arr = np.ascontiguousarray(arr.transpose(order))
    aff[:, :3] = aff[:, list(order)]
    spacing = tuple(vol.spacing[i] for i in order)
    return Volume(arr, spacing, "CT", "phantom", affine=aff)


@pytest.mark.parametrize("flips,order", [((2,), (0, 1, 2)), ((1,), (0, 1, 2)), ((0, 1, 2), (0, 1, 2)),
                                         ((), (1, 0, 2))],
                         ids=["columns-mirrored", "rows-mirrored", "feet-first-prone", "coronal-slices"])
def test_the_storage_order_of_a_scan_does_not_change_its_reading(flips, order):
    # The same anatomy stored mirrored, feet-first or as coronal slices must give the same grid, lung mask and
    # nodules, bit for bit: the gate and the working grid are defined on the anatomy (canonical_volume).
    # 1.15 mm pixels on the 1.5 mm working grid: a grid anchored at the stored first voxel would sample other
    # points when the storage order is reversed
    vol, _, _ = _chest(3, size_mm=12.0, shape=(50, 300, 300))
    ref = read_chest_ct(vol)
    other = _stored_differently(vol, flips, order)
    for index in [(0, 0, 0), (5, 17, 30)]:  # the test's own re-storing is right: same place, same coordinates
        stored = [(vol.array.shape[a] - 1 - i) if a in flips else i for a, i in enumerate(index)]
        np.testing.assert_allclose(vol.index_to_lps(index), other.index_to_lps([stored[k] for k in order]))
    got = read_chest_ct(other)
    assert ref.assessable and got.assessable
    np.testing.assert_array_equal(got.hu, ref.hu)
    np.testing.assert_array_equal(got.lung, ref.lung)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-9)
    a, b = detect_nodules(ref), detect_nodules(got)
    assert a and [n["center_mm"] for n in a] == [n["center_mm"] for n in b]
    assert [n["detection_score"] for n in a] == [n["detection_score"] for n in b]


def test_scan_variants_keep_the_anatomy_where_it_is():
    # Each variant is the same patient: its largest nodule stays at the same LPS position (the affines of the
    # thicker, thinner and coarser grids are right), and the storage orders read exactly alike.
    from medical.evaluate import scan_variants
    from medical.preprocess import analyse_ct

    vol, _, _ = _chest(5, size_mm=18.0, shape=(96, 160, 160))
    ref = analyse_ct(vol)["nodules"]
    assert ref
    centre = np.array(ref[0]["center_mm"])
    variants = scan_variants(vol)
    assert len(variants) == 13 and all(v.array.dtype == np.float32 for v in variants.values())
    for name, v in variants.items():
        found = analyse_ct(v)["nodules"]
        dist = min(np.linalg.norm(np.subtract(n["center_mm"], centre)) for n in found)
        assert dist < 1.4, name  # an affine off by half a thick slice or a coarse pixel would move it further
        if name.startswith("stored"):
            assert [n["center_mm"] for n in found] == [n["center_mm"] for n in ref], name
