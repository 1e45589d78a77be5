"""Structured study: how much faster channel-cut models run in onnxruntime than the dense model,
per MAC reduction, how INT8 stacks on top, and what the cuts cost in accuracy.

Speed at 224x224 (timm, random weights, eval mode, 3 channels, 1000 classes): resnet18,
vit_tiny_patch16_224 (whole heads and MLP hidden units cut, token width kept),
mobilenetv3_small_100 and convnext_atto. Each is cut at two MAC reductions (0.5 and 0.7)
with the structured Mix-and-Match "balanced" strategy shifted to the MAC target, as
mixprune does it (pruning/structured.py, pruning/cut.py):

    blueprint = Blueprint(model, example, name)
    scores = {"magnitude": score_groups(model, example, "magnitude", round_to=8)}
    ranges, _, _ = structured_ranges(blueprint, scores, cuttable_layers(model), get_table(name),
                                     targets=(0.3, 0.5, 0.7), round_to=8)
    ratios = within_caps(blueprint, STRATEGIES.get("balanced")(cuttable_layers(model), ranges), 8)
    ratios = shift_to_macs(blueprint, ratios, target, round_to=8)
    cut, record = cut_model(model, example, cut_ratios(ratios), scores["magnitude"], round_to=8)

Accuracy and speed at 32x32 on digits (resnet18, and vit_tiny_patch16_224 with 8x8 patches):
mixprune's own prune stage. `mixprune prune --mode structured --macs-reduction R` per R (the
dense model trained once, 15 epochs, then reused with --checkpoint): 30 structured
Mix-and-Match candidates and the 3 matched structured baselines (global magnitude, global
Taylor, uniform) at the same MACs; the best Mix-and-Match one and its baselines fine-tuned
(--finetune-top 1, mixprune's default epochs). Then `mixprune prune --mode unstructured
--sparsity S`, S = the share of the prunable weights the best structured cut removed: the
unstructured candidate with the same parameter count, and its matched MAG/SNIP/GraSP
baselines, fine-tuned likewise. The dense model and the best structured cut at each R are
then timed like the 224 models.

The dense model and each cut are exported as mixprune exports (``export_onnx``: opset 17,
TorchScript exporter, dynamic batch axis; guarded onnxsim; +0.0 zeros), and each gets its
static QDQ INT8 variant with uint8 activations (``mixprune.exporter.quantize.quantize``;
calibrated on 32 digits images upsampled to 224 and repeated to 3 channels for the random
models, on mixprune's 108-image calibration split at 32x32).

Timing: the real agent (``devices/agent.py`` through ``LocalRunner.interleave``), 1 intra-op
thread, batch 1; one group per model and size = dense + its cuts + their INT8s, timed in
--processes agent processes (--rounds rounds each, runs per round chosen so the timed runs of
a process take about --process-seconds), pooled with ``mixprune.benchmarks.paired.summarize``
(reference = dense fp32). Speedup = 1 / median pooled ratio; quartiles likewise.

    OMP_NUM_THREADS=1 python experiments/structured/run_structured.py [--rounds 20] [--processes 3]
    python experiments/structured/run_structured.py --tables   # the README's tables from results.json

Writes experiments/structured/results.json (atomically, after every phase).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from mixprune.benchmarks.paired import paired_ratios, quartiles, summarize
from mixprune.compat import import_timm
from mixprune.data import DataSpec, load_splits
from mixprune.devices.runners.local import LocalRunner
from mixprune.exporter import parity
from mixprune.exporter.audit import audit
from mixprune.exporter.onnx_export import INPUT_NAME, canonicalize_zeros, export_onnx
from mixprune.exporter.quantize import RECIPES, quantize
from mixprune.exporter.simplify import simplify_guarded
from mixprune.models import ModelSpec
from mixprune.models.stored import build_stored
from mixprune.pruning.cut import Blueprint, GroupScores, cut_model, score_groups
from mixprune.pruning.ranges import get_table
from mixprune.pruning.roles import prunable_names
from mixprune.pruning.strategies import STRATEGIES
from mixprune.pruning.structured import (cut_ratios, cuttable_layers, describe_cut, shift_to_macs, structured_ranges,
                                         within_caps)
from mixprune.runs import RunDir, atomic_write_json, now_iso, package_versions

HERE = Path(__file__).resolve().parent
OPSET = 17
ROUND_TO = 8
STRATEGY = "balanced"
IMPORTANCES = ("magnitude",)
RANGE_TARGETS = (0.3, 0.5, 0.7)
MAC_TARGETS = (0.5, 0.7)
VIT = "vit_tiny_patch16_224"
MODELS_224 = ("resnet18", VIT, "mobilenetv3_small_100", "convnext_atto")
# the models trained on digits at 32x32: 8x8 patches keep the ViT's 16 tokens affordable on 2 cores
DIGITS_MODELS = {"resnet18": [], VIT: ["--model-arg", "patch_size=8"]}
RECIPE = "int8u"  # static QDQ, uint8 activations (the fast one on this x86 host: experiments/int8)
CALIBRATION_224 = 32  # digits images, upsampled: the 224 models have random weights, speed only
EFFICIENCY_TARGET = 0.8  # the issue: speedup / MAC-reduction factor >= 0.8 at 224
PARITY_IMAGES = 4
# timm zero-initialises the last BatchNorm of every resnet block: with random weights those convs fold to all-zero
# tensors (which the exporter then shares) and their magnitude ranking is meaningless; trained weights have no such zeros
RANDOM_KWARGS = {"resnet18": {"zero_init_last": False}}

START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f}s] {message}", flush=True)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- the machine --------------------------------------------------------------------------
def cpu_info() -> dict:
    first, flags = {}, set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key in ("vendor_id", "model name", "cpu family", "model", "stepping") and key not in first:
                first[key] = value
    relevant = sorted(f for f in flags if f.startswith(("avx512", "avx2", "avx_vnni", "amx", "fma")))
    return {"model_name": first.get("model name"), "cpuinfo": first, "int8_relevant_flags": relevant,
            "usable_cores": len(os.sched_getaffinity(0)), "machine": platform.machine()}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# --- cutting ------------------------------------------------------------------------------
@dataclasses.dataclass
class BalancedPlan:
    """Phase 1 of one model (magnitude scores, ranges) and the balanced strategy's ratios in them."""
    blueprint: Blueprint
    scores: GroupScores
    ratios: dict
    phase1: dict


def balanced_plan(model, example, name: str) -> BalancedPlan:
    """Phase 1 ranges (global magnitude runs at RANGE_TARGETS, clamped by the rule table) and
    the balanced strategy's ratios inside them; plus the achieved MAC reduction of each global run."""
    table = get_table(name)
    blueprint = Blueprint(model, example, name)
    scores = {imp: score_groups(model, example, imp, round_to=ROUND_TO, label=name) for imp in IMPORTANCES}
    layers = cuttable_layers(model)
    ranges, _, achieved = structured_ranges(blueprint, scores, layers, table, targets=RANGE_TARGETS, round_to=ROUND_TO)
    ratios = within_caps(blueprint, STRATEGIES.get(STRATEGY)(layers, ranges), ROUND_TO)
    return BalancedPlan(blueprint, scores[IMPORTANCES[0]], ratios,
                        {"table": table.name, "global_runs_mac_reduction": achieved})


def make_cut(model, example, plan: BalancedPlan, target: float, name: str) -> tuple[torch.nn.Module, dict]:
    """The balanced ratios shifted to ``target`` of the MACs, and the cut model."""
    start = time.perf_counter()
    shifted = shift_to_macs(plan.blueprint, plan.ratios, target, round_to=ROUND_TO)
    cut, record = cut_model(model, example, cut_ratios(shifted), plan.scores, round_to=ROUND_TO,
                            label=f"{name} cut {target:g}")
    ratios_used = list(shifted.values())
    info = {"target_mac_reduction": target, **cut_summary(plan.blueprint, cut, example),
            "channel_ratio_min": min(ratios_used), "channel_ratio_max": max(ratios_used),
            "channel_ratio_mean": statistics.fmean(ratios_used),
            "layers_cut": sum(r > 0 for r in ratios_used), "layers": len(ratios_used),
            "cut_groups": len(record.groups), "seconds": round(time.perf_counter() - start, 1),
            "ratios": {n: round(r, 4) for n, r in shifted.items()}}
    return cut, info


def cut_summary(blueprint: Blueprint, cut, example) -> dict:
    """MACs and parameters before and after (from mixprune's strategy.json record of a cut), heads if any."""
    described = describe_cut(blueprint, cut, example)
    before, after = described["macs"]["before"], described["macs"]["after"]
    heads = described.get("heads", {})
    return {"macs_before": before, "macs_after": after, "params_before": described["params"]["before"],
            "params_after": described["params"]["after"], "mac_reduction": 1 - after / before,
            "mac_factor": before / after, "param_reduction": described["params_reduction"],
            "heads_before": sum(h["before"] for h in heads.values()) if heads else None,
            "heads_after": sum(h["after"] for h in heads.values()) if heads else None}


# --- export and quantization -----------------------------------------------------------------
def export_checked(model, input_shape: tuple, label: str) -> tuple[bytes, str]:
    """fp32 ONNX bytes the way `mixprune export` makes them (export, guarded onnxsim, +0.0 zeros)."""
    model.eval()
    wanted = set(prunable_names(model))
    params = {name: p.detach().numpy() for name, p in model.named_parameters() if name in wanted}
    exported = export_onnx(model, input_shape, opset=OPSET, label=label)
    final, _, note = simplify_guarded(exported, lambda proto: audit(params, proto))
    canonicalize_zeros(final)
    return final.SerializeToString(), note


def onnx_weights(data: bytes) -> int:
    """Elements of the ONNX initializers with >= 2 dims (conv / linear weights, float or int8)."""
    return sum(int(np.prod(init.dims)) for init in onnx.load_from_string(data).graph.initializer
               if len(init.dims) >= 2)


def torch_weights(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


class QuietQuantizer(logging.Filter):
    """Keeps onnxruntime's quantizer warnings off the screen (counted)."""

    def __init__(self):
        super().__init__()
        self.lines = 0

    def filter(self, record):
        if record.levelno <= logging.WARNING:
            self.lines += 1
            return False
        return True


def quantized(fp32: bytes, calibration: np.ndarray, label: str, log: QuietQuantizer) -> tuple[bytes, float]:
    start = time.perf_counter()
    root = logging.getLogger()
    root.addFilter(log)
    try:
        data = quantize(fp32, calibration, RECIPES.get(RECIPE), label)
    finally:
        root.removeFilter(log)
    return data, round(time.perf_counter() - start, 1)


def upsample(images: torch.Tensor, size: int, channels: int) -> np.ndarray:
    big = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return big.repeat(1, channels, 1, 1).contiguous().numpy()


def stack(dataset) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), np.asarray(labels)


def parity_check(model, data: bytes, images: torch.Tensor, label: str) -> dict:
    return parity.compare(parity.torch_logits(model, images), parity.ort_logits(parity.session(data, label), images))


def build_group(models: dict, input_shape: tuple, calibration: np.ndarray, parity_images: torch.Tensor,
                folder: Path, group: str) -> tuple[dict, dict]:
    """Export every fp32 model of ``models`` ({id: torch model}), quantize each, write the files.

    Returns ({variant id: path}, {variant id: export record})."""
    paths, records = {}, {}
    log = QuietQuantizer()
    fp32 = {}
    for mid, model in models.items():
        start = time.perf_counter()
        data, note = export_checked(model, input_shape, f"{group} {mid}")
        fp32[mid] = data
        records[mid] = {"format": "fp32", "bytes": len(data), "onnx_weights": onnx_weights(data),
                        "torch_weights": torch_weights(model), "simplify_note": note,
                        "parity": parity_check(model, data, parity_images, f"{group} {mid}"),
                        "export_seconds": round(time.perf_counter() - start, 1)}
    for mid in models:
        qid = f"{mid}+int8u"
        data, seconds = quantized(fp32[mid], calibration, f"{group} {mid}", log)
        records[qid] = {"format": f"static QDQ INT8, {RECIPES.get(RECIPE).activation} activations", "parent": mid, "bytes": len(data),
                        "onnx_weights": onnx_weights(data), "quantize_seconds": seconds}
        say(f"  {group} {qid}: quantized in {seconds} s")
        fp32[qid] = data
    for vid, data in fp32.items():
        path = folder / f"{group.replace('@', '_')}_{vid.replace('+', '_')}.onnx"
        path.write_bytes(data)
        paths[vid] = path
    records["_quantizer_log_lines"] = log.lines
    return paths, records


# --- timing -------------------------------------------------------------------------------
def probe_ms(path: Path, shape: list[int], runs: int = 5) -> float:
    """Median single-thread latency of one model, to size the agent's runs (not a result)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    session.run(None, feed)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def time_group(group: str, paths: dict[str, Path], shape: list[int], args) -> dict:
    """The group (dense first: the reference) in ``args.processes`` agent processes, pooled."""
    ids = list(paths)
    probes = {vid: probe_ms(paths[vid], shape) for vid in ids}
    per_round = int(min(args.max_runs_per_round,
                        max(2, args.process_seconds / args.rounds / (sum(probes.values()) / 1e3))))
    config = {"runs": per_round * args.rounds, "rounds": args.rounds, "warmup": args.warmup,
              "intra_op_threads": 1, "shapes": {INPUT_NAME: shape}}
    runner = LocalRunner({"kind": "local", "python": "", "run_timeout_s": 300})
    measured, processes = [], []
    for p in range(args.processes):
        before, t0 = load_average(), time.perf_counter()
        record = runner.interleave([paths[vid] for vid in ids], config)
        wall = time.perf_counter() - t0
        measured.append((ids, record))
        processes.append({"load_average_before": before, "load_average_after": load_average(),
                          "wall_s": round(wall, 1), "runner_wall_ms": record.get("runner_wall_ms"),
                          "p50_ms": {vid: m["latency_ms"]["p50"] for vid, m in zip(ids, record["models"])},
                          "peak_rss_mb": record.get("peak_rss_mb"),
                          "onnxruntime_version": record.get("onnxruntime_version"),
                          "threads": record.get("threads")})
        say(f"  {group} process {p + 1}/{args.processes}: {wall:.1f} s, dense p50 "
            f"{record['models'][0]['latency_ms']['p50']:.3f} ms, load {before[0]:.2f}")
    blocks = summarize(measured, ids[0], f"structured-{group}")
    rounds = [{vid: m["round_p50_ms"] for vid, m in zip(ids, record["models"])} for _, record in measured]

    def pooled(numerator: str, denominator: str) -> dict:
        """Paired per-round ratios numerator / denominator, pooled over the processes (as summarize does)."""
        return quartiles([r for per in rounds for r in paired_ratios(per[numerator], per[denominator])])

    # INT8 cut vs INT8 dense, and each INT8 variant vs its own fp32 parent (the reference of summarize is dense fp32)
    dense_int8 = f"{ids[0]}+int8u"
    vs_int8 = {vid: pooled(vid, dense_int8) for vid in ids if vid.endswith("+int8u") and vid != dense_int8}
    vs_parent = {vid: pooled(vid, vid.removesuffix("+int8u")) for vid in ids if vid.endswith("+int8u")}
    return {"ids": ids, "input_shape": shape, "agent_config": config, "probe_ms": probes,
            "processes": processes, "summary": blocks, "ratio_to_dense_int8": vs_int8,
            "ratio_to_fp32_parent": vs_parent, "round_p50_ms": rounds}


def speed_rows(entry: dict, cuts: dict) -> dict:
    """Per variant: p50 (dense scale), speedup vs dense fp32 with quartiles, speedup / MAC factor."""
    rows = {}
    for vid in entry["ids"]:
        block = entry["summary"][vid]
        ratio = block["ratio_to_reference"]
        parent = vid.removesuffix("+int8u")
        factor = cuts[parent]["mac_factor"] if parent in cuts else 1.0
        row = {"p50_ms": block["p50_ms"], "own_p50_ms": block["own_p50_ms"],
               "speedup": 1 / ratio["median"], "speedup_q1": 1 / ratio["q3"], "speedup_q3": 1 / ratio["q1"],
               "process_speedups": [1 / r for r in block["process_ratios"]], "mac_factor": factor,
               "speedup_per_mac_factor": (1 / ratio["median"]) / factor}
        if vid in entry["ratio_to_dense_int8"]:
            r8 = entry["ratio_to_dense_int8"][vid]
            row["speedup_vs_dense_int8"] = 1 / r8["median"]
            row["speedup_vs_dense_int8_q1"] = 1 / r8["q3"]
            row["speedup_vs_dense_int8_q3"] = 1 / r8["q1"]
            row["speedup_vs_dense_int8_per_mac_factor"] = (1 / r8["median"]) / factor
        if vid in entry["ratio_to_fp32_parent"]:
            rp = entry["ratio_to_fp32_parent"][vid]
            row["int8_gain_over_fp32_parent"] = 1 / rp["median"]
            row["int8_gain_q1"], row["int8_gain_q3"] = 1 / rp["q3"], 1 / rp["q1"]
        rows[vid] = row
    return rows


# --- accuracy at 32x32 on digits: mixprune's own prune stage ----------------------------------
def mixprune_prune(out: Path, *flags: str) -> RunDir:
    """`mixprune prune --out OUT --finetune-top 1 FLAGS` in a subprocess (its status lines off)."""
    command = [str(Path(sys.executable).with_name("mixprune")), "prune", "--out", str(out), "--finetune-top", "1", *flags]
    say("  " + " ".join(command[1:]))
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MIXPRUNE_QUIET": "1"})
    return RunDir(out)


def candidate_row(run: RunDir, cid: str) -> dict:
    strategy, evaluation = run.candidate(cid).read_strategy(), run.candidate(cid).read_eval()
    return {"kind": strategy["kind"], "signal": strategy["signal"], "strategy": strategy["strategy"],
            "global_sparsity": strategy["global_sparsity"], "macs_reduction": strategy.get("macs_reduction"),
            "params_reduction": strategy.get("params_reduction"), "accuracy": evaluation["accuracy"],
            "tune_accuracy": evaluation["tune_accuracy"], "accuracy_finetuned": evaluation["accuracy_finetuned"],
            "tune_accuracy_finetuned": evaluation["tune_accuracy_finetuned"]}


def family(run: RunDir, kind: str) -> dict:
    """The fine-tuned Mix-and-Match candidate of ``kind`` (the best by tune accuracy) and its matched
    baselines; and how the 30 Mix-and-Match candidates compare with each baseline before fine-tuning."""
    rows = {cid: candidate_row(run, cid) for cid in run.candidate_ids()}
    mixmatch = {cid: r for cid, r in rows.items() if r["kind"] == kind}
    best = next(cid for cid, r in mixmatch.items() if r["accuracy_finetuned"] is not None)
    baselines = run.candidate(best).read_strategy()["baselines"]
    before = {b: {"accuracy": rows[b]["accuracy"],
                  "mixmatch_at_or_above": sum(r["accuracy"] >= rows[b]["accuracy"] for r in mixmatch.values())}
              for b in baselines}
    return {"best": best, "rows": {cid: rows[cid] for cid in [best, *baselines]}, "mixmatch_count": len(mixmatch),
            "mixmatch_best_accuracy": max(r["accuracy"] for r in mixmatch.values()),
            "mixmatch_median_accuracy": statistics.median(r["accuracy"] for r in mixmatch.values()),
            "baselines_before_finetune": before}


def digits_part(name: str, flags: list[str], folder: Path, args) -> tuple[dict, dict, ModelSpec, RunDir]:
    """Per MAC target: the structured run and the unstructured run at the same parameter count.
    Returns (record, {cut id: (run, cid)}, spec, the first structured run)."""
    out, cuts, checkpoint, first = {"model": name, "flags": flags, "targets": {}}, {}, None, None
    for target in MAC_TARGETS:
        common = ["--model", name, *flags, "--img-size", "32",
                  *(["--checkpoint", checkpoint] if checkpoint else ["--train-epochs", str(args.epochs)])]
        t0 = time.perf_counter()
        structured = mixprune_prune(folder / f"{name}-structured-{target:g}", *common, "--mode", "structured",
                                    "--macs-reduction", f"{target:g}")
        first = first or structured
        checkpoint = checkpoint or str(structured.dense.weights_file)
        cut_family = family(structured, "structured")
        sparsity = cut_family["rows"][cut_family["best"]]["global_sparsity"]
        t1 = time.perf_counter()
        unstructured = mixprune_prune(folder / f"{name}-unstructured-{target:g}", *common, "--mode", "unstructured",
                                      "--sparsity", f"{sparsity:.4f}")
        zeros_family = family(unstructured, "mixmatch")
        dense = structured.dense.read_eval()
        out["targets"][f"{target:g}"] = {
            "dense": {"accuracy": dense["accuracy"], "tune_accuracy": dense["tune_accuracy"]},
            "structured": cut_family, "unstructured_same_params": {**zeros_family, "sparsity": sparsity},
            "seconds": {"structured_prune": round(t1 - t0, 1), "unstructured_prune": round(time.perf_counter() - t1, 1)}}
        best = cut_family["rows"][cut_family["best"]]
        say(f"  {name}@32 MACs -{target:g}: {cut_family['best']} {best['accuracy_finetuned']:.4f} "
            f"(dense {dense['accuracy']:.4f}); unstructured at {sparsity:.3f} sparsity: "
            f"{zeros_family['best']} {zeros_family['rows'][zeros_family['best']]['accuracy_finetuned']:.4f}")
        cuts[f"cut{int(target * 100)}"] = (structured, cut_family["best"])
    spec = ModelSpec.from_dict(first.load()["model"])
    return out, cuts, spec, first


def speed_models_32(name: str, cuts: dict, spec: ModelSpec, first: RunDir, folder: Path, calibration: np.ndarray,
                    val_images: torch.Tensor, val_labels: np.ndarray) -> tuple[dict, dict, dict]:
    """Export and quantize the dense model and the best structured cut at each target (fine-tuned);
    held-out accuracy of each in onnxruntime. Returns (paths, exports, cut records)."""
    models = {"dense": build_stored(spec, first.dense)}
    records = {}
    for mid, (run, cid) in cuts.items():
        models[mid] = build_stored(spec, run.candidate(cid))
        strategy = run.candidate(cid).read_strategy()
        before, after = strategy["macs"]["before"], strategy["macs"]["after"]
        records[mid] = {"cid": cid, "macs_before": before, "macs_after": after, "mac_reduction": 1 - after / before,
                        "mac_factor": before / after, "params_before": strategy["params"]["before"],
                        "params_after": strategy["params"]["after"], "param_reduction": strategy["params_reduction"],
                        "target_mac_reduction": strategy.get("target_macs_reduction")}
    group = f"{name}@32"
    paths, exports = build_group(models, spec.input_shape, calibration, val_images[:PARITY_IMAGES], folder, group)
    accuracy = {}
    for vid, path in paths.items():
        logits = parity.ort_logits(parity.session(path.read_bytes(), vid), val_images)
        accuracy[vid] = float(np.mean(logits.argmax(1) == val_labels))
    for vid in exports:
        if not vid.startswith("_"):
            exports[vid]["held_out_accuracy_ort"] = accuracy[vid]
    return paths, exports, records


# --- main ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--process-seconds", type=float, default=20.0,
                        help="timed runs per agent process take about this long (sets runs per round)")
    parser.add_argument("--max-runs-per-round", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs at 32x32 on digits "
                                                                  "(mixprune's default)")
    parser.add_argument("--models-dir", type=Path, default=None, help="keep the ONNX files here (default: a "
                                                                       "temporary folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--tables", action="store_true", help="measure nothing: print the README's tables from --out")
    args = parser.parse_args()
    if args.tables:
        print(markdown_tables(json.loads(args.out.read_text())))
        return
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1: one core for torch, the other for whoever shares the machine
    torch.set_num_interop_threads(1)
    folder = args.models_dir or Path(tempfile.mkdtemp(prefix="mixprune-structured-"))
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "what": "structured (channel-cut) models vs the dense model in onnxruntime (CPU, 1 intra-op thread, "
                "batch 1), fp32 and static QDQ INT8 (uint8 activations); speedup = 1 / median of the pooled "
                "per-round paired ratios variant / dense fp32 (mixprune.benchmarks.paired.summarize)",
        "date": now_iso(), "complete": False,
        "machine": {**cpu_info(), "load_average_start": load_average()},
        "versions": {**package_versions(), "torch_runtime": torch.__version__, "onnxruntime_runtime": ort.__version__,
                     "torch_pruning": _version("torch-pruning")},
        "settings": {"strategy": STRATEGY, "importances": list(IMPORTANCES), "range_targets": list(RANGE_TARGETS),
                     "mac_targets": list(MAC_TARGETS), "round_to": ROUND_TO, "opset": OPSET,
                     "activation": RECIPES.get(RECIPE).activation, "calibration_224_images": CALIBRATION_224, "rounds": args.rounds,
                     "processes": args.processes, "warmup": args.warmup, "process_seconds": args.process_seconds,
                     "max_runs_per_round": args.max_runs_per_round, "torch_threads": torch.get_num_threads(),
                     "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                     "efficiency_target": EFFICIENCY_TARGET, "random_model_kwargs": RANDOM_KWARGS},
        "cuts": {}, "exports": {}, "timing": {}, "speed": {}, "accuracy": {},
    }
    timm = import_timm()

    def save():
        atomic_write_json(args.out, record)

    try:
        digits = load_splits(DataSpec())
        calibration_224 = upsample(stack(digits.calibration)[0][:CALIBRATION_224], 224, 3)
        groups = {}
        for name in MODELS_224:
            group = f"{name}@224"
            say(f"{group}: ranges, balanced strategy, cuts at {MAC_TARGETS}")
            torch.manual_seed(0)
            dense = timm.create_model(name, pretrained=False, **RANDOM_KWARGS.get(name, {})).eval()
            example = torch.randn(1, 3, 224, 224)
            t0 = time.perf_counter()
            plan = balanced_plan(dense, example, name)
            models, cuts = {"dense": dense}, {"_phase1": {**plan.phase1, "seconds": round(time.perf_counter() - t0, 1)}}
            for target in MAC_TARGETS:
                mid = f"cut{int(target * 100)}"
                models[mid], cuts[mid] = make_cut(dense, example, plan, target, name)
                say(f"  {mid}: MACs {cuts[mid]['macs_before'] / 1e6:.0f}M -> {cuts[mid]['macs_after'] / 1e6:.0f}M "
                    f"(-{cuts[mid]['mac_reduction']:.3f}), params {cuts[mid]['params_before'] / 1e6:.2f}M -> "
                    f"{cuts[mid]['params_after'] / 1e6:.2f}M")
            record["cuts"][group] = cuts
            say(f"{group}: export and quantize")
            parity_images = torch.randn(PARITY_IMAGES, 3, 224, 224, generator=torch.Generator().manual_seed(1))
            paths, exports = build_group(models, (1, 3, 224, 224), calibration_224, parity_images, folder, group)
            record["exports"][group] = exports
            groups[group] = (paths, [1, 3, 224, 224])
            save()

        val_images, val_labels = stack(digits.val)
        calibration_32 = stack(digits.calibration)[0].numpy()
        for name, flags in DIGITS_MODELS.items():
            say(f"{name}@32 on digits: mixprune prune, structured and unstructured at the same parameters")
            record["accuracy"][name], cuts, spec, first = digits_part(name, flags, folder, args)
            save()
            paths, exports, cut_records = speed_models_32(name, cuts, spec, first, folder, calibration_32,
                                                          val_images, val_labels)
            record["cuts"][f"{name}@32"], record["exports"][f"{name}@32"] = cut_records, exports
            groups[f"{name}@32"] = (paths, list(spec.input_shape))
            save()

        for group, (paths, shape) in groups.items():
            say(f"{group}: timing {', '.join(paths)} ({args.processes} agent processes)")
            record["timing"][group] = time_group(group, paths, shape, args)
            record["speed"][group] = speed_rows(record["timing"][group], record["cuts"][group])
            for vid, row in record["speed"][group].items():
                say(f"  {vid:<14} p50 {row['p50_ms']:8.3f} ms  speedup {row['speedup']:.2f}x "
                    f"[{row['speedup_q1']:.2f}, {row['speedup_q3']:.2f}]  per MAC factor "
                    f"{row['speedup_per_mac_factor']:.2f}")
            save()

        record["targets"] = {
            group: {vid: {"speedup_per_mac_factor": row["speedup_per_mac_factor"],
                          "met": row["speedup_per_mac_factor"] >= EFFICIENCY_TARGET}
                    for vid, row in rows.items() if vid.startswith("cut") and "+" not in vid}
            for group, rows in record["speed"].items() if group.endswith("@224")}
        record["complete"] = True
    finally:
        record["machine"]["load_average_end"] = load_average()
        record["wall_seconds"] = round(time.perf_counter() - START, 1)
        record["models_dir"] = str(folder) if args.models_dir else None
        save()
        if not args.models_dir:
            shutil.rmtree(folder, ignore_errors=True)
    say(f"wrote {args.out} ({record['wall_seconds']} s)")
    print(markdown_tables(record))


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --- the README's tables --------------------------------------------------------------------
def markdown_tables(record: dict) -> str:
    out = ["### Cuts (Torch-Pruning's MAC counter, batch 1)", "",
           "| model @ size | cut | MAC target | MACs before -> after (M) | MAC reduction | MAC factor | "
           "params before -> after (M) | params reduction | channel ratio min / mean / max (or candidate) | "
           "layers cut | attention heads |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for group, cuts in record["cuts"].items():
        for mid, c in cuts.items():
            if mid.startswith("_"):
                continue
            ratios = (f"{c['channel_ratio_min']:.2f} / {c['channel_ratio_mean']:.2f} / {c['channel_ratio_max']:.2f}"
                      if "channel_ratio_min" in c else c.get("cid", "-"))
            layers = f"{c['layers_cut']}/{c['layers']}" if "layers" in c else "-"
            heads = f"{c['heads_before']} -> {c['heads_after']}" if c.get("heads_before") else "-"
            out.append(f"| {group} | {mid} | {c['target_mac_reduction']:g} | {c['macs_before'] / 1e6:.1f} -> "
                       f"{c['macs_after'] / 1e6:.1f} | {c['mac_reduction']:.3f} | {c['mac_factor']:.2f}x | "
                       f"{c['params_before'] / 1e6:.3f} -> {c['params_after'] / 1e6:.3f} | {c['param_reduction']:.3f} | "
                       f"{ratios} | {layers} | {heads} |")
    out += ["", "### Speed (onnxruntime CPU, 1 intra-op thread, batch 1, agent interleave mode)", "",
            "Speedup = 1 / median of the per-round paired ratios (variant / dense fp32) pooled over the agent "
            "processes, [quartiles]; p50 on the dense model's scale. Per MAC factor = speedup / (MACs before / "
            "MACs after) of the cut (INT8 rows: the parent's MAC factor).", "",
            "| model @ size | variant | p50 ms | speedup vs dense fp32 [q1, q3] | speedups per process | MAC factor | "
            "speedup / MAC factor | vs dense INT8 [q1, q3] | vs dense INT8 / MAC factor | ONNX MB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for group, rows in record["speed"].items():
        exports = record["exports"][group]
        for vid, r in rows.items():
            per_process = ", ".join(f"{s:.2f}" for s in r["process_speedups"])
            v8 = (f"{r['speedup_vs_dense_int8']:.2f}x [{r['speedup_vs_dense_int8_q1']:.2f}, "
                  f"{r['speedup_vs_dense_int8_q3']:.2f}]" if "speedup_vs_dense_int8" in r else "-")
            v8f = f"{r['speedup_vs_dense_int8_per_mac_factor']:.2f}" if "speedup_vs_dense_int8" in r else "-"
            out.append(f"| {group} | {vid} | {r['p50_ms']:.3f} | {r['speedup']:.2f}x [{r['speedup_q1']:.2f}, "
                       f"{r['speedup_q3']:.2f}] | {per_process} | {r['mac_factor']:.2f}x | "
                       f"{r['speedup_per_mac_factor']:.2f} | {v8} | {v8f} | "
                       f"{exports[vid]['bytes'] / 1e6:.2f} |")
    out += ["", "### The issue's target at 224: speedup / MAC factor >= "
            f"{record['settings']['efficiency_target']:g} (fp32 cuts)", "",
            "| model | cut | MAC factor | speedup [q1, q3] | speedup / MAC factor [q1, q3] | met (median) |",
            "|---|---|---|---|---|---|"]
    for group, rows in record["speed"].items():
        if not group.endswith("@224"):
            continue
        for vid, r in rows.items():
            if vid.startswith("cut") and "+" not in vid:
                f = r["mac_factor"]
                met = record.get("targets", {}).get(group, {}).get(vid, {}).get("met")
                out.append(f"| {group} | {vid} | {f:.2f}x | {r['speedup']:.2f}x [{r['speedup_q1']:.2f}, "
                           f"{r['speedup_q3']:.2f}] | **{r['speedup_per_mac_factor']:.3f}** [{r['speedup_q1'] / f:.3f}, "
                           f"{r['speedup_q3'] / f:.3f}] | {'yes' if met else 'no'} |")
    out += ["", "### INT8 on top of the cut", "",
            "INT8 gain = the INT8 variant over its own fp32 parent (paired per round, pooled), [quartiles]. "
            "Independent = cut speedup x the dense model's INT8 gain: what the two would give if they stacked "
            "multiplicatively.", "",
            "| model @ size | cut | cut fp32 speedup | INT8 gain on dense | INT8 gain on the cut [q1, q3] | "
            "cut + INT8 speedup vs dense fp32 | independent | measured / independent |", "|---|---|---|---|---|---|---|---|"]
    for group, rows in record["speed"].items():
        dense_gain = rows["dense+int8u"]["int8_gain_over_fp32_parent"]
        for vid, r in rows.items():
            if not vid.startswith("cut") or "+" in vid:
                continue
            q = rows[f"{vid}+int8u"]
            independent = r["speedup"] * dense_gain
            out.append(f"| {group} | {vid} | {r['speedup']:.2f}x | {dense_gain:.2f}x | "
                       f"{q['int8_gain_over_fp32_parent']:.2f}x [{q['int8_gain_q1']:.2f}, {q['int8_gain_q3']:.2f}] | "
                       f"{q['speedup']:.2f}x | {independent:.2f}x | {q['speedup'] / independent:.2f} |")
    out += ["", "### Timing conditions", "",
            "| model @ size | runs per round x rounds x processes | load average (1 min) per process, before -> after "
            "| wall s per process | dense p50 ms per process |", "|---|---|---|---|---|"]
    for group, t in record["timing"].items():
        c = t["agent_config"]
        loads = "; ".join(f"{p['load_average_before'][0]:.2f} -> {p['load_average_after'][0]:.2f}"
                          for p in t["processes"])
        walls = ", ".join(f"{p['wall_s']:.0f}" for p in t["processes"])
        dense = ", ".join(f"{p['p50_ms'][t['ids'][0]]:.3f}" for p in t["processes"])
        out.append(f"| {group} | {c['runs'] // c['rounds']} x {c['rounds']} x {len(t['processes'])} | {loads} | "
                   f"{walls} | {dense} |")
    for name, a in record.get("accuracy", {}).items():
        out += ["", f"### Accuracy: {name} at 32x32 on digits (mixprune prune; held-out split)", "",
                "Each MAC target: the structured run's fine-tuned best Mix-and-Match candidate and its matched "
                "structured baselines at the same MACs, then the unstructured run at the same share of prunable "
                "weights removed (`--sparsity`), its fine-tuned best and matched baselines. Accuracy after BN "
                "re-estimation, then after fine-tuning.", "",
                "| MAC target | family | candidate | MACs cut | prunable weights cut | accuracy (BN re-est.) | "
                "fine-tuned | drop vs dense (points) |", "|---|---|---|---|---|---|---|---|"]
        for target, t in a["targets"].items():
            dense = t["dense"]["accuracy"]
            out.append(f"| {target} | dense | dense | 0 | 0 | {_pct(dense)} | - | 0 |")
            for label, fam in _families(t):
                for cid, r in fam["rows"].items():
                    final = r["accuracy_finetuned"]
                    macs = f"{r['macs_reduction']:.3f}" if r["macs_reduction"] is not None else "0 (zeros)"
                    drop = f"{100 * (dense - final):.2f}" if final is not None else "-"
                    out.append(f"| {target} | {label} | {'**' + cid + '**' if cid == fam['best'] else cid} | {macs} | "
                               f"{r['global_sparsity']:.3f} | {_pct(r['accuracy'])} | {_pct(final)} | {drop} |")
        out += ["", f"Before fine-tuning, the {name} Mix-and-Match candidates against each matched baseline "
                "(how many of them are at least as accurate):", "",
                "| MAC target | family | Mix-and-Match best / median | baseline | baseline accuracy | "
                "Mix-and-Match at or above it |", "|---|---|---|---|---|---|"]
        for target, t in a["targets"].items():
            for label, fam in _families(t):
                for base, b in fam["baselines_before_finetune"].items():
                    out.append(f"| {target} | {label} | {_pct(fam['mixmatch_best_accuracy'])} / "
                               f"{_pct(fam['mixmatch_median_accuracy'])} | {base} | {_pct(b['accuracy'])} | "
                               f"{b['mixmatch_at_or_above']}/{fam['mixmatch_count']} |")
        exports = record["exports"].get(f"{name}@32", {})
        if exports:
            out += ["", f"{name}@32 in onnxruntime (held-out accuracy): " + ", ".join(
                f"{vid} {_pct(e['held_out_accuracy_ort'])}" for vid, e in exports.items()
                if not vid.startswith("_") and "held_out_accuracy_ort" in e)]
    out += ["", "### Parity and export checks (fp32 ONNX vs torch, 4 images)", "",
            "| model @ size | variant | max abs logit diff | top-1 agreement | weights torch -> ONNX | simplify |",
            "|---|---|---|---|---|---|"]
    for group, exports in record["exports"].items():
        for vid, e in exports.items():
            if vid.startswith("_") or "parity" not in e:
                continue
            out.append(f"| {group} | {vid} | {e['parity']['max_abs_diff']:.2e} | {e['parity']['top1_agreement']:.2f} | "
                       f"{e['torch_weights']} -> {e['onnx_weights']} | {e['simplify_note'].split(',')[0]} |")
    m, v = record["machine"], record["versions"]
    out += ["", f"Machine: {m['model_name']}, {m['usable_cores']} usable cores, flags {', '.join(m['int8_relevant_flags'])}; "
                f"load average {m['load_average_start'][0]:.2f} at the start, {m.get('load_average_end', ['?'])[0]} at the end. "
                f"Versions: python {v['python']}, torch {v['torch']}, torch-pruning {v['torch_pruning']}, timm {v['timm']}, "
                f"onnx {v['onnx']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}. Date {record['date']}; wall "
                f"{record.get('wall_seconds')} s; complete: {record['complete']}."]
    return "\n".join(out)


def _families(target: dict) -> tuple:
    """(label, family record) of one MAC target's structured run and its same-parameter unstructured run."""
    return ("structured", target["structured"]), ("unstructured", target["unstructured_same_params"])


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


if __name__ == "__main__":
    main()
