"""Hostile inputs for `mmapps medical`: every one must end in exit 2 with one `error:` line (see harness.py)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import hostile as H
from .conftest import hostile_suite
from .harness import ROOT, Case

PATIENT = ROOT / "data" / "medical" / "samples" / "patient"
MODEL = ROOT / "data" / "medical" / "model.pt"


def _bundle(entries) -> str:
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def _cohort(d: Path, rows: list[dict]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cols = ["patient_id", "label", "ct", "record", "oracle_probability"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    H.write(d / "manifest.csv", "\n".join(lines) + "\n")
    return d


def make_files(d: Path) -> None:
    H.dicom_deflate_bomb(d / "deflate_bomb.dcm")
    H.dicom_huge_header(d / "huge_header.dcm")
    series = d / "huge_series"
    series.mkdir()
    for k in range(3):
        H.dicom_huge_header(series / f"{k}.dcm", rows=8192, cols=8192, frames=2)
    H.dicom_garbage_tags(d / "garbage_tags.dcm")
    H.nifti_gz_bomb(d / "bomb.nii.gz")
    H.fifo(d / "fifo.dcm")
    H.fifo(d / "fifo.nii")
    H.dev_zero_link(d / "zero.nii")
    H.dev_zero_link(d / "zero.dcm")
    H.dev_zero_link(d / "zero.json")
    H.fifo(d / "fifo.json")
    H.write(d / "not_dicom.dcm", os.urandom(4096))
    good = (PATIENT / "record.json").read_text()
    H.write(d / "record_ff.json", H.bad_utf8(good, 20))
    H.write(d / "record_deep.json", H.deep_json(100_000, key="age"))
    H.write(d / "record_list.json", "[1, 2, 3]")
    H.write(d / "record_age400.json", json.dumps({"age": 400, "sex": "female"}))
    H.write(d / "record_age_str.json", json.dumps({"age": "old", "sex": "female"}))
    H.write(d / "fhir_coding_int.json", _bundle([{"resource": {"resourceType": "Condition", "code": {"coding": 5}}}]))
    H.write(d / "fhir_entry_str.json", _bundle(["Patient"]))
    H.write(d / "fhir_resource_list.json", _bundle([{"resource": [1, 2]}]))
    H.write(d / "fhir_birthdate_int.json", _bundle([{"resource": {"resourceType": "Patient", "birthDate": 1950,
                                                                  "gender": ["female"]}}]))
    H.write(d / "fhir_obs_value_str.json", _bundle([{"resource": {
        "resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "valueCodeableConcept": "smoker"}}]))
    H.write(d / "file_not_dir", "x")
    H.write(d / "bad.toml", H.bad_utf8("[train]\nepochs = 1\n", 3))
    H.write(d / "deep.json", H.deep_json(100_000, key="train"))
    row = {"patient_id": "P1", "label": 1, "ct": PATIENT / "ct", "record": PATIENT / "record.json",
           "oracle_probability": 0.4}
    _cohort(d / "cohort_good", [row, {**row, "patient_id": "P2", "label": 0}])
    _cohort(d / "cohort4", [{**row, "patient_id": f"P{i}", "label": i % 2} for i in range(4)])
    H.foreign_resume_state(d / "resumed.pt", "medical")
    _cohort(d / "cohort_oracle_str", [{**row, "oracle_probability": "abc"}, {**row, "patient_id": "P2", "label": 0}])
    _cohort(d / "cohort_label_str", [{**row, "label": "maybe"}, {**row, "patient_id": "P2", "label": 0}])
    _cohort(d / "cohort_ct_zero", [{**row, "ct": d / "zero.dcm"}, {**row, "patient_id": "P2", "label": 0}])
    H.write(d / "cohort_ff" / "manifest.csv", H.bad_utf8("patient_id,label,ct\nP1,1,ct\n", 25))
    (d / "cohort_fifo").mkdir()
    H.fifo(d / "cohort_fifo" / "manifest.csv")
    def model_config(**kw):
        return lambda b: b["config"]["model"].update(kw)

    edits = {
        "ck_model_str": lambda b: b["config"].__setitem__("model", "attention"),
        "ck_encoder_dim_neg": model_config(encoder_dim=-4),
        "ck_channels_huge": model_config(ct_channels=[100000, 100000, 100000]),
        "ck_fusion": model_config(fusion="concatt"),
        "ck_modalities_int": model_config(modalities=5),
        "ck_grid_huge": model_config(ct_grid=100000),
        "ck_meta_prevalence_str": lambda b: b["meta"].__setitem__("prevalence", "high"),
        "ck_meta_prevalence_nan": lambda b: b["meta"].__setitem__("prevalence", math.nan),
        "ck_nan": lambda b: next(v for v in b["state_dict"].values() if v.is_floating_point()).fill_(math.nan),
    }
    for name, edit in edits.items():
        H.tampered_checkpoint(MODEL, d / f"{name}.pt", edit)


def cases(d: Path) -> list[Case]:
    p = ["medical", "predict"]
    ct, rec = str(PATIENT / "ct"), str(PATIENT / "record.json")
    tr = ["medical", "train", f"{d}/cohort_good"]
    c = [
        Case("dicom_deflate_bomb", p + [f"{d}/deflate_bomb.dcm"], category="budget", expect="decompression bomb"),
        Case("dicom_huge_header", p + [f"{d}/huge_header.dcm"], category="budget", expect="voxel limit"),
        Case("dicom_series_over_budget", p + [f"{d}/huge_series"], category="budget"),
        Case("dicom_garbage_tags", p + [f"{d}/garbage_tags.dcm"], category="format"),
        Case("dicom_random_bytes", p + [f"{d}/not_dicom.dcm"], category="format"),
        Case("nifti_gz_bomb", p + [f"{d}/bomb.nii.gz"], category="budget", expect="voxel limit"),
        Case("mri_nifti_gz_bomb", p + [ct, "--mri", f"{d}/bomb.nii.gz"], category="budget"),
        Case("study_fifo_dcm", p + [f"{d}/fifo.dcm"], category="special file"),
        Case("study_fifo_nii", p + [f"{d}/fifo.nii"], category="special file"),
        Case("study_dev_zero_nii", p + [f"{d}/zero.nii"], category="special file"),
        Case("study_dev_zero_dcm", p + [f"{d}/zero.dcm"], category="special file"),
        Case("record_dev_zero", p + [ct, "--record", f"{d}/zero.json"], category="special file"),
        Case("record_fifo", p + [ct, "--record", f"{d}/fifo.json"], category="special file"),
        Case("record_0xff", p + [ct, "--record", f"{d}/record_ff.json"], category="text"),
        Case("record_deep", p + [ct, "--record", f"{d}/record_deep.json"], category="text"),
        Case("record_list", p + [ct, "--record", f"{d}/record_list.json"], category="typing"),
        Case("record_age_400", p + [ct, "--record", f"{d}/record_age400.json"], category="typing"),
        Case("record_age_str", p + [ct, "--record", f"{d}/record_age_str.json"], category="typing"),
    ] + [Case(n, p + [ct, "--record", f"{d}/{n}.json"], category="typing", allow_success=True)
         for n in ("fhir_coding_int", "fhir_entry_str", "fhir_resource_list", "fhir_birthdate_int", "fhir_obs_value_str")]
    c += [
        Case("report_is_file", p + [ct, "--record", rec, "--report", f"{d}/file_not_dir"], category="output"),
        Case("report_inside_file", p + [ct, "--record", rec, "--report", f"{d}/file_not_dir/r"], category="output"),
        Case("evaluate_manifest_0xff", ["medical", "evaluate", f"{d}/cohort_ff"], category="text"),
        Case("evaluate_manifest_fifo", ["medical", "evaluate", f"{d}/cohort_fifo"], category="special file"),
        Case("evaluate_oracle_not_number", ["medical", "evaluate", f"{d}/cohort_oracle_str"], category="typing"),
        Case("evaluate_label_not_number", ["medical", "evaluate", f"{d}/cohort_label_str"], category="typing"),
        Case("evaluate_ct_dev_zero", ["medical", "evaluate", f"{d}/cohort_ct_zero"], category="special file"),
        Case("train_out_inside_file", tr + ["--out", f"{d}/file_not_dir/m.pt"], category="output"),
        Case("resume_other_architecture", ["medical", "train", f"{d}/cohort4", "--out", f"{d}/resumed.pt", "--resume",
                                           "--epochs", "2"], [f"{d}/resumed.pt"], category="config",
             expect=r"--resume: .*saved by a different model architecture .*missing"),
        Case("train_lr_nan", tr + ["--out", f"{d}/m1.pt", "--set", "train.lr=nan"], [f"{d}/m1.pt"], category="config"),
        Case("train_encoder_dim_negative", tr + ["--out", f"{d}/m2.pt", "--set", "model.encoder_dim=-4"],
             [f"{d}/m2.pt"], category="config"),
        Case("train_config_0xff", tr + ["--out", f"{d}/m3.pt", "--config", f"{d}/bad.toml"], [f"{d}/m3.pt"],
             category="config"),
        Case("train_config_deep", tr + ["--out", f"{d}/m4.pt", "--config", f"{d}/deep.json"], [f"{d}/m4.pt"],
             category="config"),
        Case("synth_out_is_file", ["medical", "synth", f"{d}/file_not_dir", "--patients", "1"], category="output"),
    ]
    c += [
        Case("shard_out_of_range", ["medical", "evaluate", f"{d}/cohort_good", "--shard", "-1/3"], category="option"),
        Case("workers_zero", ["medical", "evaluate", f"{d}/cohort_good", "--workers", "0"], category="option"),
        Case("device_unknown", p + [ct, "--device", "tpu"], category="option"),
        Case("model_fifo", p + [ct, "--model", f"{d}/fifo.json"], category="special file"),
        Case("model_dev_zero", p + [ct, "--model", f"{d}/zero.json"], category="special file"),
    ]
    ck = ["ck_model_str", "ck_encoder_dim_neg", "ck_channels_huge", "ck_fusion", "ck_modalities_int", "ck_grid_huge",
          "ck_meta_prevalence_str", "ck_meta_prevalence_nan", "ck_nan"]
    c += [Case(n, p + [ct, "--record", rec, "--model", f"{d}/{n}.pt"], category="checkpoint") for n in ck]
    return c


PENDING: dict[str, str] = {}
results, test_medical_hostile_input_is_one_clean_error = hostile_suite("medical", make_files, cases, PENDING)
