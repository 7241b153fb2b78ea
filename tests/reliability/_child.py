"""Child process of the hostile-input suite: runs a batch of `mmapps ...` command lines through the real CLI entry
point (``mmapps.cli:app``, what the installed ``mmapps`` script calls), one after another, each with its own
stdout/stderr captured at the file-descriptor level (so C libraries and warnings are caught too).

Usage: python _child.py CASES.json RESULTS_DIR. For case i it writes RESULTS_DIR/i.json:
{"code": exit status, "stdout": ..., "stderr": ..., "seconds": ..., "maxrss_mb": peak RSS so far}.
Running several cases in one process amortises the torch import; the parent sets the memory cap. After a case
that pushed the peak RSS high, the child exits (code 3) so the parent measures the next cases in a fresh process.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback


RESTART_ABOVE_MB = float(os.environ.get("MMAPPS_RELIABILITY_RESTART_MB", "1536"))
RESTART_CODE = 3


def _clear_warning_registries() -> None:
    """So a warning shown once in an earlier case is shown again (each case is judged as if run alone)."""
    for mod in list(sys.modules.values()):
        reg = getattr(mod, "__warningregistry__", None)
        if isinstance(reg, dict):
            reg.clear()


def run_case(argv: list[str], stdin_path: str | None, out_dir: str, index: int) -> dict:
    from mmapps.cli import app

    out_file, err_file = os.path.join(out_dir, f"{index}.out"), os.path.join(out_dir, f"{index}.err")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2), os.dup(0)
    fo, fe = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fi = os.open(stdin_path or os.devnull, os.O_RDONLY)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    os.dup2(fi, 0)
    t0 = time.perf_counter()
    code = 0
    try:
        app(args=argv, prog_name="mmapps")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what the interpreter would do with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.dup2(saved[2], 0)
        for fd in (fo, fe, fi, *saved):
            os.close(fd)
    seconds = time.perf_counter() - t0
    with open(out_file, encoding="utf-8", errors="replace") as f:
        out = f.read()
    with open(err_file, encoding="utf-8", errors="replace") as f:
        err = f.read()
    return {"code": code, "stdout": out[-4000:], "stderr": err[-4000:], "seconds": round(seconds, 3),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    cases_file, out_dir = sys.argv[1], sys.argv[2]
    with open(cases_file, encoding="utf-8") as f:
        cases = json.load(f)
    for i, case in enumerate(cases):
        if case.get("chdir"):
            os.chdir(case["chdir"])
        _clear_warning_registries()
        res = run_case(case["argv"], case.get("stdin"), out_dir, i)
        with open(os.path.join(out_dir, f"{i}.json"), "w", encoding="utf-8") as f:
            json.dump(res, f)
        if res["maxrss_mb"] > RESTART_ABOVE_MB:
            sys.exit(RESTART_CODE)  # peak RSS only grows: the next case needs a fresh process to be measured


if __name__ == "__main__":
    main()
