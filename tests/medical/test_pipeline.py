"""Training (core Trainer), checkpoints, Pipeline.predict, evaluation: a tiny end-to-end run in seconds."""
import json

import numpy as np
import pytest

from mmapps.errors import UserError


def test_pipeline_predict_keys(tiny_model, tiny_cohort, tmp_path):
    from medical import Pipeline
    from medical.nodules import default_classifier

    import csv

    pipe = Pipeline.from_checkpoint(tiny_model, device="cpu")
    rows = list(csv.DictReader(open(tiny_cohort / "manifest.csv")))
    largest = max(rows, key=lambda r: float(r["nodule_size_mm"]))  # visible even on the tiny 7 mm pixels
    pdir = tiny_cohort / "patients" / largest["patient_id"]
    res = pipe.predict(study=pdir / "ct", record=pdir / "record.json", report=tmp_path / "rep")
    assert set(res) >= {"assessable", "reasons", "probability", "risk_category", "lung_rads", "nodules",
                        "modalities", "contributions", "warnings", "report"}
    assert res["assessable"] and res["nodules"] and 0 <= res["probability"] <= 1
    assert res["probability"] == max(n["probability"] for n in res["nodules"])
    assert res["risk_category"] in ("low", "intermediate")
    for n in res["nodules"]:
        assert len(n["center_mm"]) == 3 and n["diameter_mm"] >= 4 and n["type"] in ("solid", "part-solid", "ground-glass")
        assert default_classifier().threshold <= n["detection_score"] <= 1  # reported: at or above the classifier's threshold
    assert res["modalities"] == {"ct": True, "mri": False, "record": True}
    assert set(res["contributions"]["masked_delta"]) == {"ct", "record"}
    assert any("mri missing" in w for w in res["warnings"])
    assert res["report"].endswith(".png") and (tmp_path / "rep").is_dir()
    json.dumps(res)  # JSON-ready


def test_record_only_and_mri(tiny_model, tiny_cohort):
    from medical import Pipeline

    pipe = Pipeline.from_checkpoint(tiny_model, device="cpu")
    mri_patient = next(p for p in sorted((tiny_cohort / "patients").iterdir()) if (p / "mri").exists())
    res = pipe.predict(record=mri_patient / "record.json", mri=mri_patient / "mri")
    assert res["modalities"] == {"ct": False, "mri": True, "record": True}
    with pytest.raises(UserError, match="nothing to predict"):
        pipe.predict()


def test_risk_category_uses_the_bts_pre_pet_threshold_only():
    from medical.clinical import risk_category

    assert risk_category(0.05) == "low" and risk_category(0.10) == "intermediate"
    assert risk_category(0.95) == "intermediate"  # Herder's > 70 % band is post-PET: never assigned here
    assert risk_category(0.5, assessable=False) == "not_assessable"
    assert risk_category(None, has_nodule=False) == "no_nodule"


def test_lung_rads_v2022_from_size_and_type():
    from medical.clinical import lung_rads, lung_rads_nodule

    solid = {"type": "solid", "spiculation": False}
    assert [lung_rads_nodule({**solid, "diameter_mm": d}) for d in (5, 7, 10, 20)] == ["2", "3", "4A", "4B"]
    assert lung_rads_nodule({**solid, "diameter_mm": 10, "spiculation": True}) == "4X"
    assert lung_rads_nodule({"type": "ground-glass", "diameter_mm": 25}) == "2"
    assert lung_rads_nodule({"type": "ground-glass", "diameter_mm": 31}) == "3"
    assert lung_rads_nodule({"type": "part-solid", "diameter_mm": 12, "solid_fraction": 0.05}) == "3"
    assert lung_rads([])["category"] == "1"


def test_checkpoint_rebuilds_and_rejects_tampering(tiny_model, tmp_path):
    from medical import Pipeline

    a = Pipeline.from_checkpoint(tiny_model, device="cpu")
    assert a.config.ct_grid == 16 and a.config.modalities == ["ct", "mri", "record"]
    bad = tmp_path / "trunc.pt"
    data = tiny_model.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="trunc.pt"):
        Pipeline.from_checkpoint(bad)


def test_evaluate_metrics_and_ablations(tiny_model, tiny_cohort):
    from medical.evaluate import evaluate

    res = evaluate(tiny_cohort, tiny_model, device="cpu")
    assert res["n"] == 12
    for k in ("auroc", "auprc", "brier", "ece", "sensitivity_at_90_specificity", "oracle_auroc"):
        assert k in res
    assert set(res["expected_over_label_draws"]) == {"fused", "oracle"}
    assert 0 <= res["brier"] <= 1 and 0 <= res["ece"] <= 1
    assert 0 <= res["ece_vs_oracle"] <= 1 and 0 <= res["oracle_ece"] <= 1
    assert set(res["ablations"]) == {"ct", "mri", "record"}
    parts = res["component_ablations"]
    assert set(parts) == {"measured linear term only", "learned residual only"}
    assert all(0 <= v <= 1 for v in parts.values())
    shard = evaluate(tiny_cohort, tiny_model, device="cpu", shard=(1, 3))
    assert shard["n"] == 4


def test_train_modality_subset_fusion_and_resume(tiny_cohort, tmp_path):
    from medical.pipeline import Pipeline
    from medical.train import train

    small = ["model.ct_grid=12", "model.ct_channels=[4]", "model.encoder_dim=8", "model.fusion_dim=8",
             "train.batch_size=6"]
    out = tmp_path / "ct_only.pt"
    res = train(tiny_cohort, out, overrides=small, fusion="concat", modalities=["ct"], epochs=1)
    assert res["epochs_run"] == 1 and out.exists()
    pipe = Pipeline.from_checkpoint(out, device="cpu")
    assert pipe.config.modalities == ["ct"] and pipe.config.fusion == "concat"
    res2 = train(tiny_cohort, out, overrides=small, fusion="concat", modalities=["ct"], epochs=2, resume=True)
    assert res2["epochs_run"] == 2  # epoch 1 restored from the .last.pt state, epoch 2 trained
    with pytest.raises(UserError, match="fusion"):
        train(tiny_cohort, tmp_path / "x.pt", overrides=small, fusion="concatt", epochs=1)
    with pytest.raises(UserError, match="modality"):
        train(tiny_cohort, tmp_path / "x.pt", overrides=small, modalities=["pet"], epochs=1)
    assert not (tmp_path / "x.pt").exists()


def test_validation_split_is_stratified_by_label():
    from medical.train import split_rows

    rows = [{"patient_id": str(i), "label": "1" if i % 5 == 0 else "0"} for i in range(40)]
    train, val = split_rows(rows, 0.25, seed=0)
    assert len(val) == 10 and not {r["patient_id"] for r in train} & {r["patient_id"] for r in val}
    assert sum(r["label"] == "1" for r in val) == 2  # the 20 % positives keep their share
    assert split_rows(rows, 0.25, seed=0) == (train, val)


def test_stored_calibration_moves_probabilities_not_the_ranking(tiny_model, tiny_cohort, tmp_path):
    import csv

    from medical import Pipeline
    from medical.evaluate import evaluate
    from mmapps.calibration import META_KEY, LogitScaling, logit
    from mmapps.checkpoint import load_checkpoint, save_checkpoint

    bundle = load_checkpoint(tiny_model)
    calibrated = tmp_path / "cal.pt"
    cal = LogitScaling(0.5, -1.0, "test", 50)
    save_checkpoint(calibrated, bundle["state_dict"], bundle["config"], {**bundle["meta"], META_KEY: cal.to_meta()})
    rows = list(csv.DictReader(open(tiny_cohort / "manifest.csv")))
    pdir = tiny_cohort / "patients" / max(rows, key=lambda r: float(r["nodule_size_mm"]))["patient_id"]
    raw = Pipeline.from_checkpoint(tiny_model, device="cpu").predict(study=pdir / "ct", record=pdir / "record.json")
    res = Pipeline.from_checkpoint(calibrated, device="cpu").predict(study=pdir / "ct", record=pdir / "record.json")
    assert res["probability"] == pytest.approx(float(cal.probability(logit([raw["probability"]]))[0]), abs=2e-4)
    assert res["calibration"]["method"] == "platt" and raw["calibration"]["method"] == "none"
    a, b = evaluate(tiny_cohort, tiny_model, device="cpu"), evaluate(tiny_cohort, calibrated, device="cpu")
    assert a["auroc"] == pytest.approx(b["auroc"]) and a["brier"] != pytest.approx(b["brier"])
    assert b["calibration"] == "platt"


def test_calibrate_refuses_a_validation_split_too_small_to_fit(tiny_model, tiny_cohort, tmp_path):
    import shutil

    from medical.train import calibrate

    copy = tmp_path / "m.pt"
    shutil.copy(tiny_model, copy)
    with pytest.raises(ValueError, match="calibration needs"):
        calibrate(copy, tiny_cohort, val_fraction=0.25)  # 3 validation patients
    assert copy.read_bytes() == tiny_model.read_bytes()  # nothing half-written


def test_measured_only_cross_validation_finds_a_signal_in_the_features():
    import torch

    from medical.evaluate import measured_only_cv
    from medical.models import MEASURED_FEATURES

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(int)
    samples, groups = [], []
    for i, label in enumerate(y):
        geom = torch.tensor(rng.normal(size=len(MEASURED_FEATURES)), dtype=torch.float32)
        geom[3] += 3.0 * label  # the size term carries the signal
        rec = torch.tensor(rng.normal(size=26), dtype=torch.float32)
        samples.append({"ct": {"geom": geom}, "record": rec})
        groups.append(i)
    ds = type("DS", (), {"samples": samples, "groups": np.array(groups)})()
    assert measured_only_cv(ds, y) > 0.85
    y_noise = rng.permutation(y)
    assert abs(measured_only_cv(ds, y_noise) - 0.5) < 0.15
    assert np.isnan(measured_only_cv(ds, y[:150]))  # rows and labels disagree: refused, not guessed


def test_linear_term_is_a_frozen_logistic_regression_of_the_training_split():
    import torch

    from medical.models import MEASURED_FEATURES, ModelConfig, build_model
    from medical.train import fit_linear_term

    cfg = ModelConfig(ct_grid=16, mri_grid=12, ct_channels=[4, 8], mri_channels=[4, 8], encoder_dim=16,
                      fusion_dim=16, modalities=["ct", "record"])
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    samples = []
    for label in y:
        geom = torch.tensor(rng.normal(size=len(MEASURED_FEATURES)), dtype=torch.float32)
        geom[3] += 2.5 * label
        samples.append({"ct": {"geom": geom}, "record": torch.tensor(rng.normal(size=26), dtype=torch.float32)})
    ds = type("DS", (), {"samples": samples})()
    info = fit_linear_term(model, ds, y.tolist())
    head = model.heads["malignancy"]
    assert info["kind"].startswith("logistic") and info["train_auroc"] > 0.9
    assert not head.measured.weight.requires_grad and not head.record.weight.requires_grad
    assert head.measured.weight[0, 3] > 0.5 > float(head.measured.weight[0, :3].abs().max())
    # the frozen term alone reproduces the regression's ranking
    geom = torch.stack([s["ct"]["geom"] for s in samples])
    rec = torch.stack([s["record"] for s in samples])
    z = (head.measured(geom) + head.record(rec)).detach().reshape(-1).numpy()
    from mmapps.metrics import binary_metrics

    assert binary_metrics(y, 1 / (1 + np.exp(-z)))["auroc"] == pytest.approx(info["train_auroc"], abs=1e-3)
    assert fit_linear_term(build_model(ModelConfig(modalities=["mri", "record"])), ds, y.tolist()) is None


def test_calibrate_on_a_held_out_cohort_uses_all_of_it(tiny_model, tiny_cohort, tmp_path):
    import csv
    import shutil

    import torch

    from medical.train import calibrate
    from mmapps.calibration import META_KEY

    copy = tmp_path / "m.pt"
    shutil.copy(tiny_model, copy)
    labelled = [r for r in csv.DictReader(open(tiny_cohort / "manifest.csv")) if r["label"] in ("0", "1")]
    res = calibrate(copy, tiny_cohort, held_out=True)
    assert res["n"] == len(labelled)  # every labelled row, not a validation split
    meta = torch.load(copy, weights_only=True)["meta"][META_KEY]
    assert "held-out calibration cohort" in meta["fitted_on"]


def test_merge_cohorts_script_makes_one_readable_cohort(tiny_cohort, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from medical.manifest import read_manifest

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "merged"
    p = subprocess.run([sys.executable, str(root / "scripts" / "merge_cohorts.py"), str(out), str(tiny_cohort),
                        f"{tiny_cohort}:5"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    _, original = read_manifest(tiny_cohort)
    merged_root, merged = read_manifest(out)
    assert len(merged) == len(original) + 5
    assert len({r["patient_id"] for r in merged}) == len(merged)  # prefixed, unique
    assert all((merged_root / r["ct"]).is_dir() and Path(r["ct"]).is_absolute() for r in merged)


def test_expected_auroc_over_label_draws_ranks_the_generating_probability_first():
    from medical.evaluate import expected_aurocs

    rng = np.random.default_rng(1)
    oracle = rng.uniform(0.02, 0.9, 600)
    noisy = oracle + rng.normal(0, 0.25, 600)
    res = expected_aurocs(oracle, {"oracle": oracle, "noisy": noisy, "random": rng.random(600)}, draws=100)
    assert res["oracle"] > res["noisy"] > res["random"]
    assert 0.45 < res["random"] < 0.55 and 0.7 < res["oracle"] < 0.95
    assert np.isnan(expected_aurocs(np.zeros(5), {"x": np.arange(5.0)}, draws=3)["x"])  # never both classes
