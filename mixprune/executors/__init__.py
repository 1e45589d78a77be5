"""Where the per-candidate work of a stage runs: in this process (``local``) or as tasks on a Ray
cluster (``ray``). Either way the driver alone writes the run directory, as each result returns."""

from . import local, ray_cluster  # each registers itself
from .base import EXECUTORS, Executor, ExecutorOptions, TaskFailure, device_resource, given_or_local, open_executor, run_tasks

__all__ = ["EXECUTORS", "Executor", "ExecutorOptions", "TaskFailure", "device_resource", "given_or_local", "open_executor", "run_tasks", "local", "ray_cluster"]
