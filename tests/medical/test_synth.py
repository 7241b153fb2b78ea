"""Synthetic cohort: byte-identical with the same seed, real DICOM tags, the published clinical model."""
import csv
import hashlib
import math

import numpy as np
import pytest

from medical.synth import brock_plco_logit, intercept_shift, logit, sample_variables, synth_cohort

SHAPE = (16, 32, 32)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_byte_identical(tmp_path):
    a = synth_cohort(tmp_path / "a", 3, seed=11, shape=SHAPE, mri_fraction=1.0)
    synth_cohort(tmp_path / "b", 3, seed=11, shape=SHAPE, mri_fraction=1.0)
    synth_cohort(tmp_path / "c", 3, seed=12, shape=SHAPE, mri_fraction=1.0)
    assert a["patients"] == 3 and a["with_mri"] == 3
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_shards_and_workers_match_single_run(tmp_path):
    synth_cohort(tmp_path / "one", 4, seed=5, shape=SHAPE)
    synth_cohort(tmp_path / "sh", 4, seed=5, shape=SHAPE, shard=(0, 2))
    synth_cohort(tmp_path / "sh", 4, seed=5, shape=SHAPE, shard=(1, 2), workers=2)
    from medical.manifest import read_manifest

    _, rows_one = read_manifest(tmp_path / "one")
    _, rows_sh = read_manifest(tmp_path / "sh")
    assert sorted(r["patient_id"] for r in rows_sh) == [r["patient_id"] for r in rows_one]
    for pid in ("P00000", "P00003"):
        assert _digest(tmp_path / "one" / "patients" / pid) == _digest(tmp_path / "sh" / "patients" / pid)


def test_dicom_tags_and_hu(tmp_path):
    import pydicom

    from medical.io import load_ct

    synth_cohort(tmp_path / "c", 1, seed=2, shape=SHAPE)
    files = sorted((tmp_path / "c" / "patients" / "P00000" / "ct").glob("*.dcm"))
    assert len(files) == SHAPE[0]
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1
    assert ds.SeriesInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
    assert len(ds.PixelSpacing) == 2 and len(ds.ImagePositionPatient) == 3 and float(ds.SliceThickness) > 0
    vol = load_ct(tmp_path / "c" / "patients" / "P00000" / "ct")
    assert vol.array.shape == SHAPE and not vol.warnings
    assert vol.array.min() < -900 and vol.array.max() > 0  # air/emphysema and soft tissue/bone


def test_clinical_model_terms():
    v = {"age": 62, "sex": "male", "family_history_lung_cancer": 0, "emphysema": 0, "nodule_size_mm": 4.0,
         "nodule_type": "solid", "upper_lobe": 0, "nodule_count": 4, "spiculation": 0, "education": 4, "bmi": 27,
         "copd": 0, "personal_cancer_history": 0, "smoking_status": "former", "cigs_per_day": 10 / 0.4021541613,
         "smoking_years": 27, "years_quit": 10}
    # At the reference values every term is zero except the intercept: Brock's -6.7892.
    assert brock_plco_logit(v) == pytest.approx(-6.7892, abs=1e-4)
    w = dict(v, spiculation=1, upper_lobe=1, sex="female")
    assert brock_plco_logit(w) - brock_plco_logit(v) == pytest.approx(0.7729 + 0.6581 + 0.6011, abs=1e-6)
    big = dict(v, nodule_size_mm=20.0)
    assert brock_plco_logit(big) > brock_plco_logit(v) + 3  # size dominates
    assert logit(v) == pytest.approx(brock_plco_logit(v) + intercept_shift())


def test_prevalence_near_target():
    rng = np.random.default_rng(123)
    p = [1 / (1 + math.exp(-logit(sample_variables(rng)))) for _ in range(3000)]
    assert 0.26 < float(np.mean(p)) < 0.34


def test_manifest_columns(tmp_path):
    synth_cohort(tmp_path / "c", 2, seed=4, shape=SHAPE)
    rows = list(csv.DictReader(open(tmp_path / "c" / "manifest.csv")))
    assert {"patient_id", "label", "oracle_probability", "nodule_size_mm", "nodule_type", "spiculation",
            "upper_lobe", "emphysema", "nodule_count", "age", "pack_years"} <= set(rows[0])
    for r in rows:
        assert 0 < float(r["oracle_probability"]) < 1 and r["label"] in ("0", "1")


def test_fhir_record_roundtrip(tmp_path):
    from medical.io import read_record
    from medical.records import REF_DATE

    synth_cohort(tmp_path / "c", 2, seed=4, shape=SHAPE)
    rows = list(csv.DictReader(open(tmp_path / "c" / "manifest.csv")))
    for r in rows:
        fields, warnings = read_record(tmp_path / "c" / r["record"], as_of=REF_DATE)  # the CTs' StudyDate
        assert not warnings
        assert fields["age"] == pytest.approx(float(r["age"]), abs=0.1)
        assert fields["sex"] == r["sex"] and fields["smoking_status"] == r["smoking_status"]
        assert fields["copd"] == bool(int(r["copd"]))
        if r["smoking_status"] != "never":
            assert fields["pack_years"] == pytest.approx(float(r["pack_years"]), abs=0.1)


def test_existing_cohort_refused(tmp_path):
    from mmapps.errors import UserError

    synth_cohort(tmp_path / "c", 1, seed=4, shape=SHAPE)
    with pytest.raises(UserError, match="already holds"):
        synth_cohort(tmp_path / "c", 1, seed=4, shape=SHAPE)


def test_lungs_stay_inside_the_chest_wall():
    """Lung air never touches the air outside the body (it did in ~2 % of scans: the gate then saw one lung)."""
    from scipy import ndimage

    from medical.synth import render_ct

    for i in range(12):
        rng = np.random.default_rng([31, i])
        v = sample_variables(rng)
        ct, _, _ = render_ct(v, rng, (24, 64, 64))
        labels, _ = ndimage.label(ct < -400)
        outside = set(np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                                labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))) - {0}
        lung = labels[(ct > -900) & (ct < -800)]  # lung parenchyma, ~-850 HU
        assert lung.size > 0
        assert not np.isin(lung, list(outside)).any(), f"draw {i}: lung connected to the outside air"


def test_vessels_and_blobs_drawn_in_their_box_cover_every_voxel_they_touch():
    """The renderer draws each vessel and emphysema blob only inside its bounding box (8x faster on thin-slice
    scans); that is exact only if no voxel within reach of the shape lies outside the box."""
    from medical.synth import _block, _coords, _ellipsoid, _seg_dist, _sub

    z, y, x, _ = _coords((48, 40, 56))
    rng = np.random.default_rng(3)
    for _ in range(40):
        a, b = rng.uniform(-170, 170, 3), rng.uniform(-170, 170, 3)
        rad = rng.uniform(1.5, 9.0)
        sl = _block(z, y, x, np.minimum(a, b) - rad, np.maximum(a, b) + rad)
        full = _seg_dist(z, y, x, a, b) <= rad
        assert full.sum() == full[sl].sum() and np.array_equal(full[sl], _seg_dist(*_sub(z, y, x, sl), a, b) <= rad)
        radii = rng.uniform(3, 30, 3)
        sl = _block(z, y, x, a - radii, a + radii)
        full = _ellipsoid(z, y, x, a, radii) <= 1.0
        assert full.sum() == full[sl].sum() and np.array_equal(full[sl], _ellipsoid(*_sub(z, y, x, sl), a, radii) <= 1.0)


def test_stored_inputs_equal_what_the_dicom_cohort_gives(tmp_path):
    """`synth --store inputs` keeps what the model would read from the DICOM scans: the same tensors, bit for bit,
    with the same nodules per study and the MRI where there is one."""
    import torch

    from medical.dataset import load_sample
    from medical.manifest import read_manifest
    from medical.models import ModelConfig

    synth_cohort(tmp_path / "dicom", 3, seed=77, mri_fraction=0.5)
    res = synth_cohort(tmp_path / "inputs", 3, seed=77, mri_fraction=0.5, store="inputs")
    assert res["store"] == "inputs"
    assert not list((tmp_path / "inputs").rglob("*.dcm"))
    cfg = ModelConfig()
    (ra, rows_a), (rb, rows_b) = read_manifest(tmp_path / "dicom"), read_manifest(tmp_path / "inputs")
    assert [r["label"] for r in rows_a] == [r["label"] for r in rows_b]
    compared = 0
    for a, b in zip(rows_a, rows_b):
        assert b["ct"].endswith("inputs.pt") and bool(a["mri"]) == bool(b["mri"])
        sa, sb = load_sample(ra, a, cfg, all_nodules=True), load_sample(rb, b, cfg, all_nodules=True)
        assert len(sa) == len(sb)
        for x, y in zip(sa, sb):
            for key in ("grid", "crop", "geom"):
                assert torch.equal(x["ct"][key], y["ct"][key])
                compared += 1
            assert ("mri" in x) == ("mri" in y)
            if "mri" in x:
                assert torch.equal(x["mri"], y["mri"])
    assert compared >= 9


def test_stored_inputs_refused_when_the_model_reads_other_settings(tmp_path):
    from medical.dataset import load_sample
    from medical.manifest import read_manifest
    from medical.models import ModelConfig
    from mmapps.errors import UserError

    synth_cohort(tmp_path / "c", 1, seed=3, store="inputs")
    root, rows = read_manifest(tmp_path / "c")
    with pytest.raises(UserError, match="ct_grid=32"):
        load_sample(root, rows[0], ModelConfig(ct_grid=16))
    (root / rows[0]["ct"]).write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a stored-inputs file"):
        load_sample(root, rows[0], ModelConfig())
    with pytest.raises(UserError, match="--store"):
        synth_cohort(tmp_path / "d", 1, seed=3, store="nifti")
