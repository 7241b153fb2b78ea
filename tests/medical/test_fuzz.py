"""Property-based: mutated DICOM and record bytes never crash a loader with anything but a UserError."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmapps.errors import UserError
from medical.io import load_ct, read_record

pydicom_data = pytest.importorskip("pydicom.data")
CT_BYTES = open(pydicom_data.get_testdata_file("CT_small.dcm"), "rb").read()
RECORD = json.dumps({"age": 61, "sex": "female", "smoking_status": "current", "cigs_per_day": 20,
                     "smoking_years": 30, "pack_years": 30, "bmi": 24.5, "copd": True}).encode()
FHIR = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "gender": "male", "birthDate": "1950-02-03"}},
    {"resource": {"resourceType": "Observation", "code": {"coding": [{"code": "72166-2"}]},
                  "effectiveDateTime": "2020-01-01",
                  "valueCodeableConcept": {"coding": [{"code": "8517006"}]}}}]}).encode()

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b)


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, len(CT_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.integers(0, len(CT_BYTES))))
def test_mutated_dicom(tmp_path, edits, cut):
    data = _mutate(CT_BYTES, edits)
    if cut is not None:
        data = data[:cut]
    p = tmp_path / "m.dcm"
    p.write_bytes(data)
    try:
        vol = load_ct(p)
        assert vol.array.ndim == 3
    except UserError as e:
        assert str(p) in str(e)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_as_dicom_and_record(tmp_path, data):
    for name in ("r.dcm", "r.json", "r.csv", "r.dat"):
        p = tmp_path / name
        p.write_bytes(data)
        for loader in (load_ct, read_record):
            try:
                loader(p)
            except UserError as e:
                assert str(p) in str(e)


@SETTINGS
@given(base=st.sampled_from([RECORD, FHIR]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(32, 126)), min_size=1, max_size=8))
def test_mutated_records(tmp_path, base, edits):
    p = tmp_path / "rec.json"
    p.write_bytes(_mutate(base, edits))
    try:
        fields, warnings = read_record(p)
        assert isinstance(fields, dict) and isinstance(warnings, list)
    except UserError as e:
        assert str(p) in str(e)
