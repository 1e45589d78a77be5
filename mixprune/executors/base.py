"""The executor interface and its registry.

A stage hands an executor one function, the work every task shares (``Shared``: put into the
object store once per run, not once per task) and the items; ``map`` yields (item, result) as
each task finishes, in whatever order. Tasks return records and small tensors, never the run
directory's files: the driver writes those. A task's own failure is raised in the driver, as
it would be locally.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterable, Iterator

from mixprune.errors import ConfigError
from mixprune.registry import Registry

EXECUTORS: Registry = Registry("executor", ConfigError)

Task = Callable[[Any, Any], Any]  # (shared work, item) -> result; a module-level function


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
    address: str | None = None  # ray: "auto", "host:port", or None for a local instance
    cpus_per_task: int = 1


class Executor(abc.ABC):
    """Runs ``task(shared, item)`` for many items. A context manager: it starts and stops what it needs."""

    def __init__(self, options: ExecutorOptions):
        self.options = options

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    @abc.abstractmethod
    def map(self, task: Task, shared: Any, items: Iterable) -> Iterator[tuple[Any, Any]]:
        """(item, task(shared, item)) for every item, as each finishes."""

    def describe(self) -> str:
        """Where the tasks run, for progress lines."""
        return "in this process"

    def status(self) -> str:
        """What the current ``map`` has in flight, for progress lines ("" when nothing runs elsewhere)."""
        return ""


def open_executor(name: str, options: ExecutorOptions) -> Executor:
    return EXECUTORS.get(name)(options)
