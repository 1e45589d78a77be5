"""Ranking: which candidate to ship, from the records of a run directory.

Reads only the records of a run directory (through mixprune.runs: run, eval, strategy,
export and bench records), never stage code, and imports neither torch nor onnx. It writes
ranking.json; the report (mixprune.release.report) is drawn from that record afterwards.

Constraints (a candidate is *eligible* when it meets all of them):

- accuracy drop vs the dense model at most ``max_drop`` points on the tune split (the
  fine-tuned accuracy when the candidate was fine-tuned, else the accuracy after
  normalization re-estimation); every choice is made on the tune split, and the held-out
  accuracy of what was chosen is what gets reported (mixprune/accuracy.py);
- a verified export (zeros kept, onnxruntime agrees with torch);
- on every ranked device: a bench record, within the profile's memory, latency and size budgets.

Choice rule (``chosen``), stable across re-runs:

1. Objective value on the *choice device*, the first real (non-emulated) ranked device:
   ``latency`` = p50 ms, ``memory`` = peak RSS MB, ``size`` = bytes of the most compact
   lossless storage (export.json ``bytes.compact``).
2. Values within the measured noise of the best one are ties. Latency comes from the
   interleaved timing of one bench (benchmarks.paired: every model in one process with the
   dense model, the median paired ratio times dense's p50); its band is the best p50 times
   the noise of the best one's ratio (the range of its per-process medians over their
   median; one process: the interquartile range of its rounds), at least 2%. Records
   without it (models benched one at a time) fall back to each model's own p50, band
   max(p90 - p50 of the best record, 5% of its p50) (the harness study measured 2-5%
   spreads between runs of one model in separate processes on a quiet core). Memory band:
   max(1 MB, 2%). Size: exact bytes.
   When every compared model is unstructured and the device runs onnxruntime's CPU
   provider, latency and memory are ties *by construction* (no sparse kernels: the same
   dense kernels run whatever the zeros), and so are emulated timings, which say that a
   model runs, not how fast. When models of other kernels (INT8 variants) are ranked
   beside them, those fp32 models still run the same kernels: they share one latency and
   memory (the median of their records), and only that is compared with the others.
3. Ties go to the higher tune accuracy, then the smaller compact size, then the candidate id.

Emulated and real timings never meet: each device is ranked on its own records, and the
choice is made on a real device whenever one is ranked.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import statistics
from pathlib import Path

from mixprune.accuracy import REPORT_SPLIT, SELECTION_SPLIT, accuracy_of
from mixprune.candidates import UNSTRUCTURED, Axes, removed
from mixprune.objectives import OBJECTIVES
from mixprune.devices.fields import MB
from mixprune.errors import MixpruneError, RunDirError
from mixprune.runs import DENSE, PRUNE_STAGE, RunDir

FORMAT_VERSION = 1
LATENCY_NOISE_FLOOR = 0.05  # relative, latency of models timed in separate processes
PAIRED_NOISE_FLOOR = 0.02  # relative, latency from interleaved runs (paired ratios)
SAME_KERNELS = "same kernels as dense"  # vs_dense source of fp32 models that differ from dense only in zeros
MEMORY_NOISE_MB, MEMORY_NOISE_FLOOR = 1.0, 0.02
CPU_PROVIDER = "CPUExecutionProvider"
RULE = ("eligible = accuracy drop on the tune split <= max_drop points, verified export, within every device's "
        "memory and latency budgets; chosen = the best objective value on the choice device (first real device), "
        "values within measured noise tied, ties broken by higher tune accuracy, then smaller compact size, then id; "
        "the held-out accuracy only reports")


class NoEligibleCandidate(MixpruneError):
    """Every candidate fails a constraint (ranking.json still lists why)."""


def close_ids(cid: str, ids) -> str:
    """' (did you mean a, b?)' or ' (available: ...)' for an unknown candidate id."""
    ids = list(ids)
    close = difflib.get_close_matches(cid, ids, n=4, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; {len(ids)} candidates exist, e.g. {', '.join(ids[:4])}" if ids else ""


# --- reading the run directory ------------------------------------------------------------
def load_run(run_dir) -> dict:
    """Every record ranking needs, with a clear error naming the stage that is missing."""
    run = RunDir(run_dir)
    info = run.require()
    if run.stage_status(PRUNE_STAGE) != "done":
        raise RunDirError(f"the prune stage of {run.root} has not finished; continue it with "
                          f"`mixprune prune --out {run.root} --resume`")
    models = {cid: dataclasses.asdict(run.candidate(cid).records()) for cid in run.candidate_ids()}
    if not models:
        raise RunDirError(f"{run.root} has no finished candidate; run `mixprune prune --out {run.root}`")
    return {"root": run.root, "run": info, "dense": dataclasses.asdict(run.dense.records()), "models": models}


def benched_devices(records: dict) -> list[str]:
    """Devices with at least one bench record, in the run's configured order, then by name."""
    found = {d for m in [records["dense"], *records["models"].values()] for d in m["bench"]}
    configured = [d for d in records["run"].get("config", {}).get("devices", []) if d in found]
    return configured + sorted(found - set(configured))


def _check_stages(records: dict, devices: list[str]) -> None:
    root = records["root"]
    if not any(m["export"] for m in records["models"].values()):
        raise RunDirError(f"no candidate of {root} is exported; run `mixprune export {root}` first")
    found = benched_devices(records)
    if not found:
        raise RunDirError(f"no candidate of {root} is benchmarked; run `mixprune bench {root} --device host` first")
    missing = [d for d in devices if d not in found]
    if missing:
        raise RunDirError(f"no bench records for device {missing[0]} in {root} (benchmarked: {', '.join(found)}); "
                          f"run `mixprune bench {root} --device {missing[0]}` first")


# --- metrics and constraints --------------------------------------------------------------
def _device_metrics(bench: dict | None) -> dict | None:
    if bench is None:
        return None
    lat = bench["latency_ms"]
    return {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "p50_isolated_ms": lat["p50"], "latency_source": "isolated",
            "interleaved": bench.get("interleaved"), "peak_rss_mb": bench["peak_rss_mb"],
            "model_bytes": bench["model_bytes"], "emulated": bool(bench["emulated"]),
            "cpu_only": list(bench.get("execution_providers") or [CPU_PROVIDER]) == [CPU_PROVIDER],
            "over_memory_budget": bool(bench.get("over_memory_budget")),
            "over_latency_budget": bool(bench.get("over_latency_budget")),
            "over_size_budget": bool(bench.get("over_size_budget")),
            "memory_budget_mb": bench.get("memory_budget_mb"), "latency_budget_ms": bench.get("latency_budget_ms"),
            "size_budget_mb": bench.get("size_budget_mb")}


def _device_reasons(device: str, m: dict | None, root: Path) -> list[str]:
    if m is None:
        return [f"no bench record on {device} (run `mixprune bench {root} --device {device}`)"]
    reasons = []
    if m["over_memory_budget"]:
        reasons.append(f"{device}: peak RSS {m['peak_rss_mb']:.1f} MB > memory budget {m['memory_budget_mb']:g} MB")
    if m["over_latency_budget"]:
        reasons.append(f"{device}: p50 {m['p50_ms']:.3f} ms > latency budget {m['latency_budget_ms']:g} ms")
    if m["over_size_budget"]:
        reasons.append(f"{device}: model file {m['model_bytes'] / MB:.1f} MB > size budget {m['size_budget_mb']:g} MB")
    return reasons


def candidate_row(cid: str, rec: dict, dense: dict[str, float], max_drop: float, devices: list[str],
                  root: Path, export_note: str | None, parent_tune: float | None = None) -> dict:
    """``dense``: the dense model's accuracy per split. Eligibility uses tune, ``accuracy`` reports held-out.
    ``parent_tune``: an INT8 variant's parent's tune accuracy (its loss to quantization is named)."""
    strategy, export = rec["strategy"], rec["export"]
    accuracy, source = accuracy_of(rec["eval"], REPORT_SPLIT)
    tune_accuracy, _ = accuracy_of(rec["eval"], SELECTION_SPLIT)
    tune_drop = (dense[SELECTION_SPLIT] - tune_accuracy) * 100
    reasons = []
    if parent_tune is not None and (parent_tune - tune_accuracy) * 100 > max_drop + 1e-9:
        agreement = rec["eval"].get("agreement_with_parent")
        agrees = f", top-1 agreement with it {agreement * 100:.1f}% on held-out" if agreement is not None else ""
        reasons.append(f"INT8 quantization costs {(parent_tune - tune_accuracy) * 100:.2f} points against its parent "
                       f"{strategy['parent']} on the tune split (more than --max-drop){agrees}")
    if tune_drop > max_drop + 1e-9:
        reasons.append(f"accuracy drop {tune_drop:.2f} > {max_drop:g} points on the tune split")
    if export is None:
        reasons.append(export_note or f"not exported (run `mixprune export {root} --candidate {cid}`)")
    elif not export.get("verified"):
        reasons.append("export not verified (zeros lost or onnxruntime disagrees with torch; see export.json)")
    per_device = {}
    for device in devices:
        metrics = _device_metrics(rec["bench"].get(device))
        own = _device_reasons(device, metrics, root) if export is not None else []
        per_device[device] = {**(metrics or {}), "benched": metrics is not None,
                              "eligible": not reasons and not own, "reasons": own}
        reasons.extend(own)
    axes = Axes.of(strategy)
    row = {
        "cid": cid, **axes.record(), "signal": strategy["signal"], "strategy": strategy["strategy"],
        "mode": axes.family, "kernels": "int8" if axes.is_int8 else "fp32",
        "parent": strategy.get("parent"), "activation": axes.activation, "style": strategy.get("style"),
        "global_sparsity": strategy["global_sparsity"], "macs_reduction": strategy.get("macs_reduction"),
        "baselines": strategy.get("baselines", []), "accuracy": accuracy, "accuracy_source": source,
        "drop_points": round((dense[REPORT_SPLIT] - accuracy) * 100, 4),
        "tune_accuracy": tune_accuracy, "tune_drop_points": round(tune_drop, 4),
        "accuracy_pruned": rec["eval"]["accuracy"], "tune_accuracy_pruned": rec["eval"]["tune_accuracy"],
        "bytes": (export or {}).get("bytes"), "storage": (export or {}).get("storage"),
        "verified": bool(export and export.get("verified")),
        "devices": per_device, "eligible": not reasons,
        "reason": "; ".join(reasons) if reasons else None, "reasons": reasons,
    }
    return row


# --- noise bands, choice and Pareto front ---------------------------------------------
def _same_kernels(row: dict) -> bool:
    """fp32 graphs that differ only in zeros: the CPU provider runs the same dense kernels for all of them."""
    return row["kernels"] == "fp32" and row["family"] == UNSTRUCTURED


def use_paired_latency(device: str, rows: list[dict], dense: dict | None) -> bool:
    """Put every model's latency on ``device`` on the interleaved scale when all of them (and the
    dense model) were timed in the same interleaved bench; leave the isolated p50s otherwise."""
    ms = [m for m in [dense, *(r["devices"][device] for r in rows)] if m and m.get("benched", True)]
    blocks = [m["interleaved"] for m in ms]
    if not ms or any(b is None for b in blocks) or len({b["bench_id"] for b in blocks}) != 1:
        return False
    for m in ms:
        m.update(p50_ms=m["interleaved"]["p50_ms"], latency_source="interleaved")
    return True


def paired_noise(m: dict) -> float:
    """Relative noise of a model's paired ratio: the range of its per-process medians over their
    median (a process has a speed of its own); with one process, the interquartile range of its rounds."""
    block = m["interleaved"]
    per_process = block.get("process_ratios") or []
    if len(per_process) > 1:
        return (max(per_process) - min(per_process)) / statistics.median(per_process)
    ratio = block["ratio_to_reference"]
    return (ratio["q3"] - ratio["q1"]) / ratio["median"]


def device_bands(device: str, rows: list[dict]) -> dict:
    """Tie bands for latency and memory on ``device`` from its records (see the module docstring).

    ``shared``: when models of other kernels (INT8) are ranked beside fp32 ones, the fp32 ones
    run the same kernels, so they share one latency and memory (the median of their records)
    and only that is compared with the others, within the usual bands.
    """
    ms = [r["devices"][device] for r in rows if r["devices"][device]["benched"]]
    if not ms:
        return {"latency_ms": 0.0, "memory_mb": 0.0, "same_speed": False, "emulated": False, "shared": None,
                "latency_source": None}
    emulated = any(m["emulated"] for m in ms)
    cpu_only = all(m["cpu_only"] for m in ms)
    same_speed = cpu_only and all(_same_kernels(r) for r in rows)
    group = [r["devices"][device] for r in rows if r["devices"][device]["benched"] and _same_kernels(r)]
    shared = {key: statistics.median(m[key] for m in group) for key in ("p50_ms", "peak_rss_mb")} \
        if cpu_only and group and not same_speed else None
    best = min(ms, key=lambda m: m["p50_ms"])
    tied_by_construction = same_speed or emulated
    source = ms[0]["latency_source"]
    if source == "interleaved":
        latency = max(PAIRED_NOISE_FLOOR, paired_noise(best)) * best["p50_ms"]
    else:
        latency = max(best["p90_ms"] - best["p50_ms"], LATENCY_NOISE_FLOOR * best["p50_ms"])
    return {
        "latency_ms": math.inf if tied_by_construction else latency,
        "memory_mb": math.inf if tied_by_construction else max(MEMORY_NOISE_MB,
                                                               MEMORY_NOISE_FLOOR * min(m["peak_rss_mb"] for m in ms)),
        "same_speed": same_speed, "emulated": emulated, "shared": shared, "latency_source": source,
    }


def _measured(row: dict, key: str, device: str, bands: dict) -> float:
    shared = bands.get("shared")
    return shared[key] if shared and _same_kernels(row) else row["devices"][device][key]


def _objective_value(row: dict, objective: str, device: str, bands: dict) -> float:
    if objective == "size":
        return row["bytes"]["compact"]
    return _measured(row, "p50_ms" if objective == "latency" else "peak_rss_mb", device, bands)


def _band(objective: str, bands: dict) -> float:
    return {"latency": bands["latency_ms"], "memory": bands["memory_mb"], "size": 0.0}[objective]


def choice_order(rows: list[dict], objective: str, device: str, bands: dict) -> tuple[list[dict], int]:
    """Eligible rows, best first, and how many tie with the best (values within its band)."""
    if not rows:
        return [], 0
    best = min(_objective_value(r, objective, device, bands) for r in rows)
    band = _band(objective, bands)
    tied = {r["cid"] for r in rows if _objective_value(r, objective, device, bands) - best <= band}

    def key(r):
        value = best if r["cid"] in tied else _objective_value(r, objective, device, bands)
        return (value, -r["tune_accuracy"], r["bytes"]["compact"], r["cid"])

    return sorted(rows, key=key), len(tied)


def pareto_front(rows: list[dict], device: str, bands: dict) -> list[str]:
    """Candidates no other dominates on (tune accuracy up; p50, peak RSS, compact bytes down).

    Latency and memory count as better or worse only beyond their noise band.
    """
    def metrics(r):
        return (r["tune_accuracy"], _measured(r, "p50_ms", device, bands), _measured(r, "peak_rss_mb", device, bands),
                r["bytes"]["compact"])

    def dominates(a, b):
        (acc_a, lat_a, rss_a, b_a), (acc_b, lat_b, rss_b, b_b) = metrics(a), metrics(b)
        lat, rss = bands["latency_ms"], bands["memory_mb"]
        no_worse = acc_a >= acc_b and b_a <= b_b and lat_a <= lat_b + lat and rss_a <= rss_b + rss
        better = acc_a > acc_b or b_a < b_b or lat_a < lat_b - lat or rss_a < rss_b - rss
        return no_worse and better

    return sorted(r["cid"] for r in rows if not any(dominates(o, r) for o in rows if o is not r))


def speed_note(device: str, rows: list[dict], bands: dict) -> str:
    ms = [r["devices"][device] for r in rows if r["devices"][device]["benched"]]
    if not ms:
        return f"{device}: no candidate was measured"
    p50 = [m["p50_ms"] for m in ms]
    spread = f"p50 {min(p50):.3f}-{max(p50):.3f} ms"
    if bands["emulated"]:
        return (f"{device} is emulated: its timings ({spread}) say that the models run on aarch64 onnxruntime, "
                f"not how fast a real board is; they are never used to rank against real timings")
    if bands["same_speed"]:
        sizes = [r["bytes"]["compact"] for r in rows if r["bytes"]]
        size = f"; compact size {min(sizes) / MB:.2f}-{max(sizes) / MB:.2f} MB" if sizes else ""
        return (f"{device}: candidates differ only in accuracy and file size, not in speed or memory: "
                f"unstructured sparsity on onnxruntime's CPU provider runs the same dense kernels "
                f"(measured {spread}, spread is noise{size}); none of them is faster than the dense model")
    how = ("timed interleaved in one process with the dense model, paired ratios" if bands["latency_source"] ==
           "interleaved" else "each model timed in its own process")
    return f"{device}: latency ({how}) ties within {bands['latency_ms']:.3f} ms of the fastest ({spread})"


def versus_dense(row: dict, device: str, bands: dict, dense: dict | None) -> dict | None:
    """How much faster than the dense model ``row`` runs on ``device`` (None when it cannot be said:
    not benched, dense not benched, emulated timings).

    ``speedup``: dense p50 / this p50; ``low``/``high``: from the quartiles of the paired
    ratios (interleaved timing only); ``faster``: by more than the latency band. fp32 models
    that differ from dense only in zeros run its kernels: 1.0 and not faster, by construction.
    """
    m = row["devices"][device]
    if not m["benched"] or dense is None or bands["emulated"]:
        return None
    if _same_kernels(row) and m["cpu_only"]:
        return {"speedup": 1.0, "low": 1.0, "high": 1.0, "faster": False, "source": SAME_KERNELS}
    value = _measured(row, "p50_ms", device, bands)
    block = m["interleaved"] if m["latency_source"] == "interleaved" else None
    ratio = block["ratio_to_reference"] if block and block["reference"] == DENSE else None
    return {"speedup": dense["p50_ms"] / value, "low": 1 / ratio["q3"] if ratio else None,
            "high": 1 / ratio["q1"] if ratio else None, "faster": dense["p50_ms"] - value > bands["latency_ms"],
            "band_ms": None if math.isinf(bands["latency_ms"]) else bands["latency_ms"],
            "source": m["latency_source"]}


def format_of(row: dict) -> str:
    """The row's format (``fp32``, ``int8-<activation type>``), prefixed ``structured `` for the
    structured family (channel-cut models and their INT8 variants)."""
    return row["format"] if row["family"] == UNSTRUCTURED else f"{row['family']} {row['format']}"


def format_summary(device: str, rows: list[dict], bands: dict) -> dict:
    """Per format on ``device``: how many models, how many eligible, and the median speedup vs dense
    and how many are faster beyond the band (which format wins on this model and device, and by how much)."""
    summary = {}
    for r in rows:
        vs = r["devices"][device]["vs_dense"]
        entry = summary.setdefault(format_of(r), {"models": 0, "eligible": 0, "speedups": [], "faster": 0})
        entry["models"] += 1
        entry["eligible"] += r["eligible"]
        if vs is not None:
            entry["speedups"].append(vs["speedup"])
            entry["faster"] += vs["faster"]
    return {name: {"models": e["models"], "eligible": e["eligible"], "faster_than_dense": e["faster"],
                   "median_speedup_vs_dense": statistics.median(e["speedups"]) if e["speedups"] else None}
            for name, e in sorted(summary.items())}


def speed_versus_dense(cid: str, device: str, vs: dict | None) -> str:
    if vs is None:
        return f"{cid}: its speed on {device} relative to dense cannot be said (not measured, or emulated)"
    if vs["source"] == SAME_KERNELS:
        return f"{cid} runs dense's kernels on {device}: not faster than the dense model"
    quartiles = f", paired quartiles {vs['low']:.2f}-{vs['high']:.2f}x" if vs["low"] is not None else ""
    verdict = ("faster than dense beyond the noise band" if vs["faster"] else
               "not faster than dense beyond the noise band")
    band = f" of {vs['band_ms']:.3f} ms" if vs["band_ms"] is not None else ""
    return f"{cid} runs {vs['speedup']:.2f}x the speed of dense on {device} ({vs['source']}{quartiles}): {verdict}{band}"


def _no_choice_message(rows: list[dict], max_drop: float) -> str:
    best = sorted(rows, key=lambda r: (-r["tune_accuracy"], r["cid"]))[:3]
    excluded = "; ".join(f"{r['cid']}: {r['reasons'][0]}" for r in best)
    hint = (f"raise --max-drop to at least {best[0]['tune_drop_points']:.2f}" if best[0]["tune_drop_points"] > max_drop
            else "relax the device budgets, or export and bench these candidates")
    return f"no eligible candidate; the most accurate are excluded by: {excluded}; {hint}"


def rank(records: dict, *, max_drop: float = 1.0, devices=(), objective: str = "latency",
         export_notes: dict | None = None) -> dict:
    """The ranking of every candidate (``ranking.json``'s content)."""
    if objective not in OBJECTIVES:
        raise MixpruneError(f"unknown objective '{objective}'; choose from {', '.join(OBJECTIVES)}")
    devices = list(dict.fromkeys(devices)) or benched_devices(records)
    _check_stages(records, devices)
    root = records["root"]
    dense_eval = records["dense"]["eval"]
    dense = {split: accuracy_of(dense_eval, split)[0] for split in (REPORT_SPLIT, SELECTION_SPLIT)}
    dense_accuracy = dense[REPORT_SPLIT]
    tune = {DENSE: dense[SELECTION_SPLIT],
            **{cid: accuracy_of(rec["eval"], SELECTION_SPLIT)[0] for cid, rec in records["models"].items()}}
    rows = [candidate_row(cid, rec, dense, max_drop, devices, root, (export_notes or {}).get(cid),
                          tune.get(rec["strategy"].get("parent")) if Axes.of(rec["strategy"]).is_int8 else None)
            for cid, rec in records["models"].items()]
    for device in devices:
        emulated = {m["emulated"] for r in rows if (m := r["devices"][device])["benched"]}
        if len(emulated) > 1:
            raise RunDirError(f"bench records for {device} in {root} mix emulated and real timings; "
                              f"re-run `mixprune bench {root} --device {device}`")
    dense_metrics = {d: _device_metrics(records["dense"]["bench"].get(d)) for d in devices}
    device_info, fronts = [], {}
    for device in devices:
        use_paired_latency(device, rows, dense_metrics[device])
        bands = device_bands(device, rows)
        for r in rows:
            r["devices"][device]["vs_dense"] = versus_dense(r, device, bands, dense_metrics[device])
        on_device = [r for r in rows if r["devices"][device]["eligible"]]
        fronts[device] = pareto_front(on_device, device, bands)
        device_info.append({"name": device, "emulated": bands["emulated"], "same_speed": bands["same_speed"],
                            "latency_band_ms": None if math.isinf(bands["latency_ms"]) else bands["latency_ms"],
                            "memory_band_mb": None if math.isinf(bands["memory_mb"]) else bands["memory_mb"],
                            "latency_source": bands["latency_source"],
                            "fp32_shared_p50_ms": (bands["shared"] or {}).get("p50_ms"),
                            "speed_note": speed_note(device, rows, bands), "_bands": bands})
    real = [d for d in device_info if not d["emulated"]]
    choice_device = (real or device_info)[0]
    eligible = [r for r in rows if r["eligible"]]
    for d in device_info:
        bands = d.pop("_bands")
        d["formats"] = format_summary(d["name"], rows, bands)
        on_this, tied_here = choice_order(eligible, objective, d["name"], bands)
        d["best"] = on_this[0]["cid"] if on_this else None  # what this device alone would ship
        d["pareto"] = fronts[d["name"]]
        if d is choice_device:
            ordered, tied = on_this, tied_here
    order = {r["cid"]: i for i, r in enumerate(ordered)}
    for r in rows:
        r["rank"] = order[r["cid"]] + 1 if r["cid"] in order else None
        r["pareto"] = [d for d in devices if r["cid"] in fronts[d]]
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, -r["tune_accuracy"], r["cid"]))
    chosen = ordered[0] if ordered else None
    if chosen:
        for d in device_info:
            d["chosen_vs_dense"] = speed_versus_dense(chosen["cid"], d["name"], chosen["devices"][d["name"]]["vs_dense"])
            d["speed_note"] += f"; {d['chosen_vs_dense']}"
    return {
        "format": FORMAT_VERSION,
        "model": records["run"].get("model", {}).get("name"),
        "objective": objective, "max_drop": max_drop, "rule": RULE, "selection_split": SELECTION_SPLIT,
        "tune_samples": dense_eval.get("tune_samples"), "samples": dense_eval.get("samples"),
        "dense": {"accuracy": dense_accuracy, "tune_accuracy": dense[SELECTION_SPLIT],
                  "bytes": (records["dense"]["export"] or {}).get("bytes"),
                  "devices": dense_metrics},
        "devices": device_info, "choice_device": choice_device["name"],
        "chosen": chosen["cid"] if chosen else None,
        "chosen_why": _why(chosen, len(ordered), tied, objective, choice_device, dense_eval) if chosen else
        _no_choice_message(rows, max_drop),
        "speed_note": " | ".join(d["speed_note"] for d in device_info),
        "pareto": fronts[choice_device["name"]],
        "eligible_count": len(eligible),
        "variant_failures": records["run"].get("stages", {}).get("export", {}).get("variant_failures", {}),
        "candidates": rows,
    }


OBJECTIVE_LABELS = {"latency": "p50 latency", "memory": "peak RSS", "size": "compact size"}


def _why(chosen: dict, eligible: int, tied: int, objective: str, device: dict, dense: dict) -> str:
    m = chosen["devices"][device["name"]]
    label = OBJECTIVE_LABELS[objective]
    if objective != "size" and (device["same_speed"] or device["emulated"]):
        cause = "emulated timings" if device["emulated"] else "unstructured sparsity on the CPU provider"
        ties = f"all {eligible} eligible candidates tie on {label} on {device['name']} ({cause})"
    elif tied > 1:
        ties = f"{tied} of {eligible} eligible candidates tie for the best {label} on {device['name']} within measured noise"
    else:
        ties = f"best {label} on {device['name']} of {eligible} eligible candidates"
    among = "; among them it has the highest tune accuracy, then the smallest size" if tied > 1 else ""
    drop = chosen["drop_points"]
    versus = f"drop {drop:.2f} points" if drop >= 0 else f"{-drop:.2f} points above it"
    kernels = f"INT8 ({chosen['activation']} activations) of {chosen['parent']}, " if chosen["kernels"] == "int8" else ""
    cut = removed(chosen)
    return (f"{chosen['cid']}: {ties}{among}: held-out accuracy {chosen['accuracy']:.4f} (dense "
            f"{dense['accuracy']:.4f}, {versus}; chosen on the tune split: {chosen['tune_accuracy']:.4f} vs dense "
            f"{dense['tune_accuracy']:.4f}), {cut}, {kernels}"
            f"compact {chosen['bytes']['compact'] / MB:.2f} MB, p50 {m['p50_ms']:.3f} ms, "
            f"peak RSS {m['peak_rss_mb']:.1f} MB")


def rank_run(run_dir, *, max_drop: float = 1.0, devices=(), objective: str = "latency",
             export_notes: dict | None = None) -> dict:
    """Rank a run directory and write ranking.json; return the ranking (``chosen`` may be None)."""
    run = RunDir(run_dir)
    ranking = rank(load_run(run.root), max_drop=max_drop, devices=devices, objective=objective,
                   export_notes=export_notes)
    run.write_ranking(ranking)
    return ranking


def require_choice(ranking: dict, run_dir) -> None:
    """Raise NoEligibleCandidate when the ranking chose nothing (its records still say why)."""
    if ranking["chosen"] is None:
        raise NoEligibleCandidate(ranking["chosen_why"] + f" (every reason is in {RunDir(run_dir).ranking_json})")
