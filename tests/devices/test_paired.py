"""Interleaved timing: several models in one agent process, paired ratios round by round."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys

import pytest
from tests.devices.devices_helpers import conv_model, write_profile

from mixprune.benchmarks import paired
from mixprune.devices.runners import AGENT


def interleave(models, **config):
    proc = subprocess.run([sys.executable, str(AGENT), *map(str, models), "--json-config", json.dumps(config)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_round_order_rotates_and_reverses():
    order = runpy.run_path(str(AGENT))["round_order"]
    rounds = [order(3, r) for r in range(6)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds)
    assert rounds[:2] == [[0, 1, 2], [0, 2, 1]]
    firsts = [r[0] for r in rounds]
    assert sorted(firsts.count(i) for i in range(3)) == [2, 2, 2]  # nobody always runs first


def test_agent_interleaves_models_in_one_process(tmp_path):
    small = conv_model(tmp_path / "small.onnx", channels=4, batch=1)
    big = conv_model(tmp_path / "big.onnx", channels=256, batch=1)
    code, r = interleave([small, big], runs=40, rounds=8, warmup=2, intra_op_threads=1, allow_spinning=False)
    assert code == 0, r
    assert (r["rounds"], r["runs_per_round"], r["threads"]) == (8, 5, 1)
    assert [m["model"] for m in r["models"]] == [str(small), str(big)]
    for m in r["models"]:
        assert len(m["round_p50_ms"]) == 8 and m["latency_ms"]["min"] > 0
    ratios = paired.paired_ratios(r["models"][1]["round_p50_ms"], r["models"][0]["round_p50_ms"])
    assert paired.quartiles(ratios)["median"] > 2  # 64x the work of the small one


def test_interleaving_refuses_zero_rounds(tmp_path):
    code, r = interleave([conv_model(tmp_path / "a.onnx", batch=1)] * 2, rounds=0)
    assert code == 2 and "rounds=0" in r["error"]


def test_paired_ratios_cancel_drift():
    """The machine slows down 4x over three rounds: the own p50s drift, the ratio does not."""
    record = {"rounds": 3, "runs_per_round": 1, "models": [
        {"latency_ms": {"p50": 2.0}, "round_p50_ms": [1.0, 2.0, 4.0]},
        {"latency_ms": {"p50": 1.0}, "round_p50_ms": [0.5, 1.0, 2.0]},
    ]}
    second = {"rounds": 3, "runs_per_round": 1, "models": [
        {"latency_ms": {"p50": 4.0}, "round_p50_ms": [4.0, 4.0, 4.0]},
        {"latency_ms": {"p50": 4.4}, "round_p50_ms": [4.0, 4.4, 4.8]},
    ]}
    blocks = paired.summarize([(["dense", "a"], record), (["dense", "b"], second)], "dense", "id1")
    assert blocks["a"]["ratio_to_reference"] == {"median": 0.5, "q1": 0.5, "q3": 0.5}
    assert blocks["b"]["ratio_to_reference"] == pytest.approx({"median": 1.1, "q1": 1.05, "q3": 1.15})
    assert blocks["dense"]["ratio_to_reference"]["median"] == 1.0
    assert blocks["dense"]["p50_ms"] == 3.0  # the median of its p50 over the two groups
    assert blocks["a"]["p50_ms"] == 1.5 and blocks["b"]["p50_ms"] == pytest.approx(3.3)
    assert {b["bench_id"] for b in blocks.values()} == {"id1"} and blocks["b"]["group"] == ["dense", "b"]


def test_ratios_of_several_processes_are_pooled():
    """Each process has a speed of its own: the second one runs the model at 0.6x of dense, not 0.4x."""
    def process(ratio):
        return {"rounds": 2, "runs_per_round": 1, "models": [
            {"latency_ms": {"p50": 1.0}, "round_p50_ms": [1.0, 1.0]},
            {"latency_ms": {"p50": ratio}, "round_p50_ms": [ratio, ratio]}]}

    blocks = paired.summarize([(["dense", "a"], process(0.4)), (["dense", "a"], process(0.6)),
                               (["dense", "a"], process(0.5))], "dense", "id")
    a = blocks["a"]
    assert a["processes"] == 3 and a["process_ratios"] == [0.4, 0.6, 0.5]
    assert a["ratio_to_reference"] == pytest.approx({"median": 0.5, "q1": 0.425, "q3": 0.575})  # of all 6 rounds
    assert a["own_p50_ms"] == 0.5 and blocks["dense"]["processes"] == 3


def test_groups_always_hold_the_reference():
    assert paired.groups("dense", ["a", "b", "c", "d", "e"], 3) == [["dense", "a", "b"], ["dense", "c", "d"],
                                                                      ["dense", "e"]]
    assert paired.groups("dense", ["a"], 8) == [["dense", "a"]]


def test_run_dir_models_are_timed_interleaved_with_dense(tmp_path, cli):
    from tests.devices.test_bench_command import make_run_dir

    box = write_profile(tmp_path / "box.toml", benchmark="warmup = 1\nruns = 12\nrounds = 4\ninterleave_models = 2\n")
    run = make_run_dir(tmp_path / "run", {
        "dense": lambda p: conv_model(p, channels=128, batch=1),
        "mm-magnitude-c01": lambda p: conv_model(p, channels=4, batch=1),
        "mm-magnitude-c02": lambda p: conv_model(p, channels=128, batch=1),
    })
    result = cli("bench", run, "--device", box, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    blocks = {cid: r["interleaved"] for cid, r in records.items()}
    assert len({b["bench_id"] for b in blocks.values()} | {r["bench_id"] for r in records.values()}) == 1
    assert blocks["mm-magnitude-c01"]["group"] == ["dense", "mm-magnitude-c01"] and blocks["mm-magnitude-c02"]["group"] == ["dense", "mm-magnitude-c02"]  # 2 per process
    assert all(b["rounds"] == 4 and b["runs_per_round"] == 3 and b["reference"] == "dense" for b in blocks.values())
    assert blocks["mm-magnitude-c01"]["processes"] == 3 and blocks["dense"]["processes"] == 6  # the default; dense in both groups
    assert blocks["mm-magnitude-c01"]["ratio_to_reference"]["median"] < 0.5  # 32x less work than dense
    on_disk = json.loads((run / "candidates" / "mm-magnitude-c02" / "bench" / "testbox.json").read_text())
    assert on_disk["interleaved"] == blocks["mm-magnitude-c02"] and on_disk["latency_ms"] == records["mm-magnitude-c02"]["latency_ms"]
