"""Shared plumbing of the hostile-input suite: run a scenario's cases once per module, judge each one.

At the end, a summary line per scenario gives the counts the issue asks for: hostile cases tried / clean.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from .harness import Case, Result, run_batch

TALLY: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # scenario -> [tried, clean]


def case_params(cases: list[Case], pending: dict[str, str]):
    """pytest params over case ids; a case that needs a fix outside this suite's ownership is an xfail with the
    reason (it turns into a pass when the fix lands)."""
    return [pytest.param(c.id, id=c.id, marks=pytest.mark.xfail(reason=pending[c.id], strict=False)
                         if c.id in pending else ()) for c in cases]


def judge(scenario: str, result: Result) -> None:
    problems = result.problems()
    TALLY[scenario][0] += 1
    TALLY[scenario][1] += not problems
    assert not problems, result.describe()


def run_module_cases(tmp_path_factory, name: str, make_files, cases, case_timeout: float = 90.0) -> dict[str, Result]:
    d = tmp_path_factory.mktemp(name)
    make_files(d)
    batch = cases(d)
    return run_batch(batch, d / "_results", case_timeout=case_timeout)


def hostile_suite(scenario: str, make_files, cases, pending: dict[str, str]):
    """The module-scoped fixture and the parametrized test of one scenario's hostile cases:
    ``results, test_x = hostile_suite(...)`` in the scenario's test module."""

    @pytest.fixture(scope="module")
    def results(tmp_path_factory):
        return run_module_cases(tmp_path_factory, scenario, make_files, cases)

    @pytest.mark.parametrize("case_id", case_params(cases(Path("/collect")), pending))
    def test_hostile_input_is_one_clean_error(results, case_id):
        judge(scenario, results[case_id])

    return results, test_hostile_input_is_one_clean_error


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_line("hostile inputs (tried / clean): " + ", ".join(
            f"{s} {t}/{c}" for s, (t, c) in sorted(TALLY.items())))
