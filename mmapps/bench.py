"""One benchmark schema for every scenario: rows ``{metric, measured, target, met}`` plus the dataset and seed.

``mmapps bench SCENARIO`` prints the rows as a table, ``--json`` as JSON and ``--markdown`` as the README table,
all from the same :class:`BenchReport`. Targets are declared once per scenario as :class:`Target` values, so the
row's text and the check that decides ``met`` cannot drift apart.
"""
from __future__ import annotations

import math
import operator
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """``measured <op> value``, e.g. Target(">=", 0.85)."""

    op: str
    value: float

    def __post_init__(self):
        if self.op not in _OPS:
            raise ValueError(f"target op must be one of {', '.join(_OPS)}; got {self.op!r}")

    def met(self, measured: float | None) -> bool | None:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return False
        return bool(_OPS[self.op](measured, self.value))

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class BenchRow:
    """One line of a benchmark: ``met`` is None for reference rows (no target)."""

    metric: str
    measured: Any
    target: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        """'met', 'missed', or '' for a reference row."""
        return "" if self.met is None else ("met" if self.met else "missed")

    @classmethod
    def check(cls, metric: str, measured, target: Target | None) -> "BenchRow":
        """A row whose ``met`` is decided by ``target`` (None: a reference row)."""
        if target is None:
            return cls(metric, measured)
        return cls(metric, measured, str(target), target.met(measured))


@dataclass
class BenchReport:
    scenario: str
    dataset: str
    seed: int | None
    rows: list[BenchRow] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    machine: str = field(default_factory=lambda: describe_machine())
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))
    # pictures the bench can draw, name -> callable(path) -> path; `mmapps bench X --out DIR` writes DIR/name.png
    figures: dict = field(default_factory=dict, repr=False, compare=False)

    def add(self, metric: str, measured, target: Target | None = None) -> BenchRow:
        row = BenchRow.check(metric, measured, target)
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        out = asdict(self)
        out["figures"] = sorted(self.figures)
        return out

    def write_figures(self, folder) -> list:
        """Draw every figure into ``folder`` as <name>.png; returns the paths."""
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return [draw(folder / f"{name}.png") for name, draw in sorted(self.figures.items())]

    def to_markdown(self) -> str:
        lines = [f"**{self.scenario}** — {self.dataset} (seed {self.seed}); {self.date}, {self.machine}", "",
                 "| metric | measured | target | met |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.metric} | {format_value(r.measured)} | {r.target} | {r.verdict} |")
        return "\n".join(lines)


def format_value(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def describe_machine() -> str:
    import os

    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:  # pragma: no cover - torch always importable in an installed mmapps
        gpu = "unknown GPU"
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{os.cpu_count()} {platform.machine()} CPU cores{mem}, {gpu}"


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs (noisy shared CPUs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times
