"""Every task in this process, one after the other (the default; imports no Ray): a device is
never shared, whatever resources a task holds."""

from __future__ import annotations

from .base import EXECUTORS, Executor


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    def map(self, task, shared, items, resources=None):
        for item in items:
            yield item, task(shared, item)
