"""Loaders on the real reference files and on broken ones (clear UserError, never a traceback)."""
import json
import os

import numpy as np
import pytest

from mmapps.errors import UserError
from medical.io import load_ct, load_mri, load_volume, read_record


def _testfile(name):
    pydicom_data = pytest.importorskip("pydicom.data")
    return pydicom_data.get_testdata_file(name)


def test_monai_ct_drops_far_slice(shared_data):
    vol = load_ct(shared_data / "medical" / "monai_CT_DICOM")
    assert vol.array.shape == (3, 16, 16)  # the slice at z=-99.5 is dropped, 3 evenly spaced remain
    assert vol.spacing[0] == pytest.approx(1.25, abs=0.01)
    assert any("far from the others" in w for w in vol.warnings)
    assert vol.modality == "CT"


def test_nifti_mri(shared_data):
    vol = load_mri(shared_data / "medical" / "monai_nifti" / "anatomical.nii")
    assert vol.array.ndim == 3 and vol.array.shape == (25, 41, 33)
    assert vol.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_2d_mha_refused(shared_data):
    with pytest.raises(UserError, match="unsupported image format"):
        load_ct(shared_data / "medical" / "monai_nifti" / "CT_2D_head_fixed.mha")


def test_synthea_records(shared_data):
    folder = shared_data / "medical" / "synthea_fhir_r4"
    import datetime as dt

    austin, _ = read_record(next(folder.glob("Austin_*.json")), as_of=dt.date(1985, 7, 1))
    assert austin["personal_cancer_history"] is False  # his lung cancer is the outcome, never an input
    assert austin["sex"] == "male"
    assert 65 < austin["age"] < 65.3  # born 1920-04-23; age at the scan date, not at death (1989)
    assert austin["smoking_status"] == "former"
    assert 27 < austin["bmi"] < 29
    buster, _ = read_record(next(folder.glob("Buster_*.json")))
    assert buster["smoking_status"] == "never" and buster["personal_cancer_history"] is False


def test_pydicom_testfiles():
    ct = load_ct(_testfile("CT_small.dcm"))
    assert ct.array.shape == (1, 128, 128) and any("single slice" in w for w in ct.warnings)
    assert ct.array.min() < 0  # rescaled to HU
    with pytest.raises(UserError, match="not CT"):
        load_ct(_testfile("MR_small.dcm"))
    mr = load_mri(_testfile("MR_small_RLE.dcm"))  # compressed: decoded by pydicom's RLE handler
    ref = load_mri(_testfile("MR_small.dcm"))
    assert np.array_equal(mr.array, ref.array)
    with pytest.raises(UserError, match="pixel data"):
        load_mri(_testfile("MR_truncated.dcm"))


def test_mixed_series_picks_largest():
    folder = os.path.join(os.path.dirname(_testfile("CT_small.dcm")), "dicomdirtests", "98892003")
    vol = load_mri(folder)
    assert vol.array.shape[0] == 7
    assert any("series mixed" in w for w in vol.warnings)


def test_bad_dicom_inputs(tmp_path):
    import pydicom

    folder = tmp_path / "notdicom"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"not dicom" * 20)
    with pytest.raises(UserError, match="no DICOM files"):
        load_ct(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no DICOM"):
        load_ct(empty)
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(UserError, match="no pixel data"):
        load_ct(tmp_path / "nopix.dcm")
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    del ds.RescaleSlope
    ds.save_as(tmp_path / "norescale.dcm")
    with pytest.raises(UserError, match="Rescale"):
        load_ct(tmp_path / "norescale.dcm")
    data = open(_testfile("CT_small.dcm"), "rb").read()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        load_ct(tmp_path / "trunc.dcm")
    with pytest.raises(UserError, match="no such"):
        load_volume(tmp_path / "missing")


def test_2d_nifti_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(UserError, match="2D"):
        load_ct(tmp_path / "flat.nii")


@pytest.mark.parametrize("content,match", [
    ({"age": 400, "sex": "female"}, "age"),
    ({"age": 60, "pack_years": -3}, "pack_years"),
    ({"age": 60, "smoking_status": "sometimes-ish"}, "smoking_status"),
    ({"age": 30, "smoking_years": 50}, "smoking_years"),
    ({"age": "old"}, "age"),
])
def test_impossible_records(tmp_path, content, match):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(content))
    with pytest.raises(UserError, match=match):
        read_record(p)


def test_record_formats(tmp_path):
    (tmp_path / "r.csv").write_text("age,sex,smoking_status,cigs_per_day,shoe_size\n61,F,current,20,38\n")
    fields, warnings = read_record(tmp_path / "r.csv")
    assert fields == {"age": 61.0, "sex": "female", "smoking_status": "current", "cigs_per_day": 20.0}
    assert any("shoe_size" in w for w in warnings)  # unknown fields are ignored with a warning
    (tmp_path / "two.csv").write_text("age\n61\n62\n")
    with pytest.raises(UserError, match="exactly one row"):
        read_record(tmp_path / "two.csv")
    (tmp_path / "r.xml").write_text("<patient age='61'/>")
    with pytest.raises(UserError, match="unknown record format"):
        read_record(tmp_path / "r.xml")
    (tmp_path / "obs.json").write_text(json.dumps({"resourceType": "Observation"}))
    with pytest.raises(UserError, match="Bundle"):
        read_record(tmp_path / "obs.json")


def test_record_vector_missing_indicators():
    from medical.models import RECORD_FEATURES, record_vector

    v = record_vector({"age": 72, "smoking_status": "never"})
    n = len(RECORD_FEATURES)
    values, missing = v[:n], v[n:]
    assert values[RECORD_FEATURES.index("age")] == pytest.approx(1.0)
    assert missing[RECORD_FEATURES.index("age")] == 0 and missing[RECORD_FEATURES.index("bmi")] == 1
    assert missing[RECORD_FEATURES.index("pack_years")] == 0  # never-smoker: known zero, not missing


def test_fhir_history_excludes_the_index_cancer_and_later_records(tmp_path):
    import datetime as dt

    def cond(code, text, onset, clinical="active", verification="confirmed"):
        return {"resource": {"resourceType": "Condition", "onsetDateTime": onset,
                             "clinicalStatus": {"coding": [{"code": clinical}]},
                             "verificationStatus": {"coding": [{"code": verification}]},
                             "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}], "text": text}}}

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female", "birthDate": "1950-06-01",
                      "deceasedDateTime": "2030-01-01"}},
        cond("254637007", "Non-small cell lung cancer", "2019-01-01"),  # the index cancer: the outcome
        cond("13645005", "Chronic obstructive lung disease", "2015-01-01", verification="refuted"),
        cond("363346000", "Malignant neoplastic disease", "2021-01-01"),  # after the scan
        {"resource": {"resourceType": "Observation", "code": {"coding": [{"code": "8664-5"}]},
                      "effectiveDateTime": "2018-01-01", "valueQuantity": {"value": 35}}},
        {"resource": {"resourceType": "FamilyMemberHistory", "status": "completed",
                      "condition": [{"code": {"coding": [{"code": "363358000"}]}}]}},
    ]}
    f = tmp_path / "b.json"
    f.write_text(json.dumps(bundle))
    fields, warnings = read_record(f, as_of=dt.date(2020, 6, 1))
    assert fields["age"] == pytest.approx(70.0, abs=0.01)  # at the scan, not at death
    assert fields["personal_cancer_history"] is False and fields["copd"] is False
    assert fields["pack_years"] == 35 and fields["family_history_lung_cancer"] is True
    assert any("after the scan" in w for w in warnings)


def test_fhir_wrong_json_types_never_crash(tmp_path):
    bundle = {"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male", "birthDate": "1960-01-01"}},
        {"resource": {"resourceType": "Condition", "code": {"coding": 5}}},
        {"resource": {"resourceType": "FamilyMemberHistory", "condition": {"code": 3}}},
        {"resource": {"resourceType": "Observation", "code": {"coding": [{"code": "72166-2"}]},
                      "valueCodeableConcept": {"coding": "x"}}},
    ]}
    f = tmp_path / "b.json"
    f.write_text(json.dumps(bundle))
    fields, _ = read_record(f)
    assert fields["sex"] == "male"
