"""The root `mmapps` command: info, demo, bench, and the scenario sub-apps, all iterating over the scenario
registry (mmapps.scenarios). Only this module mounts the scenario packages. Heavy libraries are imported inside
commands so that `mmapps --help` answers quickly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from .cli_utils import _error_line_group, console as err_console, emit_json, fail, print_table, run_command, quiet_library_output
from .scenarios import get_scenario, list_scenarios

quiet_library_output()

app = typer.Typer(cls=_error_line_group(), no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Multimodal AI applications: medical (CT/MRI + record), driving (camera + lidar + GPS), "
                       "assistant (speech + text), on one shared fusion core.")


for _name in list_scenarios():
    app.add_typer(get_scenario(_name).app, name=_name)


@app.command()
def info(json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Versions, device, bundled models and their model cards."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    from .paths import data_dir

    versions = {"mmapps": __version__}
    for pkg in ("torch", "torchvision", "torchaudio", "monai", "pydicom", "nibabel", "open3d", "scikit-learn",
                "pocketsphinx", "sentence-transformers", "typer"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    import torch

    device = {"cuda": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    models = []
    for scenario in list_scenarios():
        path = data_dir() / scenario / "model.pt"
        card = data_dir() / scenario / "MODEL_CARD.md"
        summary = None
        if card.is_file():
            lines = [l.strip() for l in card.read_text(encoding="utf-8").splitlines() if l.strip()]
            summary = next((l for l in lines if not l.startswith("#")), None)
        models.append({"scenario": scenario, "model": str(path) if path.is_file() else None,
                       "size_mb": round(path.stat().st_size / 2**20, 2) if path.is_file() else None,
                       "card": str(card) if card.is_file() else None, "summary": summary})
    result = {"versions": versions, "device": device, "bundled_models": models, "data_dir": str(data_dir())}
    if json_out:
        emit_json(result)
        return
    print_table([{"package": k, "version": v} for k, v in versions.items()], title="mmapps")
    typer.echo(f"device: {'CUDA ' + str(device['gpu']) if device['cuda'] else 'CPU'} ({device['cpu_threads']} threads)")
    print_table([{"scenario": r["scenario"], "model": r["model"] or "missing", "MB": r["size_mb"],
                  "model card": r["summary"]} for r in models], title="bundled models")


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), "--out", help="folder for the pictures and results"),
         only: Optional[str] = typer.Option(None, "--only", help="comma-separated scenarios to run"),
         json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Run every scenario on its bundled sample with its bundled model; print results, write pictures."""
    chosen = [s.strip() for s in only.split(",")] if only else list_scenarios()
    for s in chosen:
        if s not in list_scenarios():
            fail(f"--only: unknown scenario {s!r}; choose from {', '.join(list_scenarios())}")
    from .cli_utils import check_output_dir

    run_command(check_output_dir, out)  # an --out that is a file or unwritable: one error before any work
    results, failed = {}, []
    for s in chosen:
        t0 = time.perf_counter()
        try:
            summary = run_command(get_scenario(s).demo, out / s)
            results[s] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), "result": summary}
        except typer.Exit:
            failed.append(s)
            results[s] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2)}
    if json_out:
        emit_json(results)
    else:
        from rich.console import Console

        console = Console()
        for s, r in results.items():
            console.rule(f"[bold]{s}[/bold] ({r['seconds']} s)")
            console.print_json(json.dumps(r.get("result"), default=str)) if r["ok"] else console.print("[red]failed")
        console.print(f"pictures and results in {out.resolve()}")
    if failed:
        raise typer.Exit(1)


@app.command()
def bench(scenario: str = typer.Argument(..., help="a registered scenario: medical, driving or assistant"),
          quick: bool = typer.Option(False, "--quick", help="smaller sets: a smoke run, not the reported numbers"),
          json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
          markdown: bool = typer.Option(False, "--markdown", help="the README table (markdown) on stdout"),
          out: Optional[Path] = typer.Option(None, "--out", help="folder for the bench's pictures (e.g. medical's "
                                                               "reliability diagram)")):
    """The scenario benchmark of DESIGN section 5: rows {metric, measured, target, met}."""
    spec = run_command(get_scenario, scenario)
    if out is not None:
        from .cli_utils import check_output_dir

        run_command(check_output_dir, out)  # refused before minutes of work, not after
    report = run_command(spec.bench, quick=quick)
    if out is not None:
        for path in run_command(report.write_figures, out):
            err_console.print(f"wrote {path}")
    if json_out:
        emit_json(report.to_dict())
    elif markdown:
        typer.echo(report.to_markdown())
    else:
        rows = [{"metric": r.metric, "measured": r.measured, "target": r.target, "met": r.verdict}
                for r in report.rows]
        print_table(rows, title=f"mmapps bench {scenario} — {report.dataset} (seed {report.seed})")


def main() -> None:  # pragma: no cover - console script entry
    app()
