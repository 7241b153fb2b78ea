"""`mmapps medical ...`: thin Typer commands over synth / train / evaluate / predict.

Only typer and the standard library are imported here at module level: `mmapps --help` must stay fast.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="CT/MRI + patient record -> lung-nodule malignancy risk (synthetic-data models, "
                       "not for clinical use).", no_args_is_help=True)

MODEL_HELP = "checkpoint (default: the bundled data/medical/model.pt)"


def _run(fn, *args, **kwargs):
    from mmapps.cli_utils import run_command

    return run_command(fn, *args, **kwargs)


def _table(title: str, rows: dict) -> None:
    from rich.table import Table

    from mmapps.cli_utils import console

    t = Table(title=title)
    t.add_column("key")
    t.add_column("value")
    for k, v in rows.items():
        t.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(t)


@app.command()
def synth(out: Path = typer.Argument(..., help="output folder (new)"),
          patients: int = typer.Option(100, "--patients", "-n", help="number of patients"),
          seed: int = typer.Option(0, "--seed", help="random seed (same seed -> byte-identical output)"),
          shape: str = typer.Option("64x128x128", "--shape", help="CT size: slices x rows x cols"),
          mri_fraction: float = typer.Option(0.4, "--mri-fraction", help="share of patients with an MRI"),
          workers: int = typer.Option(1, "--workers", help="processes on this machine"),
          shard: Optional[str] = typer.Option(None, "--shard", help="i/n: write only the i-th of n slices"),
          json_out: bool = typer.Option(False, "--json", help="print JSON")):
    """Synthetic cohort: chest CT DICOM series, MRI for part of it, FHIR R4 records, manifest.csv."""

    def go():
        from mmapps.cli_utils import emit_json
        from mmapps.parallel import parse_shard

        from .synth import parse_shape, synth_cohort

        res = synth_cohort(out, patients, seed, parse_shape(shape), mri_fraction, workers, parse_shard(shard))
        emit_json(res) if json_out else _table("medical synth", res)

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
          workers: Optional[int] = typer.Option(None, "--workers", help="processes for reading studies"),
          device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda"),
          json_out: bool = typer.Option(False, "--json")):
    """Train the fusion model (core Trainer; launch with torchrun for DDP)."""

    def go():
        from mmapps.cli_utils import emit_json

        from .training import train as train_fn

        mods = [m.strip() for m in modalities.split(",") if m.strip()] if modalities is not None else None
        res = train_fn(data, out, config, set_, fusion, mods, epochs, resume, workers, device)
        summary = {"out": res["out"], "epochs_run": res["epochs_run"], "n_train": res["n_train"],
                   "n_val": res["n_val"], **{k: v for k, v in res["best"].items() if k != "lr"}}
        emit_json(summary) if json_out else _table("medical train", summary)

    _run(go)


@app.command()
def evaluate(data: Path = typer.Argument(..., help="cohort folder with manifest.csv"),
             model: Optional[Path] = typer.Option(None, "--model", help=MODEL_HELP),
             workers: int = typer.Option(1, "--workers"),
             shard: Optional[str] = typer.Option(None, "--shard", help="i/n: evaluate the i-th of n slices"),
             device: str = typer.Option("auto", "--device"),
             json_out: bool = typer.Option(False, "--json")):
    """AUROC, AUPRC, Brier, ECE, sensitivity@90 % specificity, oracle AUROC, single-modality ablations."""

    def go():
        from mmapps.cli_utils import emit_json
        from mmapps.parallel import parse_shard

        from .evaluate import evaluate as evaluate_fn

        res = evaluate_fn(data, model, workers, parse_shard(shard), device)
        if json_out:
            emit_json(res)
        else:
            flat = {k: v for k, v in res.items() if k != "ablations"}
            flat.update({f"ablation {k} only": v for k, v in res["ablations"].items()})
            _table("medical evaluate", flat)

    _run(go)


@app.command()
def predict(study: Optional[Path] = typer.Argument(None, help="CT: DICOM series folder, DICOM file or NIfTI"),
            record: Optional[Path] = typer.Option(None, "--record", help="FHIR R4 Bundle, flat JSON or one-row CSV"),
            mri: Optional[Path] = typer.Option(None, "--mri", help="MRI: DICOM series/file or NIfTI"),
            report: Optional[Path] = typer.Option(None, "--report", help="folder for the PNG report"),
            model: Optional[Path] = typer.Option(None, "--model", help=MODEL_HELP),
            device: str = typer.Option("auto", "--device"),
            json_out: bool = typer.Option(False, "--json")):
    """Malignancy probability, risk category, modality contributions (+ Grad-CAM picture with --report)."""

    def go():
        from mmapps.cli_utils import console, emit_json

        from .pipeline import Pipeline

        pipe = Pipeline.from_checkpoint(model, device=device)
        res = pipe.predict(study=study, record=record, mri=mri, report=report)
        if json_out:
            emit_json(res)
            return
        _table("medical predict", {"probability": res["probability"], "risk category": res["risk_category"],
                                   **{f"uses {k}": v for k, v in res["modalities"].items()},
                                   **{f"contribution {k}": v for k, v in res["contributions"]["masked_delta"].items()},
                                   "report": res["report"]})
        for w in res["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}")

    _run(go)


def demo(out_dir: Path) -> dict:
    """`mmapps demo`: the bundled model on the bundled sample patient; writes the report PNG into out_dir."""
    from .pipeline import DATA_DIR, Pipeline

    sample = DATA_DIR / "samples" / "patient"
    pipe = Pipeline.from_checkpoint()
    mri = sample / "mri" if (sample / "mri").exists() else None
    res = pipe.predict(study=sample / "ct", record=sample / "record.json", mri=mri, report=Path(out_dir))
    return {"scenario": "medical", "input": str(sample), **res}
