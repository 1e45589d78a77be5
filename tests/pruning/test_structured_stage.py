"""Structured Mix-and-Match in the prune stage (--mode both / structured) on tiny timm models."""

from __future__ import annotations

import json
import shutil

import pytest

from mixprune.candidates import CandidateId

from tests.helpers import cli, load, prune

TARGET = 0.5


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("structured") / "both"
    return prune(out, "--model", "test_resnet", "--mode", "both", "--train-epochs", "2", "--signals",
                 "magnitude,product", "--baselines", "mag", "--macs-reduction", str(TARGET), "--finetune-epochs", "1",
                 "--finetune-top", "1", "--img-size", "16", "--round-to", "4")


def _records(run, family="structured"):
    folders = sorted(p for p in (run / "candidates").iterdir() if CandidateId.parse(p.name).family == family)
    return {p.name: {"strategy": load(p / "strategy.json"), "eval": load(p / "eval.json")} for p in folders}


def test_structured_candidates_are_cut_to_the_common_macs_and_stored_as_cut_plus_weights(both_run):
    from mixprune.data import DataSpec, load_splits
    from mixprune.models import ModelSpec
    from mixprune.models.stored import build_stored
    from mixprune.runs import RunDir
    from mixprune.training import evaluate

    records = _records(both_run)
    mixmatch = {c: r for c, r in records.items() if r["strategy"]["kind"] == "structured"}
    baselines = {c: r for c, r in records.items() if r["strategy"]["kind"] == "baseline"}
    assert len(mixmatch) == 20  # 2 signals x 10 strategies
    assert set(baselines) == {f"st-base-{m}-m50.00" for m in ("mag", "taylor", "uniform")}
    run = RunDir(both_run)
    record = load(both_run / "run.json")
    spec, data = ModelSpec.from_dict(record["model"]), DataSpec.from_dict(record["data"])
    val = load_splits(data).val
    for cid, r in records.items():
        s = r["strategy"]
        assert s["mode"] == "structured" and (both_run / "candidates" / cid / "cut.json").is_file()
        assert not (both_run / "candidates" / cid / "masks.safetensors").exists()
        # test_resnet's layers have 8-64 channels: one more multiple of 4 cut moves the MACs by up to 4%,
        # and a uniform ratio moves every layer of a width at once
        assert abs(s["macs_reduction"] - TARGET) <= (0.04 if s["kind"] == "structured" else 0.08), cid
        assert s["macs"]["after"] < s["macs"]["before"] and s["params"]["after"] < s["params"]["before"]
        assert s["channels"]["fc.weight"] == {"before": 10, "after": 10}  # the classes stay
        for name, counts in s["channels"].items():
            assert counts["after"] == counts["before"] or counts["after"] % 4 == 0, (cid, name)
        assert 0 < s["global_sparsity"] < 1
    # a stored candidate rebuilds (its cut replayed, its weights loaded) into the model that was measured
    for cid in ("st-magnitude-balanced", "st-base-uniform-m50.00"):
        model = build_stored(spec, run.candidate(cid))
        assert sum(p.numel() for p in model.parameters()) == records[cid]["strategy"]["params"]["after"]
        measured = records[cid]["eval"]
        stored = measured["accuracy"] if measured["accuracy_finetuned"] is None else measured["accuracy_finetuned"]
        assert evaluate(model, val) == pytest.approx(stored)


def test_the_two_families_side_by_side_each_with_its_best_finetuned(both_run):
    summary = load(both_run / "run.json")["stages"]["prune"]["summary"]
    assert (summary["mode"], summary["mixmatch"], summary["structured"]) == ("both", 20, 20)
    records = {**_records(both_run, "unstructured"), **_records(both_run, "structured")}
    tuned = {cid for cid, r in records.items() if r["eval"]["accuracy_finetuned"] is not None}
    expected = set()
    for kind in ("mixmatch", "structured"):
        best = min((r["strategy"] for r in records.values() if r["strategy"]["kind"] == kind),
                   key=lambda s: (-records[s["cid"]]["eval"]["tune_accuracy"], s["cid"]))
        expected |= {best["cid"], *best["baselines"]}
    assert tuned == expected and set(summary["finetuned"]) == expected
    ranges = load(both_run / "ranges.json")
    assert "layers" in ranges and set(ranges["structured"]["achieved"]) == {
        f"{imp}@{t:.2f}" for imp in ("magnitude", "gradient", "product") for t in (0.3, 0.5, 0.7)}


def test_resume_remakes_only_what_is_missing_and_the_same(both_run, tmp_path):
    copy = tmp_path / "resumed"
    shutil.copytree(both_run, copy)
    before = _records(both_run)
    tuned = next(c for c, r in before.items() if r["eval"]["accuracy_finetuned"] is not None)
    for cid in (tuned, "st-product-min"):
        shutil.rmtree(copy / "candidates" / cid)
    kept = (copy / "candidates" / "st-magnitude-max" / "eval.json").stat().st_mtime_ns
    result = cli("prune", "--out", copy, "--resume")
    assert result.exit_code == 0, result.output
    after = _records(copy)
    assert (copy / "candidates" / "st-magnitude-max" / "eval.json").stat().st_mtime_ns == kept
    for cid in (tuned, "st-product-min"):
        assert after[cid]["eval"] == before[cid]["eval"]  # same accuracies, same weights digest
        assert after[cid]["strategy"] == before[cid]["strategy"]


SWIN = "swin_tiny_patch4_window7_224"
SMALL_SWIN = ["--model-arg", "patch_size=2", "--model-arg", "window_size=4", "--model-arg", "embed_dim=16",
              "--model-arg", "depths=(1,1)", "--model-arg", "num_heads=(1,2)"]


@pytest.mark.parametrize("mode", ["both", "structured"])
def test_a_model_torch_pruning_cannot_cut(mode, tmp_path, monkeypatch):
    monkeypatch.delenv("MIXPRUNE_QUIET")  # the status line is part of what is tested
    args = ["prune", "--out", tmp_path / "swin", "--model", SWIN, *SMALL_SWIN, "--img-size", "16", "--mode", mode,
            "--train-epochs", "0", "--finetune-epochs", "0", "--signals", "magnitude", "--baselines", "mag",
            "--macs-reduction", "0.5"]
    result = cli(*args)
    if mode == "both":  # one line says so, and the run goes on with unstructured candidates
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert f"structured mode: {SWIN} does not run after a cut" in said and "cannot cut this architecture" in said
        assert "the run goes on with unstructured candidates only" in said
        summary = load(tmp_path / "swin" / "run.json")["stages"]["prune"]["summary"]
        assert SWIN in summary["structured_mode"]["skipped"]
        assert summary["mixmatch"] == 10 and summary["structured"] == 0
    else:
        assert result.exit_code == 2
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and f"{SWIN} does not run after a cut" in errors[0]
        assert "Traceback" not in result.output


def test_a_vit_is_cut_by_whole_heads_and_mlp_units(tmp_path):
    result = cli("prune", "--out", tmp_path / "vit", "--model", "test_vit", "--img-size", "32", "--mode", "structured",
                 "--train-epochs", "0", "--finetune-epochs", "0", "--signals", "magnitude", "--macs-reduction", "0.5")
    assert result.exit_code == 0, result.output
    records = _records(tmp_path / "vit")
    assert len(records) == 13  # 10 strategies + 3 baselines
    for cid, record in records.items():
        strategy = record["strategy"]
        heads = strategy["heads"]
        assert heads and all(1 <= h["after"] <= h["before"] for h in heads.values()), cid
        assert all(name.endswith(("attn.qkv.weight", "mlp.fc1.weight")) for name in strategy["layers"]), cid
        # the token width (192 in test_vit) is never cut
        assert all(c["after"] == c["before"] for name, c in strategy["channels"].items()
                   if not name.endswith(("attn.qkv.weight", "mlp.fc1.weight"))), cid
        # a head is a coarse unit in a 2-head model: one offset flips every block's second head at once
        assert abs(strategy["macs_reduction"] - 0.5) < 0.1, cid
    assert any(h["after"] < h["before"] for r in records.values() for h in r["strategy"]["heads"].values())


@pytest.mark.parametrize("flags, message", [
    (["--macs-reduction", "1.0"], r"--macs-reduction"),
    (["--macs-reduction", "0"], r"--macs-reduction"),
    (["--round-to", "0"], r"--round-to"),
    (["--macs-targets", "0.5,1.2"], r"--macs-targets"),
    (["--structured-baselines", "snip"], r"--structured-baselines"),
])
def test_bad_structured_settings_are_one_line_and_write_nothing(flags, message, tmp_path):
    result = cli("prune", "--out", tmp_path / "bad", "--model", "test_resnet", "--mode", "structured", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "bad").exists()


def test_a_mac_reduction_out_of_reach_is_one_line(tmp_path):
    result = cli("prune", "--out", tmp_path / "far", "--model", "test_resnet", "--mode", "structured",
                 "--macs-reduction", "0.995", "--train-epochs", "0", "--finetune-epochs", "0", "--signals",
                 "magnitude", "--img-size", "16")
    assert result.exit_code == 2, result.output
    assert "no structured candidate of test_resnet could be cut" in result.output
    assert "out of reach" in result.output
    assert json.loads((tmp_path / "far" / "run.json").read_text())["stages"]["prune"]["status"] == "running"
