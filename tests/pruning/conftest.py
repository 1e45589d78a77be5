import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from mixprune.cli import main

NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm")


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def prune(out, *args):
    result = run_cli("prune", "--out", out, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Path(out)


def load_candidates(run: Path) -> dict[str, dict]:
    out = {}
    for cdir in sorted((run / "candidates").iterdir()):
        out[cdir.name] = {
            "strategy": json.loads((cdir / "strategy.json").read_text()),
            "eval": json.loads((cdir / "eval.json").read_text()),
            "weights": load_file(str(cdir / "weights.safetensors")),
        }
    return out


def check_eval_keys(record: dict) -> None:
    """eval.json: held-out figures (report) and tune figures (every choice), both with their sample counts."""
    for key in ("accuracy", "accuracy_raw", "accuracy_finetuned", "samples",
                "tune_accuracy", "tune_accuracy_finetuned", "tune_samples"):
        assert key in record, key
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["tune_accuracy"] <= 1.0
    assert record["samples"] > 0 and record["tune_samples"] > 0
    assert (record["accuracy_finetuned"] is None) == (record["tune_accuracy_finetuned"] is None)


def check_contract(run: Path, *, within_ranges: bool):
    """What every saved candidate must satisfy (ARCHITECTURE.md record keys and issue 3's checks)."""
    ranges = json.loads((run / "ranges.json").read_text())["layers"]
    dense = load_file(str(run / "dense" / "weights.safetensors"))
    check_eval_keys(json.loads((run / "dense" / "eval.json").read_text()))
    candidates = load_candidates(run)
    assert candidates
    for cid, cand in candidates.items():
        strategy, weights, record = cand["strategy"], cand["weights"], cand["eval"]
        assert strategy["cid"] == cid and strategy["kind"] in ("mixmatch", "baseline")
        assert set(strategy["layers"]) == set(ranges)
        zeros = total = 0
        for name, ratio in strategy["layers"].items():
            w = weights[name]
            measured = float((w == 0).sum()) / w.numel()
            assert abs(measured - ratio) <= 0.005, (cid, name, measured, ratio)
            if within_ranges and strategy["kind"] == "mixmatch":
                assert ranges[name]["min"] - 1e-6 <= ratio <= ranges[name]["max"] + 1e-6, (cid, name)
            zeros += int((w == 0).sum())
            total += w.numel()
        assert abs(strategy["global_sparsity"] - zeros / total) < 1e-5
        # nothing outside the prunable weights gained zeros (normalization weights and biases included)
        for name, tensor in weights.items():
            if name not in ranges and tensor.is_floating_point() and "running" not in name:
                assert int((tensor == 0).sum()) <= int((dense[name] == 0).sum()), (cid, name)
        check_eval_keys(record)
        weights_file = run / "candidates" / cid / "weights.safetensors"
        assert record["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest(), cid
    return candidates


@pytest.fixture(scope="session")
def resnet_run(tmp_path_factory):
    """test_resnet (timm's tiny ResNet) trained briefly on digits and pruned with defaults."""
    out = tmp_path_factory.mktemp("runs") / "resnet"
    return prune(out, "--model", "test_resnet", "--train-epochs", "3", "--finetune-epochs", "1",
                 "--finetune-top", "1", "--img-size", "24")
