"""The SSH runner against a real sshd on 127.0.0.1 (CI installs openssh-server)."""

from __future__ import annotations

import json
import socket
import threading

from tests.devices.devices_helpers import DIM, free_port, ssh_runner_section, write_profile


def leftovers(sshd):
    """Folders left in the device's TMPDIR (the runner's mktemp -d must be removed)."""
    return [p for p in sshd["remote_tmp"].iterdir() if p.is_dir()]


def profile(tmp_path, sshd, **overrides):
    return write_profile(tmp_path / "remote.toml", runner=ssh_runner_section(sshd, **overrides))


def test_bench_over_ssh_copies_runs_and_cleans_up(tmp_path, sshd, multi, cli):
    result = cli("bench", multi, "--device", profile(tmp_path, sshd), "--shape", "ids=1x7", "--shape", f"x=1x7x{DIM}",
                 "--runs", 4, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["device"] == "testbox" and r["runner"] == f"ssh {sshd['user']}@127.0.0.1:{sshd['port']}"
    assert r["emulated"] is False and r["runs"] == 4 and r["threads"] == 1
    assert r["inputs"]["ids"] == {"shape": [1, 7], "dtype": "int64"}
    assert r["model"] == str(multi) and r["model_bytes"] == multi.stat().st_size
    assert leftovers(sshd) == []  # the device's temporary folder is gone


def test_agent_errors_come_back_over_ssh(tmp_path, sshd, multi, cli):
    result = cli("bench", multi, "--device", profile(tmp_path, sshd))
    assert result.exit_code == 2
    assert "dynamic dimensions in ids [batch, seq]" in result.stderr and result.stderr.count("\n") == 1
    assert leftovers(sshd) == []


def test_unknown_host_key_is_refused(tmp_path, sshd, conv, cli):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = cli("bench", conv, "--device", profile(tmp_path, sshd, known_hosts=str(empty)))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown or changed host key for 127.0.0.1") and "ssh-keyscan" in result.stderr
    assert result.stderr.count("\n") == 1


def test_unreachable_host(tmp_path, sshd, conv, cli):
    result = cli("bench", conv, "--device", profile(tmp_path, sshd, port=free_port()))  # nobody listens there
    assert result.exit_code == 2
    assert "cannot reach" in result.stderr and "Connection refused" in result.stderr
    assert result.stderr.count("\n") == 1


def test_host_that_never_answers_times_out(tmp_path, sshd, conv, cli):
    """A TCP port that accepts connections but never sends an SSH banner."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        held = []
        threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
        result = cli("bench", conv, "--device", profile(tmp_path, sshd, port=silent.getsockname()[1], connect_timeout_s=1))
    assert result.exit_code == 2
    assert "cannot reach" in result.stderr and "timed out" in result.stderr.lower()


def test_run_timeout_stops_the_agent_on_the_device(tmp_path, sshd, conv, cli):
    result = cli("bench", conv, "--device", profile(tmp_path, sshd, run_timeout_s=2), "--runs", 10**8)
    assert result.exit_code == 2
    assert "did not finish within run_timeout_s=2" in result.stderr
    assert leftovers(sshd) == []


def test_device_python_without_onnxruntime(tmp_path, sshd, conv, cli):
    bare_python = tmp_path / "python-without-ort"
    bare_python.write_text(f"#!/bin/sh\nexec {sshd['python']} -S -I \"$@\"\n")  # no site-packages
    bare_python.chmod(0o755)
    result = cli("bench", conv, "--device", profile(tmp_path, sshd, python=str(bare_python)))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "No module named 'numpy'" in result.stderr and "pip install onnxruntime numpy" in result.stderr


def test_run_dir_models_are_timed_interleaved_on_the_device(tmp_path, sshd, cli):
    from tests.devices.devices_helpers import conv_model
    from tests.devices.test_bench_command import make_run_dir

    run = make_run_dir(tmp_path / "run", {"dense": lambda p: conv_model(p, channels=64, batch=1),
                                          "mm-magnitude-c01": lambda p: conv_model(p, channels=4, batch=1)})
    result = cli("bench", run, "--device", profile(tmp_path, sshd), "--runs", 8, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    block = records["mm-magnitude-c01"]["interleaved"]
    assert block["group"] == ["dense", "mm-magnitude-c01"] and block["rounds"] == 20 and block["runs_per_round"] == 1
    assert block["bench_id"] == records["dense"]["interleaved"]["bench_id"] == records["mm-magnitude-c01"]["bench_id"]
    assert 0 < block["ratio_to_reference"]["median"] < 1  # 16x less work than dense, timed on the device
    assert leftovers(sshd) == []
