"""Run hostile command lines through the real CLI in capped child processes and judge them.

The contract every hostile input must meet (issue 13): exit status 2, exactly one stderr line and it starts with
``error:``, no traceback, no output file (or hidden temp file) left behind, peak memory under 2 GB, no hang.
Cases are batched (one child process imports torch once and runs many command lines; see ``_child.py``); the child
runs under an address-space cap (``RLIMIT_AS``; torch needs a few GB of address space just to load) and its
peak resident memory is measured with ``os.wait4``.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_child.py")
ADDRESS_SPACE_CAP = 6 * 2**30      # torch + open3d + MiniLM need ~4 GB of address space, not of memory
PEAK_RSS_LIMIT_MB = 2048            # what the issue allows on any hostile input
ENV_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MMAPPS_THREADS": "1"}


@dataclass
class Case:
    """One hostile command line: ``argv`` after ``mmapps``; ``outputs`` must not exist afterwards."""
    id: str
    argv: list[str]
    outputs: list[str] = field(default_factory=list)
    stdin: str | None = None
    category: str = ""
    allow_success: bool = False  # odd but valid input: exit 0 with a result is fine too, a crash is not
    expect: str | None = None    # a regex the error line must match (when the reason itself is what is tested)


@dataclass
class Result:
    case: Case
    code: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    maxrss_mb: float = 0.0
    note: str = ""

    def problems(self) -> list[str]:
        """Everything that breaks the contract ([] = clean)."""
        out = []
        if self.note:
            out.append(self.note)
        if self.case.allow_success and self.code == 0:
            return out + (["traceback on stderr"] if "Traceback" in self.stderr else [])
        if self.code != 2:
            out.append(f"exit {self.code}, expected 2")
        lines = [l for l in self.stderr.splitlines() if l.strip()]
        if "Traceback" in self.stderr:
            out.append("traceback on stderr")
        if len(lines) != 1 or not lines[0].startswith("error:"):
            out.append(f"{len(lines)} stderr lines, expected one 'error:' line")
        if self.case.expect and lines and not re.search(self.case.expect, lines[-1]):
            out.append(f"error line does not match {self.case.expect!r}")
        if self.maxrss_mb > PEAK_RSS_LIMIT_MB:
            out.append(f"peak RSS {self.maxrss_mb:.0f} MB > {PEAK_RSS_LIMIT_MB} MB")
        for p in self.case.outputs:
            p = Path(p)
            if p.exists():
                out.append(f"output {p} was written")
            if p.parent.is_dir():
                stale = [q.name for q in p.parent.glob(f".{p.name}.*")]
                if stale:
                    out.append(f"temp files left: {stale}")
        return out

    def describe(self) -> str:
        return (f"mmapps {' '.join(self.case.argv)}\n  -> {'; '.join(self.problems())}\n"
                f"  stderr: {self.stderr[-1500:]!s}\n  stdout: {self.stdout[-300:]!s}")


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def _wait(proc: subprocess.Popen, timeout: float, progress=None) -> tuple[int | None, float, bool]:
    """(exit status, peak RSS MB, timed out) of a child, measured with wait4. ``progress()`` returns a value that
    changes whenever the child makes progress; the timeout counts from the last change."""
    last, mark = time.monotonic(), progress() if progress else None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_maxrss / 1024, False
        if progress:
            now = progress()
            if now != mark:
                last, mark = time.monotonic(), now
        if time.monotonic() - last > timeout:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, usage.ru_maxrss / 1024, True
        time.sleep(0.05)


def run_batch(cases: list[Case], work: Path, case_timeout: float = 120.0) -> dict[str, Result]:
    """Run the cases in capped child processes, several per process. A case that hangs (no progress for
    ``case_timeout`` seconds) or kills its process is recorded as such, and a fresh child runs the rest."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **ENV_THREADS, "COLUMNS": "200"}
    results: dict[str, Result] = {}
    start = 0
    while start < len(cases):
        part = work / f"from{start}"
        part.mkdir(exist_ok=True)
        todo = cases[start:]
        spec = part / "cases.json"
        spec.write_text(json.dumps([{"argv": c.argv, "stdin": c.stdin} for c in todo]), encoding="utf-8")
        with open(part / "child.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(CHILD), str(spec), str(part)], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=_limit_address_space)
            code, batch_rss, timed_out = _wait(proc, case_timeout, lambda: len(list(part.glob("*.json"))))
        done = 0
        for i, case in enumerate(todo):
            f = part / f"{i}.json"
            if not f.exists():
                break
            r = json.loads(f.read_text(encoding="utf-8"))
            results[case.id] = Result(case, r["code"], r["stdout"], r["stderr"], r["seconds"], r["maxrss_mb"])
            done += 1
        if done < len(todo) and code != 3:  # the case in progress hung or took its process down (3: restart)
            case = todo[done]
            err = (part / f"{done}.err").read_text(errors="replace") if (part / f"{done}.err").exists() else ""
            why = (f"hang: no result after {case_timeout:.0f} s" if timed_out
                   else f"the process died (exit {code}, peak RSS {batch_rss:.0f} MB)")
            results[case.id] = Result(case, None, "", err + (part / "child.log").read_text(errors="replace")[-2000:],
                                      0.0, batch_rss, note=why)
            done += 1
        start += done
    return results


def run_cli(case: Case, timeout: float = 120.0) -> Result:
    """One case through the installed `mmapps` script itself (a fresh interpreter, as a user runs it)."""
    exe = Path(sys.executable).with_name("mmapps")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mmapps"]
    env = {**os.environ, **ENV_THREADS, "COLUMNS": "200"}
    stdin = open(case.stdin, "rb") if case.stdin else subprocess.DEVNULL
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd + case.argv, cwd=ROOT, env=env, stdin=stdin, stdout=out, stderr=err,
                                preexec_fn=_limit_address_space)
        t0 = time.perf_counter()
        code, rss, timed_out = _wait(proc, timeout)
        out.seek(0)
        err.seek(0)
        res = Result(case, code, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                     time.perf_counter() - t0, rss, note="hang: timed out" if timed_out else "")
    if case.stdin:
        stdin.close()
    return res
