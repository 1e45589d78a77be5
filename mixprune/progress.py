"""Progress bars for long steps (rich), on stderr so stdout stays parseable."""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)


def console() -> Console:
    return _console


def _quiet() -> bool:
    return os.environ.get("MIXPRUNE_QUIET") == "1"


@contextlib.contextmanager
def progress_bar():
    """A rich Progress that draws live on a terminal and stays silent when not attached to one."""
    live = _console.is_terminal and not _quiet()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=_console, disable=not live, transient=False,
    ) as progress:
        yield progress


def track(iterable, description: str, total: int | None = None):
    """Iterate with a progress bar; off a terminal, print one line at start instead."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not _console.is_terminal and not _quiet():
        print(f"{description} ({total} steps)" if total else description, file=sys.stderr, flush=True)
    with progress_bar() as progress:
        yield from progress.track(iterable, total=total, description=description)


def say(message: str) -> None:
    """A status line on stderr."""
    if not _quiet():
        _console.print(message, highlight=False)
