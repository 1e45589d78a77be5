"""`mixprune bench` on single ONNX files and on run directories, and its bad-input paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.devices.devices_helpers import conv_model, unsupported_op_model, write_profile

from mixprune.benchmarks.records import REQUIRED_KEYS, UNSTRUCTURED_NOTE, make_record
from mixprune.devices.fields import MB
from mixprune.devices.profiles import load_profile


@pytest.fixture
def box(tmp_path):
    return write_profile(tmp_path / "box.toml")


def test_single_file_json_record(conv, box, cli):
    result = cli("bench", conv, "--device", box, "--runs", 6, "--warmup", 2, "--threads", 2, "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert set(REQUIRED_KEYS) <= set(r)
    assert (r["device"], r["model"], r["runs"], r["warmup"], r["threads"]) == ("testbox", str(conv), 6, 2, 2)
    assert r["emulated"] is False and r["over_memory_budget"] is False and r["memory_budget_mb"] is None
    assert r["allow_spinning"] is False  # from the profile
    assert r["runner"] == "local" and r["runner_wall_ms"] > r["cold_start_ms"]


def test_single_file_table_uses_profile_defaults(conv, box, cli):
    result = cli("bench", conv, "--device", box)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{conv} on testbox (local)")
    assert "p50" in result.stdout and "5 runs after 1 warm-up, 1 intra-op threads" in result.stdout


def test_memory_budget_is_a_verdict_not_an_error(tmp_path, conv, cli):
    tight = write_profile(tmp_path / "tight.toml", budget="memory_mb = 1\nlatency_ms = 1000000\nsize_mb = 1e-6\n")
    result = cli("bench", conv, "--device", tight, "--json")
    assert result.exit_code == 0
    r = json.loads(result.stdout)
    assert r["over_memory_budget"] is True and r["peak_rss_mb"] > 1 and r["memory_budget_mb"] == 1
    assert r["over_latency_budget"] is False and r["latency_budget_ms"] == 1000000
    assert r["over_size_budget"] is (r["model_bytes"] / MB > 1e-6) and r["size_budget_mb"] == 1e-6
    assert "OVER BUDGET" in cli("bench", conv, "--device", tight).stdout


@pytest.mark.parametrize("n_bytes, over", [(1_040_000, False), (MB, False), (MB + 1, True)])
def test_budgets_mean_mb_of_2_20_bytes(tmp_path, n_bytes, over):
    """Both budgets count the MB of peak_rss_mb, 2^20 bytes: 1,040,000 bytes (over 1e6) fit in 1 MB."""
    profile = load_profile(write_profile(tmp_path / "p.toml", budget="memory_mb = 1\nsize_mb = 1\n"))
    raw = {"latency_ms": {"p50": 1.0}, "peak_rss_mb": n_bytes / MB, "model_bytes": n_bytes}
    r = make_record(raw, profile, "m.onnx")
    assert (r["over_size_budget"], r["over_memory_budget"]) == (over, over)


def make_run_dir(root, models: dict):
    """A run directory as the prune and export stages leave it; ``models``: id -> builder or None
    (pruned but not exported yet)."""
    (root / "dense").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"stages": {"prune": {"status": "done"}}}))
    (root / "dense" / "weights.safetensors").write_bytes(b"")
    for cid, build in models.items():
        d = root / "dense" if cid == "dense" else root / "candidates" / cid
        d.mkdir(parents=True, exist_ok=True)
        if cid != "dense":
            (d / "eval.json").write_text(json.dumps({"accuracy": 0.9}))
            (d / "strategy.json").write_text(json.dumps({"cid": cid, "kind": "mixmatch", "global_sparsity": 0.8}))
        if build:
            build(d / "model.onnx")
    return root


def exported_with_dynamic_batch(path):
    """As the exporter leaves it: a dynamic batch dimension, declared in export.json."""
    conv_model(path, batch="batch")
    (path.parent / "export.json").write_text(json.dumps({"inputs": [{"name": "x", "shape": ["batch", 3, 16, 16]}]}))


def test_run_dir_benches_every_exported_model_in_its_own_process(tmp_path, box, cli):
    run = make_run_dir(tmp_path / "run", {
        "dense": lambda p: conv_model(p, batch=1, extra_weight_mb=24),
        "mm-magnitude-c01": exported_with_dynamic_batch,
        "mm-magnitude-c02": None,
    })
    result = cli("bench", run, "--device", box, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records["mm-magnitude-c01"]["inputs"]["x"]["shape"] == [1, 3, 16, 16]  # batch 1 from export.json
    assert sorted(records) == ["dense", "mm-magnitude-c01"]
    for cid, d in (("dense", run / "dense"), ("mm-magnitude-c01", run / "candidates" / "mm-magnitude-c01")):
        on_disk = json.loads((d / "bench" / "testbox.json").read_text())
        assert on_disk == records[cid] and on_disk["candidate"] == cid
    assert not (run / "candidates" / "mm-magnitude-c02" / "bench").exists()
    # the bench records its own status in run.json, as prune and export do (not only under `mixprune run`)
    status = json.loads((run / "run.json").read_text())["stages"]["bench:testbox"]
    assert status["status"] == "done" and status["bench_id"] == records["dense"]["bench_id"]
    assert status["models"] == ["dense", "mm-magnitude-c01"] and status["done_at"] >= status["running_at"]
    assert records["mm-magnitude-c01"]["note"] == UNSTRUCTURED_NOTE and "note" not in records["dense"]
    # one fresh process per model: the small candidate does not carry the dense model's 24 MB
    assert records["dense"]["peak_rss_mb"] - records["mm-magnitude-c01"]["peak_rss_mb"] > 18
    table = cli("bench", run, "--device", box).stdout
    assert table.splitlines()[0].split()[:3] == ["model", "p50", "ms"] and "mm-magnitude-c01" in table


def test_run_dir_failure_keeps_finished_records_and_writes_no_partial_one(tmp_path, box, cli):
    run = make_run_dir(tmp_path / "run", {"dense": lambda p: conv_model(p, batch=1), "mm-magnitude-c01": unsupported_op_model})
    result = cli("bench", run, "--device", box)
    assert result.exit_code == 2 and "onnxruntime refused model.onnx" in result.stderr
    assert (run / "dense" / "bench" / "testbox.json").is_file()
    assert not (run / "candidates" / "mm-magnitude-c01" / "bench").exists() or not any((run / "candidates" / "mm-magnitude-c01" / "bench").iterdir())
    assert not list(run.rglob("*.tmp"))


def test_run_dir_without_exported_models(tmp_path, box, cli):
    run = make_run_dir(tmp_path / "run", {"mm-magnitude-c01": None})
    result = cli("bench", run, "--device", box)
    assert result.exit_code == 2 and "mixprune export" in result.stderr


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("text", "is not an ONNX model"),
    ("refused", "onnxruntime refused bad.onnx: "),
    ("unknown-device", "unknown device 'rpi9'"),
    ("malformed-profile", "'onnxruntime.intra_op_threads'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, conv, box, cli, case, expected):
    model, device = conv, box
    if case == "missing":
        model = tmp_path / "absent.onnx"
    elif case == "text":
        model = tmp_path / "notes.onnx"
        model.write_text("these are not the weights you are looking for\n")
    elif case == "refused":
        model = unsupported_op_model(tmp_path / "bad.onnx")
    elif case == "unknown-device":
        device = "rpi9"
    else:
        device = write_profile(tmp_path / "bad.toml", onnxruntime='intra_op_threads = "many"\n')
    result = cli("bench", model, "--device", device)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and expected in result.stderr and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_bad_shape_flag_is_a_usage_error(conv, box, cli):
    result = cli("bench", conv, "--device", box, "--shape", "x=1x3xbig")
    assert result.exit_code == 2 and "1x3x224x224" in result.stderr


def test_bench_does_not_import_torch(conv, box):
    code = ("import sys; from mixprune.cli import main\n"
            f"try: main(['bench', {str(conv)!r}, '--device', {str(box)!r}, '--json'])\n"
            "except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["device"] == "testbox"


def test_throttling_is_shown(tmp_path, conv, box, cli, monkeypatch):
    fake = tmp_path / "bin" / "vcgencmd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho throttled=0x50000\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = cli("bench", conv, "--device", box)
    assert result.exit_code == 0 and "throttled    0x50000" in result.stdout
