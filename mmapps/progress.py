"""Rich progress bars on a terminal, silence elsewhere (CI logs, pipes, tests)."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _interactive() -> bool:
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str = "working", total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr when it is a terminal."""
    if not _interactive():
        yield from iterable
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.console import Console

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)
