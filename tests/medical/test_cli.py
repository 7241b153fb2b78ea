"""The Typer sub-app: JSON outputs, and bad input -> one `error:` line, exit 2, nothing written."""
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medical.cli import app

runner = CliRunner()


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _bad(result):
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output


def test_predict_real_dicom_and_fhir(shared_data, tiny_model, tmp_path):
    m = shared_data / "medical"
    rec = next((m / "synthea_fhir_r4").glob("Austin_*.json"))
    # The real head CT is read (its stray slice dropped with a warning) and judged not assessable: exit 0.
    out = _json(runner.invoke(app, ["predict", str(m / "monai_CT_DICOM"), "--record", str(rec), "--model",
                                    str(tiny_model), "--report", str(tmp_path / "rep"), "--json"]))
    assert out["assessable"] is False and out["probability"] is None and out["risk_category"] == "not_assessable"
    assert any("field of view" in r for r in out["reasons"]) and out["nodules"] == []
    assert "lung_rads" not in out and "ct_findings" not in out  # no CT findings from a scan that was not judged
    assert any("far from the others" in w for w in out["warnings"])
    assert list((tmp_path / "rep").glob("*.png"))
    # A brain MRI alone is not a chest MRI either.
    out = _json(runner.invoke(app, ["predict", "--mri", str(m / "monai_nifti" / "anatomical.nii"), "--model",
                                    str(tiny_model), "--json"]))
    assert out["assessable"] is False and any("chest MRI" in r for r in out["reasons"])


def test_bad_inputs(shared_data, tiny_model, tmp_path):
    m = shared_data / "medical"
    notdicom = tmp_path / "notdicom"
    notdicom.mkdir()
    (notdicom / "a.dcm").write_bytes(b"not dicom" * 20)
    age = tmp_path / "age.json"
    age.write_text(json.dumps({"age": 400, "sex": "female"}))
    neg = tmp_path / "neg.csv"
    neg.write_text("age,pack_years\n60,-5\n")
    report = tmp_path / "never"
    cases = [
        ["predict", str(notdicom)],
        ["predict", str(m / "monai_CT_DICOM"), "--record", str(age), "--report", str(report)],
        ["predict", str(m / "monai_CT_DICOM"), "--record", str(neg)],
        ["predict", str(m / "monai_nifti" / "CT_2D_head_fixed.mha")],
        ["predict", str(m / "monai_nifti" / "anatomical.nii"), "--record", str(tmp_path / "missing.json")],
        ["evaluate", str(tmp_path)],
        ["synth", str(tmp_path / "s"), "--patients", "2", "--shard", "3/2"],
        ["synth", str(tmp_path / "s"), "--patients", "2", "--shape", "1x2"],
        ["synth", str(tmp_path / "s"), "--patients", "2", "--store", "nifti"],
        ["train-detector", "--out", str(tmp_path / "s"), "--scans", "2"],
    ]
    for args in cases:
        own_model = args[0] not in ("synth", "train-detector")
        _bad(runner.invoke(app, args + ["--model", str(tiny_model), "--json"] if own_model else args))
    assert not report.exists()  # nothing half-written
    assert not (tmp_path / "s").exists()
    _bad(runner.invoke(app, ["predict", str(m / "monai_CT_DICOM"), "--model", str(tmp_path / "nope.pt")]))


def test_train_and_evaluate_cli(tiny_cohort, tmp_path):
    out = tmp_path / "m.pt"
    res = _json(runner.invoke(app, ["train", str(tiny_cohort), "--out", str(out), "--epochs", "1", "--fusion",
                                    "weighted", "--modalities", "record", "--set", "train.batch_size=4", "--json"]))
    assert res["epochs_run"] == 1 and out.exists()
    ev = _json(runner.invoke(app, ["evaluate", str(tiny_cohort), "--model", str(out), "--json"]))
    assert ev["n"] == 12 and set(ev["ablations"]) == {"record"} and "oracle_auroc" in ev
    _bad(runner.invoke(app, ["train", str(tiny_cohort), "--out", str(tmp_path / "x.pt"), "--modalities", ""]))


def test_cli_module_is_light():
    code = "import sys, medical.cli; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_bundled_model_and_sample(tmp_path):
    from medical.pipeline import DATA_DIR, DEFAULT_MODEL

    if not DEFAULT_MODEL.exists():
        pytest.skip("bundled model not present")
    from medical.cli import demo

    res = demo(tmp_path)
    assert res["modalities"]["ct"] and res["modalities"]["record"]
    assert (tmp_path / "ct_report.png").exists()
    assert sum(p.stat().st_size for p in (DATA_DIR).rglob("*") if p.is_file()) < 20e6
