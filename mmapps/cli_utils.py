"""CLI plumbing shared by the root and the scenario sub-apps: errors -> exit 2, JSON output."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import UserError


class _Console:
    """Lazy rich console on stderr (rich import deferred: keeps `mmapps --help` fast)."""

    _console = None

    def __getattr__(self, name):
        if _Console._console is None:
            from rich.console import Console

            _Console._console = Console(stderr=True)
        return getattr(_Console._console, name)


console = _Console()


def to_jsonable(obj: Any) -> Any:
    """numpy / torch / Path / dataclass values -> plain JSON (NaN -> null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return obj


def emit_json(obj: Any) -> None:
    """Print one JSON object on one line of stdout (JSON lines when called per item)."""
    sys.stdout.write(json.dumps(to_jsonable(obj)) + "\n")
    sys.stdout.flush()


def quiet_library_output() -> None:
    """Library chatter that is not ours to print on the CLI's stderr: the tqdm bars and info logs of Hugging Face
    model loading ("Loading weights: 100%"). mmapps shows its own progress (rich, on stderr). Set by the root CLI
    only, with setdefault, so a user's own settings win."""
    import os

    for key, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def fail(message: str, code: int = 2):
    """One 'error:' line on stderr and exit (2 = bad input or usage)."""
    import typer

    message = " ".join(str(message).split())  # exactly one line
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


# Exceptions that mean "the user's input is wrong", not "mmapps has a bug".
def _user_error_types():
    types = [UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError]
    try:
        import typer  # noqa: F401
        import click

        types.append(click.exceptions.BadParameter)
    except ImportError:
        pass
    return tuple(types)


def run_command(fn: Callable, *args, **kwargs):
    """Call fn; user errors become one 'error:' line and exit code 2, bugs keep their traceback."""
    import typer
    import warnings

    # Library warnings (torch, PIL, sklearn) are held back while the command runs: a clean error must be exactly
    # one stderr line, and the warnings of a run that failed on bad input only add noise. A run that succeeds
    # shows them at the end.
    with warnings.catch_warnings(record=True) as caught:
        try:
            result = fn(*args, **kwargs)
        except typer.Exit:
            raise
        except _user_error_types() as e:
            text = str(e)
            if isinstance(e, OSError) and getattr(e, "filename", None):
                text = f"{e.filename}: {e.strerror or text}"
            fail(text or type(e).__name__)
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            raise typer.Exit(130)
        except BaseException:
            _replay(caught)  # a genuine bug: everything helps
            raise
    _replay(caught)
    return result


def _replay(caught) -> None:
    import warnings

    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def user_command(fn: Callable) -> Callable:
    """Decorator form of run_command for Typer commands."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return run_command(fn, *args, **kwargs)

    return wrapper


def _click_exceptions():
    """Typer >= 0.2x vendors click as typer._click; older ones use click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover
        from click import exceptions
    return exceptions


def _error_line_group():
    """A TyperGroup whose usage errors are one 'error:' line + exit 2 (Typer prints a multi-line box)."""
    import typer
    from typer.core import TyperGroup

    exc = _click_exceptions()

    class ErrorLineGroup(TyperGroup):
        def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
            code = 0
            try:
                rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
                code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
            except exc.ClickException as e:
                if type(e).__name__ == "NoArgsIsHelpError":
                    e.show()  # prints the help text
                elif isinstance(e, exc.UsageError):
                    where = e.ctx.command_path if getattr(e, "ctx", None) is not None else (prog_name or "mmapps")
                    sys.stderr.write(f"error: {' '.join(e.format_message().split())} (see '{where} --help')\n")
                else:
                    sys.stderr.write(f"error: {' '.join(e.format_message().split())}\n")
                if not standalone_mode:
                    raise
                code = e.exit_code
            except typer.Abort:
                sys.stderr.write("error: aborted\n")
                if not standalone_mode:
                    raise
                code = 1
            if standalone_mode:
                sys.exit(code)
            return code

    return ErrorLineGroup


# -- shared option aliases: every scenario's commands spell these the same way ---------------------------------
def _options():
    import typer

    return {
        "model": typer.Option(None, "--model", help="checkpoint file (default: the bundled model of this scenario)"),
        "device": typer.Option("auto", "--device", help="auto, cpu or cuda"),
        "json": typer.Option(False, "--json", help="machine-readable JSON on stdout (JSON lines for several items)"),
        "out": typer.Option(None, "--out", help="output folder"),
        "workers": typer.Option(1, "--workers", min=1, help="worker processes on this machine"),
        "shard": typer.Option(None, "--shard", help="i/n: this process does the i-th of n slices (cluster jobs)"),
    }


def __getattr__(name):
    """MODEL_OPT, DEVICE_OPT, JSON_OPT, OUT_OPT, WORKERS_OPT, SHARD_OPT: typer.Option defaults, built lazily."""
    if name == "ErrorLineGroup":
        return _error_line_group()
    if name.endswith("_OPT") and name[:-4].lower() in _options():
        return _options()[name[:-4].lower()]
    raise AttributeError(name)


def check_output_dir(path) -> "Path":
    """An output folder we can write into: refuse an existing file or an unwritable place before any work."""
    import os

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file; the output must be a folder")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write here (no permission in {parent})")
    return path


def check_output_file(path) -> "Path":
    """An output file we can write: refuse a folder, a file inside a file, or an unwritable folder up front."""
    import os

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name")
    for p in path.parents:
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{path}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"{path}: cannot write here (no permission in {p})")
            break
    return path


def print_table(rows: list[dict], title: str | None = None) -> None:
    """Results on stdout as a rich table (progress and warnings go to stderr)."""
    from rich.console import Console
    from rich.table import Table

    from .bench import format_value

    t = Table(title=title)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    for c in cols:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*[format_value(r.get(c)) for c in cols])
    Console().print(t)

