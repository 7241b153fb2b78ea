"""`mmapps bench medical`: accuracy on a fresh synthetic cohort (unseen seed) and predict latency on a
real-size CT (512x512x200) + record. Targets from DESIGN section 5."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

BENCH_SEED = 987654  # never used for training
TARGETS = {"oracle_gap": 0.02, "single_margin": 0.03, "ece": 0.05, "predict_s": 3.0, "studies_per_s": 2.0}


def real_size_study(folder: Path, seed: int = 1) -> tuple[Path, Path]:
    """A 512x512x200 chest CT series and its FHIR record, written like any synthetic patient."""
    import json

    import numpy as np

    from .io import fhir_bundle, write_dicom_series
    from .synth import EXTENT_Z_MM, FOV_XY_MM, _uid_root, render_ct, sample_variables

    rng = np.random.default_rng([seed, 512])
    v = sample_variables(rng)
    ct, spacing, _ = render_ct(v, rng, (200, 512, 512))
    assert spacing[0] == EXTENT_Z_MM / 200 and spacing[1] == FOV_XY_MM / 512
    write_dicom_series(folder / "ct", ct, spacing, modality="CT", uid_root=_uid_root(seed, 512, "ct"),
                       patient_id="BENCH512", description="real-size synthetic chest CT")
    (folder / "record.json").write_text(json.dumps(fhir_bundle("BENCH512", v)), encoding="utf-8")
    return folder / "ct", folder / "record.json"


def run_bench(quick: bool = False, model=None, workers: int = 2, cohort: str | Path | None = None) -> dict:
    """``cohort``: reuse a cohort already written by ``synth_cohort(..., seed=BENCH_SEED)`` (saves minutes)."""
    from .evaluate import evaluate
    from .pipeline import Pipeline
    from .synth import synth_cohort

    n = 200 if quick else 1000
    pipe = Pipeline.from_checkpoint(model)
    with tempfile.TemporaryDirectory(prefix="mmapps-medical-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if cohort is None:
            cohort = tmp / "cohort"
            synth_cohort(cohort, n, BENCH_SEED, workers=workers)
        synth_s = time.perf_counter() - t0
        ev = evaluate(cohort, workers=workers, pipeline=pipe)
        ct, rec = real_size_study(tmp / "big")
        pipe.predict(study=ct, record=rec)  # warm-up (imports, allocator)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            pipe.predict(study=ct, record=rec)
            times.append(time.perf_counter() - t)
    abl = ev["ablations"]
    singles = {k: v for k, v in abl.items() if v == v}
    best_single = max(singles.values()) if singles else float("nan")
    predict_s = statistics.median(times)
    rows = [
        {"metric": "fused AUROC", "value": ev["auroc"], "target": f">= oracle - {TARGETS['oracle_gap']}",
         "ok": ev["auroc"] >= ev["oracle_auroc"] - TARGETS["oracle_gap"]},
        {"metric": "oracle AUROC (Brock+PLCO)", "value": ev["oracle_auroc"], "target": "reference", "ok": None},
        *[{"metric": f"{k}-only AUROC (masked)", "value": v, "target": "ablation", "ok": None} for k, v in abl.items()],
        {"metric": "fused - best single", "value": ev["auroc"] - best_single,
         "target": f">= {TARGETS['single_margin']}", "ok": ev["auroc"] - best_single >= TARGETS["single_margin"]},
        {"metric": "ECE (15 bins)", "value": ev["ece"], "target": f"<= {TARGETS['ece']}", "ok": ev["ece"] <= TARGETS["ece"]},
        {"metric": "Brier", "value": ev["brier"], "target": "", "ok": None},
        {"metric": "predict 512x512x200 CT + record (s, median of 3)", "value": predict_s,
         "target": f"<= {TARGETS['predict_s']}", "ok": predict_s <= TARGETS["predict_s"]},
        {"metric": "evaluation throughput (studies/s)", "value": ev["studies_per_second"],
         "target": f">= {TARGETS['studies_per_s']}", "ok": ev["studies_per_second"] >= TARGETS["studies_per_s"]},
    ]
    return {"scenario": "medical", "quick": quick, "n": ev["n"], "seed": BENCH_SEED, "auroc": ev["auroc"],
            "oracle_auroc": ev["oracle_auroc"], "ablations": abl, "ece": ev["ece"], "brier": ev["brier"],
            "auprc": ev["auprc"], "sensitivity_at_90_specificity": ev["sensitivity_at_90_specificity"],
            "predict_seconds": predict_s, "predict_runs": times, "studies_per_second": ev["studies_per_second"],
            "synth_seconds": round(synth_s, 1), "model": pipe.path, "table": rows}
