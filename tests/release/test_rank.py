"""`mixprune rank`: eligibility against the records, the choice rule, Pareto fronts, report, bad input."""

from __future__ import annotations

import json
import shutil
from html import escape

import pytest

from mixprune.release import ranking as rk
from mixprune.candidates import Axes, CandidateId
from mixprune.config import QUICK_DEFAULTS

from tests.helpers import cli, heavy_imports, load


def shipped(eval_record, prefix=""):
    """The held-out (prefix "") or tune (prefix "tune_") accuracy a candidate ships with."""
    finetuned = eval_record[f"{prefix}accuracy_finetuned"]
    return finetuned if finetuned is not None else eval_record[f"{prefix}accuracy"]


def test_every_candidate_is_listed_with_reasons_that_match_the_records(quick_run):
    ranking = load(quick_run / "ranking.json")
    assert ranking["selection_split"] == "tune"
    dense = load(quick_run / "dense" / "eval.json")
    cids = sorted(p.name for p in (quick_run / "candidates").iterdir())
    assert sorted(r["cid"] for r in ranking["candidates"]) == cids
    kinds = {r["kind"] for r in ranking["candidates"]}
    # the matched baselines rank too, INT8 variants, and (run's --mode both) the structured family
    assert kinds == {"mixmatch", "baseline", "structured", "int8"}
    for row in ranking["candidates"]:
        strategy = load(quick_run / "candidates" / row["cid"] / "strategy.json")
        assert row["mode"] == row["family"] == CandidateId.parse(row["cid"]).family == strategy["family"], row["cid"]
        assert row["macs_reduction"] == strategy.get("macs_reduction"), row["cid"]
        assert (row["macs_reduction"] is not None) == (row["mode"] == "structured"), row["cid"]
    exported = {p.parent.name for p in (quick_run / "candidates").glob("*/export.json")
                if not CandidateId.parse(p.parent.name).is_variant}
    variants = {r["cid"] for r in ranking["candidates"] if r["kernels"] == "int8"}
    assert variants == {str(CandidateId.parse(m).with_variant(s)) for m in exported | {"dense"}
                        for s in ("int8", "int8u")}  # run quantizes: auto
    for row in ranking["candidates"]:
        folder = quick_run / "candidates" / row["cid"]
        record = load(folder / "eval.json")
        assert row["accuracy"] == shipped(record) and row["tune_accuracy"] == shipped(record, "tune_")
        assert row["drop_points"] == round((dense["accuracy"] - shipped(record)) * 100, 4)
        drop = (dense["tune_accuracy"] - shipped(record, "tune_")) * 100  # eligibility is judged on the tune split
        assert (f"accuracy drop {drop:.2f} > 1 points on the tune split" in row["reasons"]) == (drop > 1.0)
        exported = (folder / "export.json").is_file()
        assert any("not exported" in r for r in row["reasons"]) == (not exported)
        if exported:
            bench = load(folder / "bench" / "host.json")
            host = row["devices"]["host"]
            # the latency that ranks: interleaved with dense in one process, on dense's scale
            assert host["latency_source"] == "interleaved" and host["p50_ms"] == bench["interleaved"]["p50_ms"]
            assert host["p50_isolated_ms"] == bench["latency_ms"]["p50"]
            assert bench["interleaved"]["reference"] == "dense" and "dense" in bench["interleaved"]["group"]
            assert row["bytes"] == load(folder / "export.json")["bytes"]
        assert row["eligible"] == (not row["reasons"]) == (row["reason"] is None)
    # `run --quick` exported the export_top most accurate candidates of each family within the drop
    for mode in ("unstructured", "structured"):
        passing = sorted((r for r in ranking["candidates"] if not any("accuracy" in x for x in r["reasons"])
                          and r["format"] == "fp32" and r["family"] == mode), key=lambda r: (-r["tune_accuracy"], r["cid"]))
        fp32_eligible = [r["cid"] for r in ranking["candidates"]
                         if r["eligible"] and r["format"] == "fp32" and r["family"] == mode]
        assert sorted(fp32_eligible) == sorted(r["cid"] for r in passing[: QUICK_DEFAULTS["export_top"]]), mode


def test_the_choice_is_rank_one_and_the_speed_note_says_so(quick_run, run_copy):
    """The choice rule itself is checked on synthetic records below, where its one right answer is known;
    a real run's timings are noise-dependent, so here only what must hold whatever they are."""
    ranking = load(quick_run / "ranking.json")
    eligible = [r for r in ranking["candidates"] if r["eligible"]]
    host = ranking["devices"][0]
    assert host["name"] == "host" and not host["same_speed"] and host["latency_source"] == "interleaved"
    assert ranking["candidates"][0]["cid"] == ranking["chosen"] == host["best"] and ranking["candidates"][0]["eligible"]
    assert [r["rank"] for r in ranking["candidates"][: len(eligible)]] == list(range(1, len(eligible) + 1))
    assert all(r["rank"] is None for r in ranking["candidates"][len(eligible):])
    assert host["chosen_vs_dense"] in ranking["speed_note"] and "interleaved" in ranking["speed_note"]
    assert set(ranking["pareto"]) <= {r["cid"] for r in eligible}
    # without the INT8 variants and the cut models, every candidate runs dense's kernels: speed ties by construction
    for other in (run_copy / "candidates").iterdir():
        if CandidateId.parse(other.name).is_variant or CandidateId.parse(other.name).family == "structured":
            shutil.rmtree(other)
    assert cli("rank", run_copy).exit_code == 0
    fp32_only = load(run_copy / "ranking.json")
    assert fp32_only["devices"][0]["same_speed"] and "not in speed" in fp32_only["speed_note"]
    assert "file size" in fp32_only["speed_note"] and "not faster than the dense model" in fp32_only["speed_note"]


def test_rank_is_stable_and_objective_size_picks_the_smallest(run_copy):
    before = load(run_copy / "ranking.json")
    again = cli("rank", run_copy)
    assert again.exit_code == 0, again.output
    assert load(run_copy / "ranking.json")["chosen"] == before["chosen"]
    assert "chosen: " + before["chosen"] in again.output
    size = cli("rank", run_copy, "--objective", "size")
    assert size.exit_code == 0, size.output
    ranking = load(run_copy / "ranking.json")
    eligible = [r for r in ranking["candidates"] if r["eligible"]]
    assert ranking["chosen"] == min(eligible, key=lambda r: (r["bytes"]["compact"], -r["tune_accuracy"], r["cid"]))["cid"]


@pytest.mark.parametrize("verdict, budget", [
    ({"over_latency_budget": True}, "latency budget"),
    ({"over_size_budget": True, "size_budget_mb": 0.01}, "size budget"),
])
def test_device_budget_excludes_a_candidate_with_its_reason(run_copy, verdict, budget):
    chosen = load(run_copy / "ranking.json")["chosen"]
    path = run_copy / "candidates" / chosen / "bench" / "host.json"
    record = load(path)
    record.update(latency_budget_ms=record["latency_ms"]["p50"] / 2, **verdict)
    path.write_text(json.dumps(record))
    result = cli("rank", run_copy)
    assert result.exit_code == 0, result.output
    ranking = load(run_copy / "ranking.json")
    row = next(r for r in ranking["candidates"] if r["cid"] == chosen)
    assert not row["eligible"] and budget in row["reason"] and row["rank"] is None
    assert ranking["chosen"] not in (None, chosen)


def test_no_eligible_candidate_names_the_constraint(run_copy):
    record = load(run_copy / "dense" / "eval.json")
    record["tune_accuracy"] = 1.0
    (run_copy / "dense" / "eval.json").write_text(json.dumps(record))
    result = cli("rank", run_copy, "--max-drop", "0.5")
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("Error: no eligible candidate") and "\n" not in line
    assert "accuracy drop" in line and "raise --max-drop" in line
    assert load(run_copy / "ranking.json")["chosen"] is None


@pytest.mark.parametrize("damage, expected", [
    (lambda run: [p.unlink() for p in run.glob("candidates/*/export.json")], "mixprune export"),
    (lambda run: [shutil.rmtree(p) for p in run.glob("*/*/bench")] + [shutil.rmtree(run / "dense" / "bench")],
     "mixprune bench"),
    (lambda run: (run / "run.json").unlink(), "mixprune prune"),
])
def test_missing_stage_says_which_to_run(run_copy, damage, expected):
    damage(run_copy)
    result = cli("rank", run_copy)
    assert result.exit_code == 2 and expected in result.output, result.output


def test_unknown_device_and_mixed_emulation_are_refused(run_copy):
    result = cli("rank", run_copy, "--device", "rpi4")
    assert result.exit_code == 2 and "mixprune bench" in result.output and "rpi4" in result.output
    path = next(run_copy.glob("candidates/*/bench/host.json"))
    record = load(path)
    record["emulated"] = True
    path.write_text(json.dumps(record))
    result = cli("rank", run_copy)
    assert result.exit_code == 2 and "mix emulated and real" in result.output


def test_report_is_self_contained_and_names_the_choice(quick_run):
    html = (quick_run / "report.html").read_text()
    ranking = load(quick_run / "ranking.json")
    assert ranking["chosen"] in html and escape(ranking["devices"][0]["chosen_vs_dense"]) in html
    assert "<td>int8-uint8</td>" in html and "<td>fp32</td>" in html  # each row says which kernels it runs
    assert html.count("data:image/png;base64,") >= 4  # sparsity, latency, size, per-layer
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert all(r["cid"] in html for r in ranking["candidates"])
    assert (quick_run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_does_not_import_torch(quick_run, tmp_path):
    copy = shutil.copytree(quick_run, tmp_path / "c")
    assert heavy_imports(("torch", "timm", "onnx"), command=["rank", copy]) == []


# --- the choice rule on synthetic records (no models) -----------------------------------
def _eval(tune_accuracy: float) -> dict:
    """An eval record whose held-out accuracy orders the opposite way: only the tune split may decide."""
    return {"tune_accuracy": tune_accuracy, "tune_accuracy_finetuned": None,
            "accuracy": 1.0 - tune_accuracy, "accuracy_finetuned": None}


UINT8 = Axes("mixmatch", "unstructured", "int8-uint8").record()


def _records(tmp_path, rows: dict, mode="structured"):
    """In-memory records: {cid: (tune accuracy, p50, p90, compact bytes)} on one real device."""
    models = {}
    for cid, (acc, p50, p90, size) in rows.items():
        models[cid] = {
            "strategy": {**Axes("mixmatch", mode).record(), "signal": "magnitude", "strategy": "x",
                         "global_sparsity": 0.5, "mode": mode, **({"macs_reduction": 0.4} if mode == "structured" else {})},
            "eval": _eval(acc),
            "export": {"verified": True, "bytes": {"compact": size}, "storage": "dense"},
            "bench": {"dev": {"latency_ms": {"p50": p50, "p90": p90}, "peak_rss_mb": 50.0, "model_bytes": size,
                              "emulated": False, "execution_providers": ["CPUExecutionProvider"]}},
        }
    return {"root": tmp_path, "run": {"model": {"name": "m"}}, "models": models,
            "dense": {"eval": _eval(0.9), "export": None, "bench": {}}}


def test_latency_within_noise_is_a_tie_broken_by_accuracy(tmp_path):
    # band = max(p90 - p50 of the fastest, 5% of its p50) = max(0.2, 0.5) = 0.5 ms
    records = _records(tmp_path, {"fast": (0.895, 10.0, 10.2, 100), "close": (0.899, 10.4, 10.6, 200),
                                  "slow": (0.9, 12.0, 12.1, 50)})
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["chosen"] == "close"
    assert "50.0% of the prunable weights and 40.0% of the MACs cut away" in ranking["chosen_why"]
    assert [r["cid"] for r in ranking["candidates"]] == ["close", "fast", "slow"]
    assert ranking["devices"][0]["latency_band_ms"] == pytest.approx(0.5)
    # beyond the band, speed wins over accuracy
    records["models"]["close"]["bench"]["dev"]["latency_ms"]["p50"] = 10.6
    assert rk.rank(records, max_drop=1.0)["chosen"] == "fast"


def test_unstructured_candidates_tie_on_speed_by_construction(tmp_path):
    records = _records(tmp_path, {"a": (0.895, 10.0, 10.1, 100), "b": (0.899, 15.0, 15.1, 300)}, mode="unstructured")
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["chosen"] == "b" and ranking["devices"][0]["same_speed"]
    assert ranking["devices"][0]["latency_band_ms"] is None
    assert ranking["pareto"] == ["a", "b"]  # a is smaller, b more accurate; speed does not separate them


def test_pareto_front_drops_dominated_candidates(tmp_path):
    records = _records(tmp_path, {"good": (0.899, 10.0, 10.1, 100), "worse": (0.895, 20.0, 20.1, 200),
                                  "small": (0.893, 10.0, 10.1, 50)})
    assert rk.rank(records, max_drop=1.0)["pareto"] == ["good", "small"]


def test_eligibility_and_choice_use_the_tune_split_and_report_held_out(tmp_path):
    records = _records(tmp_path, {"tune_best": (0.899, 10.0, 10.1, 100), "held_out_best": (0.897, 10.0, 10.1, 100),
                                  "tune_too_low": (0.885, 10.0, 10.1, 100)})
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["selection_split"] == "tune" and ranking["chosen"] == "tune_best"
    rows = {r["cid"]: r for r in ranking["candidates"]}
    # 1.5 points below dense on tune: excluded, although its held-out accuracy is 1.5 points above dense
    assert not rows["tune_too_low"]["eligible"] and rows["tune_too_low"]["drop_points"] == pytest.approx(-1.5)
    assert "on the tune split" in rows["tune_too_low"]["reason"]
    assert rows["tune_best"]["accuracy"] == pytest.approx(0.101)  # the reported figure is the held-out one
    assert "held-out accuracy 0.1010" in ranking["chosen_why"] and "tune split: 0.8990" in ranking["chosen_why"]


def test_close_ids_suggests_neighbours():
    ids = ["mm-magnitude-p70", "mm-magnitude-p90", "base-mag-s70.00"]
    assert "mm-magnitude-p70" in rk.close_ids("mm-magnitude-p7", ids)


def test_emulated_timings_never_decide(run_copy):
    """Records of an emulated device (reversed, 400x slower) change neither the choice nor the host's verdicts."""
    reference = load(run_copy / "ranking.json")
    for path in run_copy.glob("*/*/bench/host.json"):
        record = load(path)
        record.update(device="arm64-qemu", emulated=True)
        record["latency_ms"] = {k: 400 / v for k, v in record["latency_ms"].items()}
        (path.parent / "arm64-qemu.json").write_text(json.dumps(record))
    both = cli("rank", run_copy, "--device", "arm64-qemu", "--device", "host")
    assert both.exit_code == 0, both.output
    ranking = load(run_copy / "ranking.json")
    assert ranking["choice_device"] == "host" and ranking["chosen"] == reference["chosen"]
    emulated = next(d for d in ranking["devices"] if d["name"] == "arm64-qemu")
    assert emulated["emulated"] and "not how fast" in emulated["speed_note"]
    alone = cli("rank", run_copy, "--device", "arm64-qemu")
    assert alone.exit_code == 0, alone.output
    ranking = load(run_copy / "ranking.json")
    # emulated timings alone tie every candidate: accuracy, then size decide
    eligible = [r for r in ranking["candidates"] if r["eligible"]]
    best = min(eligible, key=lambda r: (-r["tune_accuracy"], r["bytes"]["compact"], r["cid"]))
    assert ranking["chosen"] == best["cid"] and "emulated timings" in ranking["chosen_why"]


def test_int8_variants_are_compared_on_measured_speed_with_fp32_ones_sharing_theirs(tmp_path):
    """fp32 unstructured candidates run the same kernels: they share one latency (their median), and an
    INT8 variant is faster only beyond the noise band of that comparison."""
    records = _records(tmp_path, {"a": (0.897, 10.0, 10.1, 100), "b": (0.899, 11.0, 11.1, 100),
                                  "c": (0.896, 10.5, 10.6, 100), "a+int8u": (0.895, 4.0, 4.1, 30)},
                       mode="unstructured")
    records["models"]["a+int8u"]["strategy"].update(**UINT8, parent="a")
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["chosen"] == "a+int8u" and not ranking["devices"][0]["same_speed"]
    rows = {r["cid"]: r for r in ranking["candidates"]}
    assert rows["a+int8u"]["kernels"] == "int8" and rows["a"]["kernels"] == "fp32"
    # within the band of the fp32 models' shared 10.5 ms, accuracy decides again, and among the fp32 ones
    # their own (noisy) p50 does not: "b" wins on accuracy although its record, 11.0 ms, is beyond the band
    records["models"]["a+int8u"]["bench"]["dev"]["latency_ms"].update(p50=10.3, p90=10.4)
    assert rk.rank(records, max_drop=1.0)["chosen"] == "b"


def _interleaved(records, ratios: dict, bench_id="b1", dense_p50=10.0):
    """Give every model (and dense) an interleaved block: {cid: (median, q1, q3) of its ratio to dense}."""
    def block(ratio):
        median, q1, q3 = ratio
        return {"bench_id": bench_id, "reference": "dense", "group": ["dense"], "rounds": 20, "runs_per_round": 5,
                "p50_ms": dense_p50 * median, "ratio_to_reference": {"median": median, "q1": q1, "q3": q3}}

    records["dense"]["bench"]["dev"] = {**records["models"]["a"]["bench"]["dev"], "interleaved": block((1, 1, 1))}
    for cid, ratio in ratios.items():
        records["models"][cid]["bench"]["dev"]["interleaved"] = block(ratio)
    return records


def test_interleaved_latency_decides_with_the_band_of_the_paired_ratios(tmp_path):
    """The isolated p50s (drifted: the INT8 one looks slowest) are not what ranks; the paired ratios are."""
    records = _records(tmp_path, {"a": (0.897, 4.0, 4.1, 100), "b": (0.899, 6.0, 6.1, 100),
                                  "a+int8u": (0.895, 12.0, 12.1, 30)}, mode="unstructured")
    records["models"]["a+int8u"]["strategy"].update(**UINT8, parent="a")
    _interleaved(records, {"a": (1.0, 0.99, 1.01), "b": (1.01, 1.0, 1.02), "a+int8u": (0.4, 0.38, 0.42)})
    ranking = rk.rank(records, max_drop=1.0)
    host = ranking["devices"][0]
    assert ranking["chosen"] == "a+int8u" and host["latency_source"] == "interleaved"
    assert host["latency_band_ms"] == pytest.approx(0.1 * 4.0)  # the fastest one's IQR: 0.04 / 0.4 = 10% of 4.0 ms
    vs = next(r for r in ranking["candidates"] if r["cid"] == "a+int8u")["devices"]["dev"]["vs_dense"]
    assert vs["faster"] and vs["speedup"] == pytest.approx(2.5)
    assert (vs["low"], vs["high"]) == (pytest.approx(1 / 0.42), pytest.approx(1 / 0.38))
    assert "2.50x the speed of dense" in host["speed_note"] and "beyond the noise band" in host["speed_note"]
    assert host["best"] == "a+int8u" and host["formats"]["fp32"] == {
        "models": 2, "eligible": 2, "faster_than_dense": 0, "median_speedup_vs_dense": 1.0}
    formats = ranking["devices"][0]["formats"]
    assert formats["int8-uint8"]["faster_than_dense"] == 1
    assert formats["int8-uint8"]["median_speedup_vs_dense"] == pytest.approx(2.5)
    fp32 = next(r for r in ranking["candidates"] if r["cid"] == "b")["devices"]["dev"]["vs_dense"]
    assert fp32 == {"speedup": 1.0, "low": 1.0, "high": 1.0, "faster": False, "source": "same kernels as dense"}
    # a noisy pairing widens the band: 0.8x of dense with quartiles 0.68-0.92 ties with the fp32 models
    _interleaved(records, {"a+int8u": (0.8, 0.68, 0.92)})
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["chosen"] == "b" and ranking["devices"][0]["latency_band_ms"] == pytest.approx(0.3 * 8.0)
    # timed in three processes, the spread of their medians is the noise: 0.78-0.82 is 5% of 0.8
    records["models"]["a+int8u"]["bench"]["dev"]["interleaved"]["process_ratios"] = [0.78, 0.8, 0.82]
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["chosen"] == "a+int8u" and ranking["devices"][0]["latency_band_ms"] == pytest.approx(0.05 * 8.0)
    # records of two different benches are not paired: each model's own p50 then
    records["models"]["b"]["bench"]["dev"]["interleaved"]["bench_id"] = "other"
    ranking = rk.rank(records, max_drop=1.0)
    assert ranking["devices"][0]["latency_source"] == "isolated" and ranking["chosen"] == "b"


def test_collapsed_int8_variant_is_excluded_with_its_reason_and_failures_are_listed(tmp_path):
    records = _records(tmp_path, {"a": (0.897, 10.0, 10.1, 100), "a+int8": (0.60, 4.0, 4.1, 30)}, mode="unstructured")
    records["models"]["a+int8"]["strategy"].update(**Axes("mixmatch", "unstructured", "int8-int8").record(), parent="a")
    records["models"]["a+int8"]["eval"]["agreement_with_parent"] = 0.62
    records["run"]["stages"] = {"export": {"variant_failures": {"a+int8u": "onnxruntime cannot quantize a (NoSuchOp)"}}}
    ranking = rk.rank(records, max_drop=1.0)
    row = next(r for r in ranking["candidates"] if r["cid"] == "a+int8")
    assert not row["eligible"] and ranking["chosen"] == "a"
    assert row["reasons"][0] == ("INT8 quantization costs 29.70 points against its parent a on the tune split "
                                 "(more than --max-drop), top-1 agreement with it 62.0% on held-out")
    assert ranking["variant_failures"] == {"a+int8u": "onnxruntime cannot quantize a (NoSuchOp)"}
