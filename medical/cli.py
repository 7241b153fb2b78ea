"""`mmapps medical ...`: thin Typer commands over synth / train / evaluate / predict.

Only typer and the standard library are imported here at module level: `mmapps --help` must stay fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mmapps.cli_utils import DEVICE_OPT, JSON_OPT, MODEL_OPT, SHARD_OPT, WORKERS_OPT

app = typer.Typer(help="CT/MRI + patient record -> lung-nodule malignancy risk (synthetic-data models, "
                       "not for clinical use).", no_args_is_help=True)


def _run(fn, *args, **kwargs):
    from mmapps.cli_utils import run_command

    return run_command(fn, *args, **kwargs)


def _show(title: str, result: dict, json_out: bool) -> None:
    """A result on stdout: one JSON object with --json, otherwise a key/value table."""
    from mmapps.cli_utils import emit_json, print_table

    if json_out:
        emit_json(result)
    else:
        print_table([{"key": k, "value": v} for k, v in result.items()], title)


@app.command()
def synth(out: Path = typer.Argument(..., help="output folder (new)"),
          patients: int = typer.Option(100, "--patients", "-n", help="number of patients"),
          seed: int = typer.Option(0, "--seed", help="random seed (same seed -> byte-identical output)"),
          shape: str = typer.Option("64x128x128", "--shape", help="CT size: slices x rows x cols"),
          mri_fraction: float = typer.Option(0.4, "--mri-fraction", help="share of patients with an MRI"),
          store: str = typer.Option("dicom", "--store", help="dicom: the scans as DICOM series; inputs: only what "
                                    "the default model reads from them (~0.3 MB instead of 33 MB for a 256^3 CT)"),
          workers: int = WORKERS_OPT,
          shard: Optional[str] = SHARD_OPT,
          json_out: bool = JSON_OPT):
    """Synthetic cohort: chest CT DICOM series, MRI for part of it, FHIR R4 records, manifest.csv."""

    def go():
        from mmapps.cli_utils import check_output_dir
        from mmapps.parallel import parse_shard

        from .synth import parse_shape, synth_cohort

        check_output_dir(out)
        res = synth_cohort(out, patients, seed, parse_shape(shape), mri_fraction, workers, parse_shard(shard),
                           store)
        _show("medical synth", res, json_out)

    _run(go)


@app.command()
def train(data: Path = typer.Argument(..., help="cohort folder with manifest.csv"),
          out: Path = typer.Option(..., "--out", help="checkpoint to write"),
          config: Optional[Path] = typer.Option(None, "--config", help="TOML/YAML config (model.*, train.*)"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. train.lr=3e-4"),
          fusion: Optional[str] = typer.Option(None, "--fusion", help="concat, weighted, gated or attention"),
          modalities: Optional[str] = typer.Option(None, "--modalities", help="subset of ct,mri,record"),
          epochs: Optional[int] = typer.Option(None, "--epochs"),
          resume: bool = typer.Option(False, "--resume", help="continue from the last epoch's state"),
          workers: Optional[int] = typer.Option(None, "--workers", min=1, help="processes for reading studies "
                                                "(default: the config's, 1)"),
          device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (default: the config's)"),
          json_out: bool = JSON_OPT):
    """Train the fusion model (core Trainer; launch with torchrun for DDP)."""

    def go():
        from mmapps.cli_utils import check_output_file

        from .train import train as train_fn

        check_output_file(out)
        mods = [m.strip() for m in modalities.split(",") if m.strip()] if modalities is not None else None
        res = train_fn(data, out, config, set_, fusion, mods, epochs, resume, workers, device)
        summary = {"out": res["out"], "epochs_run": res["epochs_run"], "n_train": res["n_train"],
                   "n_val": res["n_val"], **{k: v for k, v in res["best"].items() if k != "lr"}}
        for k, v in (res.get("calibration") or {}).items():
            summary[f"calibration {k}"] = v
        _show("medical train", summary, json_out)

    _run(go)


@app.command("train-detector")
def train_detector(out: Path = typer.Option(..., "--out", help="classifier JSON to write"),
                   scans: int = typer.Option(300, "--scans", help="synthetic chest CTs to measure candidates on"),
                   seed: int = typer.Option(13579, "--seed", help="their seed (keep it apart from bench seeds)"),
                   false_per_scan: float = typer.Option(1.0, "--false-per-scan",
                                                        help="reporting threshold: at most this many false "
                                                             "candidates per held-out scan"),
                   workers: int = WORKERS_OPT,
                   json_out: bool = JSON_OPT):
    """Fit the nodule detector's false-candidate classifier on synthetic chest CTs (bundled:
    data/medical/nodule_classifier.json)."""

    def go():
        from mmapps.cli_utils import check_output_file

        from .train import train_nodule_classifier

        check_output_file(out)
        _show("medical train-detector", train_nodule_classifier(out, scans, seed, workers=workers,
                                                                false_per_scan=false_per_scan), json_out)

    _run(go)


@app.command()
def calibrate(data: Path = typer.Argument(..., help="the cohort folder (manifest.csv) the model was trained on"),
              model: Path = typer.Option(..., "--model", help="checkpoint to calibrate (rewritten in place)"),
              val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.01, max=0.9,
                                                 help="the training run's validation fraction"),
              seed: int = typer.Option(0, "--seed", help="the training run's train.seed"),
              held_out: bool = typer.Option(False, "--held-out",
                                            help="DATA is a separate calibration cohort the model never saw: "
                                                 "fit on all of it"),
              workers: int = WORKERS_OPT,
              json_out: bool = JSON_OPT):
    """Fit post-hoc Platt scaling on the training run's validation split (or on a held-out calibration cohort)
    and store it in the checkpoint (`train` does this itself at the end on the validation split)."""

    def go():
        from .train import calibrate as calibrate_fn

        try:
            res = calibrate_fn(model, data, val_fraction, seed, workers, held_out=held_out)
        except ValueError as exc:
            from mmapps.errors import UserError

            raise UserError(str(exc)) from None
        _show("medical calibrate", res, json_out)

    _run(go)


@app.command()
def evaluate(data: Path = typer.Argument(..., help="cohort folder with manifest.csv"),
             model: Optional[Path] = MODEL_OPT,
             workers: int = WORKERS_OPT,
             shard: Optional[str] = SHARD_OPT,
             device: str = DEVICE_OPT,
             json_out: bool = JSON_OPT):
    """AUROC, AUPRC, Brier, ECE, sensitivity@90 % specificity, oracle AUROC, single-modality ablations."""

    def go():
        from mmapps.parallel import parse_shard

        from .evaluate import evaluate as evaluate_fn

        res = evaluate_fn(data, model, workers, parse_shard(shard), device)
        if json_out:
            _show("medical evaluate", res, True)
        else:
            flat = {k: v for k, v in res.items() if k != "ablations"}
            flat.update({f"ablation {k} only": v for k, v in res["ablations"].items()})
            _show("medical evaluate", flat, False)

    _run(go)


@app.command()
def predict(study: Optional[Path] = typer.Argument(None, help="CT: DICOM series folder, DICOM file or NIfTI"),
            record: Optional[Path] = typer.Option(None, "--record", help="FHIR R4 Bundle, flat JSON or one-row CSV"),
            mri: Optional[Path] = typer.Option(None, "--mri", help="MRI: DICOM series/file or NIfTI"),
            report: Optional[Path] = typer.Option(None, "--report", help="folder for the PNG report"),
            fhir_out: Optional[Path] = typer.Option(None, "--fhir-out", help="write a FHIR R4 RiskAssessment (JSON)"),
            as_of: Optional[str] = typer.Option(None, "--as-of", help="scan date YYYY-MM-DD for the record's age "
                                                "(default: the CT's StudyDate)"),
            model: Optional[Path] = MODEL_OPT,
            device: str = DEVICE_OPT,
            json_out: bool = JSON_OPT):
    """Assessability, nodules (LPS mm), malignancy probability, BTS risk band, Lung-RADS, contributions."""

    def go():
        import datetime as dt
        import json

        from mmapps.cli_utils import check_output_dir, check_output_file, console
        from mmapps.errors import UserError
        from mmapps.io import atomic_write_text

        from .clinical import fhir_risk_assessment
        from .pipeline import Pipeline

        if report is not None:
            check_output_dir(report)
        if fhir_out is not None:
            check_output_file(fhir_out)
        try:
            when = dt.date.fromisoformat(as_of) if as_of else None
        except ValueError:
            raise UserError(f"--as-of must be a date YYYY-MM-DD; got {as_of!r}") from None
        pipe = Pipeline.from_checkpoint(model, device=device)
        res = pipe.predict(study=study, record=record, mri=mri, report=report, as_of=when)
        if fhir_out is not None:
            atomic_write_text(fhir_out, json.dumps(fhir_risk_assessment(res, res.get("patient_id"),
                                                                    _date(res.get("as_of")) or when), indent=1)
                              + "\n")
            res["fhir_out"] = str(fhir_out)
        if not json_out:
            for w in res["warnings"]:
                console.print(f"[yellow]warning:[/yellow] {w}", markup=True, highlight=False)
            table = {"assessable": res["assessable"], **{f"reason {i + 1}": r for i, r in enumerate(res["reasons"])},
                     "probability": res["probability"], "risk category": res["risk_category"],
                     "recommendation": res["recommendation"],
                     "Lung-RADS": (res.get("lung_rads") or {}).get("category")}
            for i, n in enumerate(res["nodules"]):
                table[f"nodule {i + 1}"] = (f"{n['diameter_mm']} mm {n['type']} at LPS {n['center_mm']} mm, "
                                            f"p={n['probability']}, P(nodule) {n.get('detection_score')}")
            table.update({f"contribution {k}": v for k, v in res["contributions"].get("masked_delta", {}).items()})
            table["report"] = res["report"]
            res = table
        _show("medical predict", res, json_out)

    _run(go)


def _date(text):
    import datetime as dt

    return dt.date.fromisoformat(text) if text else None


def demo(out_dir: Path) -> dict:
    """`mmapps demo`: the bundled model on the bundled sample patient; writes the report PNG into out_dir."""
    from .pipeline import DATA_DIR, Pipeline

    sample = DATA_DIR / "samples" / "patient"
    pipe = Pipeline.from_checkpoint()
    mri = sample / "mri" if (sample / "mri").exists() else None
    res = pipe.predict(study=sample / "ct", record=sample / "record.json", mri=mri, report=Path(out_dir))
    return {"scenario": "medical", "input": str(sample), **res}
