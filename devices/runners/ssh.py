"""Run the agent on a remote device over SSH (the system ``ssh`` client, key authentication).

One connection per measurement: the agent and the model(s) travel as a tar stream on stdin
into a fresh ``mktemp -d`` folder on the device, the device's python runs the agent there, its
JSON line comes back on stdout, and a shell trap removes the folder however the run ends.
Host keys are checked against known_hosts (``StrictHostKeyChecking=yes``) unless the
profile says otherwise; ``BatchMode`` means a missing key fails instead of prompting.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

from mixprune.errors import DeviceError

from ..fields import Field
from .base import AGENT, Runner, register_runner

_SSH_FAILED = 255  # ssh's own exit code for connection / authentication failures
_TIMED_OUT = 124  # coreutils / busybox `timeout` on the device
_GRACE_S = 30  # copying the model, and `timeout -k 5` killing a stuck agent


def _remote_name(index: int) -> str:
    """A model's name in the device's temporary folder."""
    return f"under-test-{index}.onnx"


def _tar_stream(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, path in files.items():
            tar.add(path, arcname=arcname)
    return buf.getvalue()


@register_runner
class SshRunner(Runner):
    kind = "ssh"
    fields = {
        "kind": Field("str"),
        "host": Field("str", help="device address, e.g. raspberrypi.local"),
        "port": Field("int", 22, minimum=1),
        "user": Field("str", "", help="login name; empty: ssh's default"),
        "key": Field("str", "", help="private key file; empty: ssh's default keys / agent"),
        "python": Field("str", "python3", help="interpreter on the device with numpy and onnxruntime"),
        "known_hosts": Field("str", "", help="known_hosts file; empty: ~/.ssh/known_hosts"),
        "strict_host_key_checking": Field("bool", True, help="false: trust a new host key on first use"),
        "connect_timeout_s": Field("int", 10, minimum=1),
        "run_timeout_s": Field("number", 1800, minimum=1, help="limit for the agent on the device, per model"),
    }

    def destination(self) -> str:
        user = self.options["user"]
        return f"{user}@{self.options['host']}" if user else self.options["host"]

    def describe(self) -> str:
        return f"ssh {self.destination()}:{self.options['port']}"

    def ssh_command(self) -> list[str]:
        o = self.options
        cmd = ["ssh", "-p", str(o["port"]), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={o['connect_timeout_s']}",
               "-o", "StrictHostKeyChecking=" + ("yes" if o["strict_host_key_checking"] else "accept-new"),
               "-o", "LogLevel=ERROR"]
        if o["known_hosts"]:
            cmd += ["-o", f"UserKnownHostsFile={os.path.expanduser(o['known_hosts'])}"]
        if o["key"]:
            cmd += ["-i", os.path.expanduser(o["key"]), "-o", "IdentitiesOnly=yes"]
        return cmd + [self.destination()]

    def remote_script(self, count: int, config_json: str, limit_s: float) -> str:
        # `timeout` ends the agent on the device too when the run takes too long: killing
        # the local ssh client alone would leave it running there.
        python = shlex.quote(self.options["python"])
        models = " ".join(f'"$d/{_remote_name(i)}"' for i in range(count))
        return (
            'd=$(mktemp -d) || exit 1; trap \'rm -rf "$d"\' EXIT; trap \'exit 129\' HUP INT TERM; '
            f'tar -xf - -C "$d" && timeout -k 5 {limit_s:g} {python} "$d/agent.py" {models} '
            f'--json-config {shlex.quote(config_json)}'
        )

    def _execute(self, models: list[Path], config_json: str) -> tuple[str, str, int]:
        payload = _tar_stream({"agent.py": AGENT, **{_remote_name(i): m for i, m in enumerate(models)}})
        limit = self.timeout_s(models)
        cmd = self.ssh_command() + ["sh -c " + shlex.quote(self.remote_script(len(models), config_json, limit))]
        # The device's own `timeout` normally ends a long run (and the trap cleans up); the
        # local limit only catches a device that stops answering altogether.
        timeout = limit + self.options["connect_timeout_s"] + _GRACE_S
        try:
            proc = subprocess.run(cmd, input=payload, capture_output=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise DeviceError("the ssh client is not installed (apt-get install openssh-client)") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(self._timed_out(models)) from exc
        stdout, stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if proc.returncode == _SSH_FAILED:
            raise DeviceError(self._connection_error(stderr))
        if proc.returncode == _TIMED_OUT:
            raise DeviceError(self._timed_out(models))
        return stdout, stderr, proc.returncode

    def _connection_error(self, stderr: str) -> str:
        lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
        if any("Host key verification failed" in ln for ln in lines):
            where = self.options["known_hosts"] or "~/.ssh/known_hosts"
            return (f"unknown or changed host key for {self.options['host']}:{self.options['port']}; check its "
                    f"fingerprint, then add it with `ssh-keyscan -p {self.options['port']} {self.options['host']} "
                    f">> {where}`")
        detail = lines[-1] if lines else "no message from ssh"
        return f"cannot reach {self.describe()}: {detail}"
