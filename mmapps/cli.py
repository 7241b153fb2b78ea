"""The root `mmapps` command: info, demo, bench, and the scenario sub-apps.

Only this module imports the scenario packages. Heavy libraries are imported inside commands so that
`mmapps --help` answers quickly.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import time
from pathlib import Path
from typing import Optional

import typer

from .cli_utils import _error_line_group, emit_json, fail, run_command

SCENARIOS = ("medical", "driving", "assistant")

app = typer.Typer(cls=_error_line_group(), no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Multimodal AI applications: medical (CT/MRI + record), driving (camera + lidar + GPS), "
                       "assistant (speech + text), on one shared fusion core.")


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"{name}.cli") is not None


for _name in SCENARIOS:
    if _available(_name):
        app.add_typer(importlib.import_module(f"{_name}.cli").app, name=_name)


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
    for scenario in SCENARIOS:
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
    from rich.console import Console
    from rich.table import Table

    out = Console()
    t = Table(title="mmapps")
    t.add_column("package")
    t.add_column("version")
    for k, v in versions.items():
        t.add_row(k, str(v))
    out.print(t)
    out.print(f"device: {'CUDA ' + str(device['gpu']) if device['cuda'] else 'CPU'} ({device['cpu_threads']} threads)")
    m = Table(title="bundled models")
    for col in ("scenario", "model", "MB", "model card"):
        m.add_column(col)
    for row in models:
        m.add_row(row["scenario"], row["model"] or "missing", str(row["size_mb"] or "-"), row["summary"] or "-")
    out.print(m)


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), "--out", help="folder for the pictures and results"),
         only: Optional[str] = typer.Option(None, "--only", help="comma-separated scenarios to run"),
         json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Run every scenario on its bundled sample with its bundled model; print results, write pictures."""
    chosen = [s.strip() for s in only.split(",")] if only else [s for s in SCENARIOS if _available(s)]
    for s in chosen:
        if s not in SCENARIOS:
            fail(f"--only: unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    results, failed = {}, []
    for s in chosen:
        module = importlib.import_module(f"{s}.cli")
        if not hasattr(module, "demo"):
            continue
        t0 = time.perf_counter()
        try:
            summary = run_command(module.demo, out / s)
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
def bench(scenario: str = typer.Argument(..., help="medical, driving or assistant"),
          quick: bool = typer.Option(False, "--quick", help="smaller sets: a smoke run, not the reported numbers"),
          json_out: bool = typer.Option(False, "--json", help="machine-readable output")):
    """The scenario benchmark of DESIGN section 5 (accuracy and speed against the targets)."""
    if scenario not in SCENARIOS:
        from .errors import suggest

        fail(f"SCENARIO must be one of {', '.join(SCENARIOS)}; got {scenario!r}{suggest(scenario, SCENARIOS)}")
    if importlib.util.find_spec(f"{scenario}.bench") is None:
        fail(f"no benchmark is available for {scenario} in this installation")
    module = importlib.import_module(f"{scenario}.bench")
    result = run_command(module.run_bench, quick=quick)
    if json_out:
        emit_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    rows = result.get("table", [])
    table = Table(title=f"mmapps bench {scenario}")
    if rows and isinstance(rows[0], dict):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        for c in cols:
            table.add_column(str(c))
        for r in rows:
            table.add_row(*[_fmt(r.get(c)) for c in cols])
    Console().print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def main() -> None:  # pragma: no cover - console script entry
    app()
