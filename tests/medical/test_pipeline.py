"""Training (core Trainer), checkpoints, Pipeline.predict, evaluation: a tiny end-to-end run in seconds."""
import json

import numpy as np
import pytest

from mmapps.errors import UserError


def test_pipeline_predict_keys(tiny_model, tiny_cohort, tmp_path):
    from medical import Pipeline

    pipe = Pipeline.from_checkpoint(tiny_model, device="cpu")
    pdir = tiny_cohort / "patients" / "P00000"
    res = pipe.predict(study=pdir / "ct", record=pdir / "record.json", report=tmp_path / "rep")
    assert set(res) >= {"probability", "risk_category", "modalities", "contributions", "warnings", "report"}
    assert 0 <= res["probability"] <= 1
    assert res["risk_category"] in ("low", "intermediate", "high")
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


def test_risk_category_thresholds():
    from medical.pipeline import risk_category

    assert risk_category(0.05) == "low" and risk_category(0.10) == "intermediate"
    assert risk_category(0.70) == "intermediate" and risk_category(0.71) == "high"


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
    assert 0 <= res["brier"] <= 1 and 0 <= res["ece"] <= 1
    assert set(res["ablations"]) == {"ct", "mri", "record"}
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


def test_preprocess_real_size_shapes():
    from medical.io import Volume
    from medical.preprocess import preprocess_ct

    rng = np.random.default_rng(0)
    arr = np.full((200, 512, 512), -1000, np.float32)
    arr[:, 100:400, 60:450] = 40
    arr[20:180, 150:350, 90:230] = -850
    arr[20:180, 150:350, 280:420] = -850
    arr += rng.normal(0, 5, (1, 512, 512)).astype(np.float32)
    x = preprocess_ct(Volume(arr, (1.0, 0.7, 0.7), "CT", "mem"), 32, 24)
    assert x["grid"].shape == (2, 32, 32, 32) and x["crop"].shape == (1, 24, 24, 24) and x["geom"].shape == (5,)
    assert x["_candidate"]["box"] is not None  # the two "lungs" were found


def test_candidate_finds_large_nodules(tmp_path):
    """The nodule-centred crop is centred on the index nodule whenever it is >= 12 mm."""
    import csv

    from medical.io import load_ct
    from medical.preprocess import find_candidate
    from medical.synth import EXTENT_Z_MM, FOV_XY_MM, synth_cohort

    shape = (48, 96, 96)
    synth_cohort(tmp_path / "c", 16, seed=21, shape=shape, mri_fraction=0)
    rows = [r for r in csv.DictReader(open(tmp_path / "c" / "manifest.csv")) if float(r["nodule_size_mm"]) >= 12]
    assert rows, "the seed should give some large nodules"
    spacing = (EXTENT_Z_MM / shape[0], FOV_XY_MM / shape[1], FOV_XY_MM / shape[2])
    for r in rows:
        vol = load_ct(tmp_path / "c" / r["ct"])
        cand = find_candidate(vol.array, vol.spacing)
        mm = [(c - (n - 1) / 2) * sp for c, n, sp in zip(cand["centre"], shape, spacing)]
        true = [float(r["nodule_z_mm"]), float(r["nodule_y_mm"]), float(r["nodule_x_mm"])]
        dist = sum((a - b) ** 2 for a, b in zip(mm, true)) ** 0.5
        assert dist < float(r["nodule_size_mm"]) / 2 + 2 * max(spacing), (r["patient_id"], dist)


def test_validation_split_is_stratified_by_label():
    from medical.train import split_rows

    rows = [{"patient_id": str(i), "label": "1" if i % 5 == 0 else "0"} for i in range(40)]
    train, val = split_rows(rows, 0.25, seed=0)
    assert len(val) == 10 and not {r["patient_id"] for r in train} & {r["patient_id"] for r in val}
    assert sum(r["label"] == "1" for r in val) == 2  # the 20 % positives keep their share
    assert split_rows(rows, 0.25, seed=0) == (train, val)
