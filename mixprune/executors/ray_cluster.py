"""Tasks on a Ray cluster: an existing one (``--ray-address auto`` or ``host:port``) or a local
instance that mixprune starts and stops (no address).

The shared work goes into Ray's object store once per ``map`` (``ray.put``) and every task gets
the reference. Each task asks Ray for ``cpus_per_task`` CPUs and pins torch (and the OpenMP
pools of whatever it loads) to that many threads: Ray sets OMP_NUM_THREADS from num_cpus but
isolates nothing. A worker process that dies mid-task is retried (``MAX_RETRIES``); a task that
raises is not (its failure is deterministic) and the exception reaches the driver.

A device is a custom resource, one unit (``device_resource``): a benchmark task holds it, so
two never time the same device at once, and it runs on the node that holds the device. A local
instance holds every device of the run; on an existing cluster, the node that reaches a device
declares it (``ray start ... --resources '{"device:rpi4": 1}'``).
"""

from __future__ import annotations

import json
import socket

from mixprune.errors import ExecutorError

from .base import EXECUTORS, Executor, device_resource

MAX_RETRIES = 3  # worker processes killed mid-task; a task's own exception is never retried
CONNECT_TIMEOUT_S = 5.0


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("--executor ray needs Ray, an optional extra: pip install -e \".[ray]\"") from exc
    return ray


def _check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """A host:port address must accept a TCP connection first: Ray itself waits minutes on a dead one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorError(f"--ray-address must be auto or host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                            "`ray start --head` or check --ray-address") from exc


def _pinned(task, cpus: int, shared, item):
    """Run ``task`` in a Ray worker with torch limited to the CPUs Ray gave it."""
    import torch

    torch.set_num_threads(cpus)
    return task(shared, item)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    def __enter__(self):
        ray = self.ray = _import_ray()
        cpus = self.options.cpus_per_task
        env = {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus), "MIXPRUNE_QUIET": "1"}
        self.started = not ray.is_initialized()
        if self.started:
            where = self.options.address or "a local Ray instance"
            if self.options.address not in (None, "auto"):
                _check_reachable(self.options.address)
            try:
                # a local instance holds the run's devices; an existing cluster's nodes declare theirs
                devices = None if self.options.address else {device_resource(d): 1 for d in self.options.devices}
                ray.init(address=self.options.address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": env}, logging_level="ERROR", resources=devices)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
                detail = " ".join(str(exc).split())[:200]
                raise ExecutorError(f"cannot reach the Ray cluster at {where} ({type(exc).__name__}: {detail})") from exc
        self.remote = ray.remote(_pinned)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus)  # tasks that run at once
        self.pending, self.running_at_most = 0, self.slots
        return self

    def describe(self) -> str:
        return f"on Ray, {self.slots} at a time"

    def status(self) -> str:
        running = min(self.pending, self.running_at_most)
        return f" ({running} running, {self.pending - running} queued)" if self.pending else ""

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()

    def map(self, task, shared, items, resources=None):
        ray = self.ray
        resources = resources or {}
        cluster = ray.cluster_resources()
        missing = sorted(set(resources) - set(cluster))
        if missing:
            declared = json.dumps({name: 1 for name in missing})
            raise ExecutorError(f"no node of the Ray cluster holds {', '.join(missing)}: start the node that "
                                f"reaches it with `ray start --address ... --resources '{declared}'`")
        # as many run at once as CPUs allow and, for a held resource, as the cluster has units of it
        self.running_at_most = min([self.slots, *(int(cluster[name] // amount) for name, amount in resources.items())])
        shared_ref = ray.put(shared)  # once, not once per task
        remote = self.remote.options(num_cpus=self.options.cpus_per_task, max_retries=MAX_RETRIES,
                                     retry_exceptions=False, **({"resources": resources} if resources else {}))
        pending = {remote.remote(task, self.options.cpus_per_task, shared_ref, item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            self.pending = len(pending)
            try:
                yield item, ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None  # the task's own exception, as locally
