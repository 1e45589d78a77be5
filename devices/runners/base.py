"""The runner base class and the registry (register / get / list), timm style.

A runner takes model files and the agent's configuration, runs ``devices/agent.py`` in a
fresh process somewhere (here, over SSH, under qemu) and returns the agent's record: one
model measured alone (``run``), or several interleaved in one process (``interleave``).
Each runner declares the fields of a profile's ``[runner]`` section it understands; its
``run_timeout_s`` is per model.
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
        """Measure ``model`` alone; return the agent's record plus ``runner`` and ``runner_wall_ms``."""
        return self._agent([model], config)

    def interleave(self, models: list[Path], config: dict) -> dict:
        """Measure ``models`` in one agent process, their runs interleaved (agent.interleave)."""
        return self._agent(models, config)

    def _agent(self, models: list[Path], config: dict) -> dict:
        start = time.perf_counter_ns()
        stdout, stderr, returncode = self._execute([Path(m).resolve() for m in models], json.dumps(config))
        wall_ms = (time.perf_counter_ns() - start) / 1e6
        record = self._parse(stdout, stderr, returncode)
        record.update(runner=self.describe(), runner_wall_ms=wall_ms)
        return record

    def _execute(self, models: list[Path], config_json: str) -> tuple[str, str, int]:
        """Run the agent on ``models``; return its stdout, stderr and exit code."""
        raise NotImplementedError

    def timeout_s(self, models: list[Path]) -> float:
        return self.options["run_timeout_s"] * len(models)

    def _timed_out(self, models: list[Path]) -> str:
        per_model = self.options["run_timeout_s"]
        return (f"the agent did not finish within run_timeout_s={per_model:g} s per model "
                f"({len(models)} model{'s' if len(models) > 1 else ''}) on {self.describe()}")

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
