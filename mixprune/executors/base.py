"""The executor interface and its registry.

A stage hands an executor one function, the work every task shares (a frozen dataclass of the
stage's, e.g. ``pruning.tasks.StageWork``: put into the object store once per run, not once per task) and the items; ``map`` yields (item, result) as
each task finishes, in whatever order. Tasks return records and small tensors, never the run
directory's files: the driver writes those. A task that cannot do its item for a reason of its
own (a model that cannot be cut, exported or quantized) returns a ``TaskFailure``: the stage
records it and goes on, on every executor. Anything else a task raises is raised in the driver.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Iterator

from mixprune.errors import ConfigError
from mixprune.registry import Registry

EXECUTORS: Registry = Registry("executor", ConfigError)

Task = Callable[[Any, Any], Any]  # (shared work, item) -> result; a module-level function


@dataclasses.dataclass(frozen=True)
class TaskFailure:
    """Why a task could not do its item (a deterministic failure of that item: never retried)."""
    mid: str  # the model (candidate) id
    reason: str


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    address: str | None = None  # ray: "auto", "host:port", or None for a local instance
    cpus_per_task: int = 1
    devices: tuple[str, ...] = ()  # device profiles benchmarked: a local Ray instance holds each once


def device_resource(device: str) -> str:
    """The resource a benchmark on ``device`` holds (one unit per device: two never share it)."""
    return f"device:{device}"


class Executor(abc.ABC):
    """Runs ``task(shared, item)`` for many items. A context manager: it starts and stops what it needs."""

    def __init__(self, options: ExecutorOptions):
        self.options = options

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @abc.abstractmethod
    def map(self, task: Task, shared: Any, items: Iterable, resources: dict[str, float] | None = None
            ) -> Iterator[tuple[Any, Any]]:
        """(item, task(shared, item)) for every item, as each finishes; each task holds ``resources``
        (e.g. ``{device_resource(name): 1}``) while it runs."""

    def describe(self) -> str:
        """Where the tasks run, for progress lines."""
        return "in this process"

    def status(self) -> str:
        """What the current ``map`` has in flight, for progress lines ("" when nothing runs elsewhere)."""
        return ""


def open_executor(name: str, options: ExecutorOptions) -> Executor:
    return EXECUTORS.get(name)(options)


def run_tasks(executor: Executor, task: Task, shared: Any, items: list, *, title: str, name: Callable[[Any], str],
              store: Callable[[Any, Any], None], note: Callable[[Any, Any], str] | None = None, every: int = 1,
              resources: dict[str, float] | None = None) -> dict[str, str]:
    """The one driver loop: ``task`` over ``items`` on ``executor`` (holding ``resources`` each) with a
    progress line (``title``; each item's ``name``, then ``note(item, result)`` when given; in logs a
    line every ``every`` items); ``store(item, result)`` writes each result as it returns. Returns
    {id: why} of the TaskFailures, each said as it comes, the others carrying on."""
    from mixprune.progress import Counter, progress_bar, say

    failures = {}
    if not items:
        return failures
    with progress_bar() as progress:
        counter = Counter(progress, f"{title}, {executor.describe()}", total=len(items), every=every)
        for item, outcome in executor.map(task, shared, items, resources=resources):
            if isinstance(outcome, TaskFailure):
                failures[outcome.mid] = outcome.reason
                say(f"[yellow]warning: {outcome.reason}; {outcome.mid} is left out[/yellow]")
            else:
                store(item, outcome)
            shown = name(item) + (f" {note(item, outcome)}" if note and not isinstance(outcome, TaskFailure) else "")
            counter.advance(shown + executor.status())
    return failures


@contextlib.contextmanager
def given_or_local(executor: Executor | None) -> Iterator[Executor]:
    """``executor`` (opened and closed by its owner, e.g. `mixprune run` for all its stages), or a
    local one for a stage called on its own."""
    if executor is not None:
        yield executor
        return
    with open_executor("local", ExecutorOptions()) as local:
        yield local
