"""Hostile inputs for the root `mmapps` commands (info, demo, bench) and usage errors."""
from __future__ import annotations

from pathlib import Path

from . import hostile as H
from .conftest import hostile_suite
from .harness import Case


def make_files(d: Path) -> None:
    H.write(d / "file_not_dir", "x")


def cases(d: Path) -> list[Case]:
    return [
        Case("demo_out_is_file", ["demo", "--out", f"{d}/file_not_dir", "--only", "medical"], category="output"),
        Case("demo_out_inside_file", ["demo", "--out", f"{d}/file_not_dir/x", "--only", "driving"], category="output"),
        Case("demo_unknown_scenario", ["demo", "--out", f"{d}/demo", "--only", "medicall"], [f"{d}/demo"],
             category="option"),
        Case("bench_unknown_scenario", ["bench", "drivng"], category="option"),
        Case("unknown_command", ["predikt"], category="usage"),
        Case("unknown_option", ["info", "--jsn"], category="usage"),
        Case("missing_argument", ["medical", "predict", "--record"], category="usage"),
        Case("wrong_type", ["driving", "synth", f"{d}/s", "--frames", "many"], [f"{d}/s"], category="usage"),
    ]


PENDING: dict[str, str] = {}
results, test_root_hostile_input_is_one_clean_error = hostile_suite("root", make_files, cases, PENDING)
