"""Run the agent on this machine, a fresh subprocess per measurement so memory figures never mix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mixprune.errors import DeviceError

from ..fields import Field
from .base import AGENT, Runner, register_runner


@register_runner
class LocalRunner(Runner):
    kind = "local"
    fields = {
        "kind": Field("str"),
        "python": Field("str", "", help="interpreter with numpy and onnxruntime; empty: the one running mixprune"),
        "run_timeout_s": Field("number", 3600, minimum=1, help="give up on one model after this long"),
    }

    def command(self, models: list[Path], config_json: str) -> list[str]:
        return [self.options["python"] or sys.executable, str(AGENT), *map(str, models), "--json-config", config_json]

    def _execute(self, models: list[Path], config_json: str) -> tuple[str, str, int]:
        cmd = self.command(models, config_json)
        timeout = self.timeout_s(models)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise DeviceError(f"cannot start {cmd[0]} for the {self.kind} runner: {exc.strerror}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(self._timed_out(models)) from exc
        return proc.stdout, proc.stderr, proc.returncode
