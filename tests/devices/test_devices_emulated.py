"""aarch64 onnxruntime under qemu-aarch64-static, in the rootfs devices/emulation/setup_rootfs.sh
builds (.ci/run builds it, so CI runs these)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.devices.devices_helpers import DIM, need, write_profile

from mixprune.devices.runners.emulated import SETUP_SCRIPT, default_rootfs


@pytest.mark.slow
def test_multi_input_model_end_to_end_on_emulated_arm64(multi, cli):
    rootfs = Path(default_rootfs())
    need(shutil.which("qemu-aarch64-static") is not None, "qemu-aarch64-static")
    need((rootfs / "usr/bin/python3").is_file(), f"the arm64 rootfs at {rootfs} (devices/emulation/setup_rootfs.sh)")
    result = cli("bench", multi, "--device", "arm64-qemu", "--shape", "ids=1x8", "--shape", f"x=1x8x{DIM}", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["emulated"] is True and r["device"] == "arm64-qemu"
    assert r["machine"] == "aarch64"  # the agent really ran on the arm64 python
    assert r["inputs"]["ids"]["dtype"] == "int64" and r["runs"] == 20
    assert 0 < r["latency_ms"]["min"] <= r["latency_ms"]["p50"]
    assert "EMULATED" in cli("bench", multi, "--device", "arm64-qemu", "--shape", "ids=1x8",
                             "--shape", f"x=1x8x{DIM}", "--runs", 2).stdout


def test_missing_qemu_is_one_clear_line(tmp_path, conv, cli):
    profile = write_profile(tmp_path / "p.toml", runner='kind = "emulated"\nqemu = "qemu-nonexistent-static"\n')
    result = cli("bench", conv, "--device", profile)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "qemu-nonexistent-static not found; install it with `apt-get install qemu-user-static`" in result.stderr


def test_missing_rootfs_is_one_clear_line(tmp_path, conv, cli):
    need(shutil.which("qemu-aarch64-static") is not None, "qemu-aarch64-static")
    missing = tmp_path / "none"
    profile = write_profile(tmp_path / "p.toml", runner=f'kind = "emulated"\nrootfs = "{missing}"\n')
    result = cli("bench", conv, "--device", profile)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"build it with `bash {SETUP_SCRIPT} {missing}`" in result.stderr and SETUP_SCRIPT.is_file()


@pytest.mark.slow
def test_every_int8_variant_runs_on_emulated_arm64_and_never_decides(tmp_path, cli):
    """dense, a 90% candidate, a channel-cut candidate and both INT8 variants of each, benched under
    qemu and on the host."""
    from mixprune.exporter import stage
    from mixprune.runs import RunDir

    from tests.exporter.conftest import SPECS, add_cut_candidate, make_run

    rootfs = Path(default_rootfs())
    need(shutil.which("qemu-aarch64-static") is not None, "qemu-aarch64-static")
    need((rootfs / "usr/bin/python3").is_file(), f"the arm64 rootfs at {rootfs} (devices/emulation/setup_rootfs.sh)")
    run = make_run(tmp_path / "run", SPECS["resnet"], {"mm-magnitude-p90": 0.9})
    add_cut_candidate(RunDir(run), SPECS["resnet"], "st-magnitude-cut")
    stage.export_run(run, [], stage.ExportOptions(parity_samples=32, quantize="auto"))
    folders = RunDir(run)
    folders.set_stage("prune", "done")
    for model in (folders.dense, folders.candidate("mm-magnitude-p90"), folders.candidate("st-magnitude-cut")):  # as prune writes them
        model.write_eval({"accuracy": 0.1, "tune_accuracy": 0.1, "accuracy_finetuned": None,
                          "tune_accuracy_finetuned": None})
    result = cli("bench", run, "--device", "arm64-qemu", "--runs", 4, "--warmup", 1, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert sorted(records) == sorted(f"{m}{s}" for m in ("dense", "mm-magnitude-p90", "st-magnitude-cut") for s in ("", "+int8", "+int8u"))
    for cid, r in records.items():
        assert r["emulated"] is True and r["machine"] == "aarch64", cid
        assert r["interleaved"]["reference"] == "dense" and r["interleaved"]["ratio_to_reference"]["median"] > 0
    assert cli("bench", run, "--device", "host", "--runs", 20).exit_code == 0
    ranked = cli("rank", run, "--device", "arm64-qemu", "--device", "host", "--max-drop", 100)
    assert ranked.exit_code == 0, ranked.output
    ranking = json.loads((run / "ranking.json").read_text())
    emulated = next(d for d in ranking["devices"] if d["name"] == "arm64-qemu")
    assert ranking["choice_device"] == "host" and emulated["emulated"] and emulated["latency_band_ms"] is None
    assert all(r["devices"]["arm64-qemu"]["vs_dense"] is None for r in ranking["candidates"])  # no speed claims
