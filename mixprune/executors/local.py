"""Every task in this process, one after the other (the default; imports no Ray)."""

from __future__ import annotations

from .base import EXECUTORS, Executor


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    def map(self, task, shared, items):
        for item in items:
            yield item, task(shared, item)
