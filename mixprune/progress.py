"""Progress bars for long steps (rich), on stderr so stdout stays parseable."""

from __future__ import annotations

import contextlib
import os

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
    """Iterate with a live progress bar on a terminal; silently elsewhere (logs stay short)."""
    with progress_bar() as progress:
        yield from progress.track(iterable, total=total, description=description)


class Counter:
    """Progress of a long outer loop: a live bar on a terminal, a line every ``every`` steps in logs."""

    def __init__(self, progress, description: str, total: int, every: int = 10):
        self.progress, self.description, self.total, self.every = progress, description, total, every
        self.task = progress.add_task(description, total=total)
        self.done = 0

    def advance(self, note: str = "") -> None:
        self.done += 1
        self.progress.advance(self.task)
        if not _console.is_terminal and (self.done % self.every == 0 or self.done == self.total):
            say(f"{self.description}: {self.done}/{self.total} {note}".rstrip())


def say(message: str) -> None:
    """A status line on stderr."""
    if not _quiet():
        _console.print(message, highlight=False)
