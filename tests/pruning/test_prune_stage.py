"""The prune stage end to end on tiny timm models (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import check_contract, cli, load_candidates, prune


def test_thirty_mixmatch_candidates_plus_matched_baselines(resnet_run):
    candidates = check_contract(resnet_run, within_ranges=True)
    mixmatch = {c: v for c, v in candidates.items() if v["strategy"]["kind"] == "mixmatch"}
    assert len(mixmatch) == 30
    assert {v["strategy"]["signal"] for v in mixmatch.values()} == {"magnitude", "gradient", "product"}
    assert len({v["strategy"]["strategy"] for v in mixmatch.values()}) == 10
    baselines = {c: v for c, v in candidates.items() if v["strategy"]["kind"] == "baseline"}
    assert {v["strategy"]["signal"] for v in baselines.values()} == {"mag", "snip", "grasp"}
    # every candidate's matched baselines exist and sit at its global sparsity
    for cid, cand in mixmatch.items():
        assert len(cand["strategy"]["baselines"]) == 3
        for base in cand["strategy"]["baselines"]:
            assert abs(baselines[base]["strategy"]["global_sparsity"] - cand["strategy"]["global_sparsity"]) < 0.002


def test_dense_model_learned_and_normalization_reestimation_is_recorded(resnet_run):
    dense = json.loads((resnet_run / "dense" / "eval.json").read_text())
    assert dense["accuracy"] > 0.5  # 3 epochs on digits: far above the 10% of chance
    candidates = load_candidates(resnet_run)
    assert all(c["eval"]["recalibrated"] for c in candidates.values())  # test_resnet has BatchNorm
    # on average re-estimation helps pruned models (the stale statistics no longer fit)
    gains = [c["eval"]["accuracy"] - c["eval"]["accuracy_raw"] for c in candidates.values()]
    assert sum(gains) / len(gains) > 0


def test_finetune_top_one_and_its_baselines(resnet_run):
    candidates = load_candidates(resnet_run)
    tuned = {cid for cid, c in candidates.items() if c["eval"]["accuracy_finetuned"] is not None}
    # chosen on the tune split, never on the held-out one that reports it
    best = min((c for c in candidates.values() if c["strategy"]["kind"] == "mixmatch"),
               key=lambda c: (-c["eval"]["tune_accuracy"], c["strategy"]["cid"]))
    assert tuned == {best["strategy"]["cid"], *best["strategy"]["baselines"]}
    for cid, c in candidates.items():
        assert (c["eval"]["tune_accuracy_finetuned"] is None) == (cid not in tuned)


def test_ranges_record_rules(resnet_run):
    ranges = json.loads((resnet_run / "ranges.json").read_text())
    layers = ranges["layers"]
    assert set(ranges["global_runs"]) == {f"{m}@{t}" for m in ("mag", "snip", "grasp") for t in ("0.7", "0.8", "0.9")}
    for name, entry in layers.items():
        assert {"min", "max", "params", "role", "rule"} <= set(entry)
        assert 0.0 <= entry["min"] <= entry["max"] < 1.0
        if entry["params"] < 10000:  # small_layer (the highest priority) clamps exactly those above its 10%
            assert entry["max"] <= 0.10, name
            assert ("small_layer" in entry["rule"].split("+")) == (entry["global_max"] > 0.10), name
    assert any(e["role"] == "classifier" for e in layers.values())


def test_common_sparsity_shifts_every_strategy(tmp_path):
    run = prune(tmp_path / "vit", "--model", "test_vit", "--train-epochs", "1", "--finetune-epochs", "0",
                "--sparsity", "0.9", "--baselines", "mag", "--img-size", "32")
    candidates = check_contract(run, within_ranges=False)
    mixmatch = [c for c in candidates.values() if c["strategy"]["kind"] == "mixmatch"]
    assert len(mixmatch) == 30
    for cand in mixmatch:
        assert abs(cand["strategy"]["global_sparsity"] - 0.9) <= 0.005
        assert set(cand["strategy"]["sampled"]) == set(cand["strategy"]["layers"])
    # ten distinct allocations were sampled; after the shift (capped at 98%) they still differ
    assert len({json.dumps(c["strategy"]["sampled"], sort_keys=True) for c in mixmatch}) == 30 // 3
    assert len({json.dumps(c["strategy"]["layers"], sort_keys=True) for c in mixmatch}) > 5
    assert [c for c in candidates.values() if c["strategy"]["kind"] == "baseline"]


@pytest.mark.slow
def test_high_targets_reach_high_sparsity_on_resnet18(tmp_path):
    run = prune(tmp_path / "high", "--model", "resnet18", "--train-epochs", "0", "--finetune-epochs", "0",
                "--targets", "0.9,0.95,0.98", "--signals", "magnitude", "--baselines", "mag", "--img-size", "16")
    candidates = check_contract(run, within_ranges=True)
    ranges = json.loads((run / "ranges.json").read_text())
    assert ranges["layers"]["layer4.0.downsample.0.weight"]["rule"].startswith("downsample_protected")
    assert ranges["layers"]["conv1.weight"]["max"] <= 0.10  # < 10k parameters: the small-layer cap wins
    top = max(c["strategy"]["global_sparsity"] for c in candidates.values())
    assert top >= 0.96


def _snapshot(run):
    return {cid: (c["eval"]["accuracy"], c["eval"]["accuracy_finetuned"], c["strategy"]["layers"],
                  c["eval"]["weights_sha256"]) for cid, c in load_candidates(run).items()}


@pytest.mark.slow
def test_kill_then_resume_gives_the_same_results(resnet_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mixprune.cli", "prune", "--out", str(out), "--model", "test_resnet",
           "--train-epochs", "3", "--finetune-epochs", "1", "--finetune-top", "1", "--img-size", "24"]
    env = dict(os.environ, MIXPRUNE_QUIET="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "candidates").glob("*/eval.json"))) < 5:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "candidates").glob("*/eval.json")}
    assert 0 < len(finished_before) < 60
    result = cli("prune", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["stages"]["prune"]["summary"]["resumed"] == len(finished_before)
    # finished candidates were not redone ...
    after = load_candidates(out)
    for cid, mtime in finished_before.items():
        if after[cid]["eval"]["accuracy_finetuned"] is None:  # fine-tuning comes after pruning
            assert (out / "candidates" / cid / "eval.json").stat().st_mtime_ns == mtime
    # ... and the results equal an uninterrupted run's
    assert _snapshot(out) == _snapshot(resnet_run)
    assert not list(out.rglob(".*.tmp"))
