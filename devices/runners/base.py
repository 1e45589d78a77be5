"""The runner base class and the registry (register / get / list), timm style.

A runner takes a model file and the agent's configuration, runs ``devices/agent.py`` in a
fresh process somewhere (here, over SSH, under qemu) and returns the agent's record. Each
runner declares the fields of a profile's ``[runner]`` section it understands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mixprune.errors import BenchmarkError, DeviceError
from mixprune.registry import Registry

from ..fields import Field

AGENT = Path(__file__).resolve().parents[1] / "agent.py"

RUNNERS: Registry[type[Runner]] = Registry("runner", DeviceError)


def register_runner(cls):
    """Class decorator: make a runner available to profiles as ``[runner] kind = cls.kind``."""
    return RUNNERS.register(cls.kind)(cls)


def get_runner(kind: str) -> type[Runner]:
    return RUNNERS.get(kind)


def list_runners() -> list[str]:
    return sorted(RUNNERS.names())


class Runner:
    """Base class. Subclasses set ``kind``, ``fields`` (with ``run_timeout_s``) and implement ``_execute``."""

    kind = ""
    emulated = False
    fields: dict[str, Field] = {}

    def __init__(self, options: dict):
        self.options = options

    def describe(self) -> str:
        return self.kind

    def run(self, model: Path, config: dict) -> dict:
        """Run the agent on ``model``; return its record plus ``runner`` and ``runner_wall_ms``."""
        start = time.perf_counter_ns()
        stdout, stderr, returncode = self._execute(Path(model).resolve(), json.dumps(config))
        wall_ms = (time.perf_counter_ns() - start) / 1e6
        record = self._parse(stdout, stderr, returncode)
        record.update(runner=self.describe(), runner_wall_ms=wall_ms)
        return record

    def _execute(self, model: Path, config_json: str) -> tuple[str, str, int]:
        """Run the agent; return its stdout, stderr and exit code."""
        raise NotImplementedError

    def _timed_out(self) -> str:
        return f"the agent did not finish within run_timeout_s={self.options['run_timeout_s']:g} s on {self.describe()}"

    def _parse(self, stdout: str, stderr: str, returncode: int) -> dict:
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        try:
            record = json.loads(lines[-1]) if lines else None
        except ValueError:
            record = None
        if isinstance(record, dict) and "error" in record:
            raise BenchmarkError(record["error"])
        if not isinstance(record, dict) or returncode != 0:
            detail = (stderr.strip().splitlines() or ["no output"])[-1]
            if "No module named" in detail:
                detail += "; the device needs `pip install onnxruntime numpy` for its python"
            raise DeviceError(f"the agent failed on {self.describe()} (exit code {returncode}): {detail}")
        return record
