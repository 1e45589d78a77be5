"""Fixtures for the device / benchmark tests: models, a CLI runner, a throw-away sshd."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from tests.devices.devices_helpers import conv_model, free_port, multi_input_model, need

from tests import helpers


@pytest.fixture
def conv(tmp_path):
    return conv_model(tmp_path / "conv.onnx", batch=1)


@pytest.fixture
def multi(tmp_path):
    return multi_input_model(tmp_path / "multi.onnx")


@pytest.fixture
def cli():
    """Invoke `mixprune ...` in-process; returns click's Result (exit_code, stdout, stderr)."""
    return helpers.cli


# --- a real sshd on 127.0.0.1 ------------------------------------------------------------
@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """Start OpenSSH's sshd on a free loopback port with its own host key and authorized key.

    Yields a dict with port, key (client private key), known_hosts (holding the host key),
    remote_tmp (the device's TMPDIR, to check clean-up) and python (the device's python).
    """
    sshd_bin = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    need(sshd_bin is not None and shutil.which("ssh") is not None, "OpenSSH (sshd and ssh)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
    remote_tmp = d / "remote_tmp"
    remote_tmp.mkdir()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nSetEnv TMPDIR={remote_tmp}\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    if proc.poll() is not None or time.monotonic() >= deadline:
        proc.kill()
        pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-500:]}")
    yield {"port": port, "key": d / "client_key", "known_hosts": d / "known_hosts", "remote_tmp": remote_tmp,
           "python": sys.executable, "user": getpass.getuser(), "dir": d}
    proc.terminate()
    proc.wait(timeout=10)
