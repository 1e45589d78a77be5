"""The torch-free agent: run as a plain script, as a Pi would, and read its one JSON line."""

from __future__ import annotations

import gzip
import json
import os
import runpy
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
from tests.devices.devices_helpers import DIM, conv_model, embedding_table, unsupported_op_model

from mixprune.devices.fields import MB
from mixprune.devices.runners import AGENT


def run_agent(model, **config):
    proc = subprocess.run([sys.executable, str(AGENT), str(model), "--json-config", json.dumps(config)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_record_of_a_plain_model(conv):
    code, r = run_agent(conv, runs=15, warmup=2, intra_op_threads=1, allow_spinning=False)
    assert code == 0, r
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert (r["runs"], r["warmup"], r["threads"], r["inter_op_threads"]) == (15, 2, 1, 1)
    assert r["cold_start_ms"] == pytest.approx(r["session_create_ms"] + r["first_run_ms"])
    data = conv.read_bytes()
    assert r["model_bytes"] == len(data)
    assert r["model_gzip_bytes"] == len(gzip.compress(data, compresslevel=6, mtime=0))
    assert r["onnxruntime_version"] == ort.__version__
    assert r["execution_providers"] == ["CPUExecutionProvider"]
    assert r["inputs"] == {"x": {"shape": [1, 3, 16, 16], "dtype": "float32"}}
    assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    assert r["throttled"] is None or r["throttled"].startswith("0x")  # vcgencmd only on a Pi


def test_zero_threads_means_every_usable_core(conv):
    code, r = run_agent(conv, runs=2, warmup=0, intra_op_threads=0)
    assert code == 0 and r["threads"] == len(os.sched_getaffinity(0)) == r["usable_cores"]


def test_multi_input_int64_model_gets_valid_inputs(multi):
    """Dynamic dims come from shapes; the generated ids index the table and the outputs are
    exactly table[ids] + x."""
    code, r = run_agent(multi, runs=3, warmup=0, shapes={"ids": [2, 5], "x": [2, 5, DIM]})
    assert code == 0, r
    assert r["inputs"] == {"ids": {"shape": [2, 5], "dtype": "int64"}, "x": {"shape": [2, 5, DIM], "dtype": "float32"}}

    sys.modules.pop("agent", None)
    agent = runpy.run_path(str(AGENT))  # the same input generation, in-process, to check outputs
    session = ort.InferenceSession(str(multi), providers=["CPUExecutionProvider"])
    feeds = agent["make_inputs"](session, {"ids": [2, 5], "x": [2, 5, DIM]}, 0)
    (y,) = session.run(None, feeds)
    assert feeds["ids"].dtype == np.int64 and set(np.unique(feeds["ids"])) <= {0, 1}
    np.testing.assert_allclose(y, embedding_table()[feeds["ids"]] + feeds["x"], rtol=1e-6)


def test_the_agent_counts_the_same_mb():
    """The agent imports nothing of mixprune, so it keeps its own MB: the one of the profiles."""
    assert runpy.run_path(str(AGENT))["MB"] == MB


def test_dynamic_dims_without_shapes_are_listed(multi):
    code, r = run_agent(multi, runs=1)
    assert code == 2
    assert "ids [batch, seq]" in r["error"] and "x [batch, seq, 4]" in r["error"]
    assert "--shape ids=NxN" in r["error"] and "--shape x=NxNx4" in r["error"]


@pytest.mark.parametrize("shapes, message", [
    ({"ids": [2, 5]}, "dynamic dimensions in x"),
    ({"ids": [2, 5], "x": [2, 5]}, "has 2 dims"),
    ({"ids": [2, 5], "x": [2, 5, 7]}, "dim 2 is 7"),
    ({"ids": [2, 5], "x": [2, 5, DIM], "mask": [2, 5]}, "'mask'"),
])
def test_bad_shapes(multi, shapes, message):
    code, r = run_agent(multi, runs=1, shapes=shapes)
    assert code == 2 and message in r["error"]


def test_onnxruntime_refusal_is_reported_with_its_message(tmp_path):
    code, r = run_agent(unsupported_op_model(tmp_path / "bad.onnx"), runs=1)
    assert code == 2
    assert r["error"].startswith("onnxruntime refused bad.onnx:") and "NoSuchOperator" in r["error"]


def test_bad_config_is_an_error(conv):
    for config, message in (({"runz": 3}, "keys among"), ({"runs": 0}, "runs and rounds must be >= 1"), ({"rounds": 0}, "got runs=100 rounds=0"),
                            ({"graph_optimization_level": "max"}, "graph_optimization_level"),
                            ({"execution_providers": ["NoSuchExecutionProvider"]}, "not available here")):
        code, r = run_agent(conv, **config)
        assert code == 2 and message in r["error"], r


def test_peak_rss_agrees_with_the_kernels_vmhwm(tmp_path):
    """The agent's peak RSS (getrusage) vs VmHWM read from /proc for the same process, right
    after the measurement; a 24 MB weight makes the figure mean something."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("VmHWM needs Linux /proc")
    model = conv_model(tmp_path / "big.onnx", batch=1, extra_weight_mb=24)
    wrapper = (
        "import runpy, sys\n"
        f"sys.argv = [{str(AGENT)!r}, {str(model)!r}, '--json-config', '{{\"runs\": 5, \"warmup\": 1}}']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print('VMHWM', int(hwm.split()[1]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    record = json.loads(next(ln for ln in lines if ln.startswith("{")))
    vmhwm_mb = int(lines[-1].split()[1]) * 2**10 / MB  # kB
    assert record["peak_rss_mb"] == pytest.approx(vmhwm_mb, rel=0.05)
    # and the figure sees the model: the weights are resident on top of the imports
    assert record["peak_rss_mb"] - record["baseline_rss_mb"] >= 0.9 * record["model_bytes"] / MB


def test_peak_rss_does_not_inherit_the_launching_process(tmp_path):
    """A 300 MB parent starts the agent on a tiny model: the agent's peak is its own (Linux
    getrusage would report the parent's high-water mark, which survives fork + exec)."""
    code = (
        "import json, subprocess, sys\n"
        "ballast = bytearray(300 * 2**20)\n"
        "ballast[::4096] = b'x' * len(ballast[::4096])\n"
        f"out = subprocess.run([sys.executable, {str(AGENT)!r}, {str(conv_model(tmp_path / 'm.onnx', batch=1))!r}, "
        "'--json-config', '{\"runs\": 2}'], capture_output=True, text=True).stdout\n"
        "print(json.loads(out)['peak_rss_mb'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 250


def test_pi_throttling_flags_are_recorded(tmp_path, conv):
    """On a Pi, `vcgencmd get_throttled` answers e.g. throttled=0x50005 (under-voltage and
    throttling have occurred); a stand-in on PATH plays the firmware here."""
    fake = tmp_path / "bin" / "vcgencmd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$1\" = get_throttled ] && echo throttled=0x50005\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, str(AGENT), str(conv), "--json-config", '{"runs": 2}'],
                          capture_output=True, text=True, env=env, timeout=120)
    record = json.loads(proc.stdout)
    assert record["throttled"] == "0x50005"
    for state in (record["before"], record["after"]):  # frequency / temperature, None where /sys lacks them
        assert set(state) == {"cpu_mhz", "temperature_c"}


def test_peak_rss_bounds_what_an_outside_observer_sees(tmp_path):
    """Independent of the agent's own reading: sample the agent's VmRSS from outside while it
    runs; no sample may exceed the reported peak (and the samples do see the weights)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux /proc")
    model = conv_model(tmp_path / "big.onnx", batch=1, extra_weight_mb=24)
    proc = subprocess.Popen([sys.executable, str(AGENT), str(model), "--json-config", '{"runs": 200, "warmup": 1}'],
                            stdout=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                samples += [int(ln.split()[1]) * 2**10 / MB for ln in f if ln.startswith("VmRSS:")]
        except (OSError, ValueError):  # the process is exiting
            pass
        time.sleep(0.002)
    record = json.loads(proc.communicate()[0])
    assert len(samples) > 10
    assert max(samples) <= record["peak_rss_mb"] * 1.05
    assert max(samples) - record["baseline_rss_mb"] >= 0.9 * record["model_bytes"] / MB
