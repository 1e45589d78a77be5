"""INT8 study: what onnxruntime's quantized variants buy on this CPU, in speed, size and accuracy.

Four questions, all answered with onnxruntime on the CPU, 1 intra-op thread, batch 1:

1. Speed at 224x224 (timm, random weights, 3 channels, 1000 classes) of resnet18,
   vit_tiny_patch16_224 and mobilenetv3_small_100: fp32, mixprune's static QDQ
   quantization with int8 activations (``+int8``) and with uint8 activations (``+int8u``),
   both `mixprune.exporter.quantize.quantize`, and onnxruntime's dynamic quantization
   (``quantize_dynamic``, what mixprune does not use).
2. The same four formats at 32x32 on the models trained here on digits (resnet18, and
   vit_tiny with img_size=32 and patch_size=8), and their held-out accuracy: the static
   variants are calibrated on mixprune's calibration split (real digits images, the 108
   that `mixprune export --quantize` uses), accuracy and top-1 agreement with the fp32
   parent are measured in onnxruntime on the 360 held-out images.
3. A 90%-sparse candidate of the trained resnet18 (one global magnitude threshold over all
   conv/linear weights, BatchNorm statistics re-estimated, mixprune's masked fine-tune) and
   its uint8-activation variant: zeros kept in the int8 tensors (`zeros_kept`), the
   compact container (`mixprune.compact`, as `exporter/variants.py` makes it) against the
   dense fp32 ONNX file, and its speed against the dense fp32 model at 32 and 224.
4. Why INT8 loses on mobilenetv3_small_100: which operators onnxruntime actually runs in
   integer arithmetic (node types of the graph it optimizes, dumped) and where the time
   goes (onnxruntime's per-operator profile).

Timing is paired and interleaved, because the machine is shared: all variants of one
model are loaded as sessions side by side and warmed up, then for R rounds (order rotated
and reversed every other round) each variant runs k times and keeps the median of its k
runs. A variant's p50 is the median of its per-round medians; its speedup is the median
of the per-round ratios fp32 / variant, with the quartiles of those ratios.

    python experiments/int8/run_int8.py [--rounds 20] [--out experiments/int8/results.json]

About 7-8 minutes on 2 busy cores (438 s for the committed results). Writes results.json (atomically) and prints tables.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import io
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from mixprune import compact
from mixprune.compat import import_timm
from mixprune.config import RunConfig
from mixprune.data import DataSpec, load_splits
from mixprune.exporter import parity
from mixprune.exporter.audit import audit
from mixprune.exporter.onnx_export import INPUT_NAME, canonicalize_zeros, export_onnx
from mixprune.exporter.quantize import ACTIVATIONS, quantize, zeros_kept
from mixprune.exporter.simplify import simplify_guarded
from mixprune.models import ModelSpec, build_model
from mixprune.pruning.finetune import finetune
from mixprune.pruning.masks import apply_masks, global_masks, measured_sparsity
from mixprune.pruning.ranges import get_table
from mixprune.pruning.roles import prunable_names
from mixprune.runs import atomic_write_json, now_iso, package_versions
from mixprune.training import evaluate, recalibrate_batchnorm, train

HERE = Path(__file__).resolve().parent
OPSET = 17
SPARSITY = 0.90
SPEEDUP_TARGET = 3.0  # the issue: best static format >= 3x faster than fp32 on resnet18 at 224
DROP_TARGET = 0.005  # ... and within 0.5 accuracy points of its parent
COMPACT_TARGET = 0.07  # sparse INT8 compact container / dense fp32 ONNX
CALIBRATION_224 = 32  # digits calibration images (upsampled) for the random-weight 224 models: speed only
VIT_ARGS = {"patch_size": 8}  # 16 patches of 8x8 at 32x32: 0.92 on digits in ~2 min (patch 4: ~4x slower)
FORMATS = {"int8": "static QDQ, int8 activations", "uint8": "static QDQ, uint8 activations",
           "dynamic": "onnxruntime quantize_dynamic (int8 weights, activations quantized at run time)"}
# what onnxruntime runs in integer arithmetic, and what converts between float and integer
INTEGER_OPS = {"QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM"}
CONVERSION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
SHAPE_OPS = {"Shape", "Slice", "Concat", "Reshape", "Transpose", "Gather", "Unsqueeze", "Squeeze", "Split",
             "Flatten", "Expand", "Equal", "Where", "Cast", "ReorderInput", "ReorderOutput"}

START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f}s] {message}", flush=True)


# --- models and formats ---------------------------------------------------------------------
def export_checked(model, input_shape: tuple, label: str) -> tuple[bytes, dict, str]:
    """fp32 ONNX bytes the way `mixprune export` makes them (export, guarded onnxsim, +0.0 zeros)
    and the sparsity audit of the prunable weights (its ``layers`` feed `zeros_kept`)."""
    model.eval()
    wanted = set(prunable_names(model))
    params = {name: p.detach().numpy() for name, p in model.named_parameters() if name in wanted}
    exported = export_onnx(model, input_shape, opset=OPSET, label=label)
    final, _, note = simplify_guarded(exported, lambda proto: audit(params, proto))
    canonicalize_zeros(final)
    return final.SerializeToString(), audit(params, final), note


def quantize_dynamic_bytes(onnx_bytes: bytes) -> bytes:
    """onnxruntime's dynamic quantization, after the same pre-processing as the static path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="int8-study-dynamic-") as tmp:
        source, prepared, output = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "dynamic.onnx"))
        source.write_bytes(onnx_bytes)
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(source), str(prepared))
            quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8)
        return output.read_bytes()


class QuantizerWarnings(logging.Filter):
    """Counts (and keeps off the screen) what onnxruntime's quantizer logs on the root logger:
    one identical line per LayerNorm weight and calibration batch on the ViT."""

    def __init__(self):
        super().__init__()
        self.messages = collections.Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.WARNING:
            self.messages[record.getMessage()] += 1
            return False
        return True

    @contextlib.contextmanager
    def active(self):
        root = logging.getLogger()
        root.addFilter(self)
        try:
            yield
        finally:
            root.removeFilter(self)

    def summary(self) -> dict:
        return {"lines": sum(self.messages.values()), "distinct": len(self.messages),
                "examples": [m for m, _ in self.messages.most_common(3)]}


def formats(fp32: bytes, calibration: np.ndarray, label: str) -> dict[str, bytes]:
    """{fp32, int8, uint8, dynamic}: ONNX bytes of every format of one model."""
    out = {"fp32": fp32}
    for activation in ACTIVATIONS:  # int8, uint8
        start = time.perf_counter()
        out[activation] = quantize(fp32, calibration, ACTIVATIONS[activation], label)
        say(f"  {label}: static QDQ, {activation} activations, {time.perf_counter() - start:.1f} s")
    out["dynamic"] = quantize_dynamic_bytes(fp32)
    return out


def upsample(images: torch.Tensor, size: int, channels: int) -> np.ndarray:
    """Digits images (N, 1, 32, 32) at ``size`` with ``channels`` channels, for the 224 models."""
    big = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return big.repeat(1, channels, 1, 1).contiguous().numpy()


def stack(dataset) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), np.asarray(labels)


# --- timing ---------------------------------------------------------------------------------
def timing_session(onnx_bytes: bytes, optimized_path: str | None = None, profile_prefix: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(q25), float(q50), float(q75)


def time_group(group: str, variants: dict[str, bytes], feed: np.ndarray, rounds: int, warmup: int,
               round_seconds: float) -> dict:
    """Interleaved paired timing of every variant of one model (see the module docstring)."""
    sessions = {name: timing_session(data) for name, data in variants.items()}
    feeds = {INPUT_NAME: feed}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)
    probe = []
    for _ in range(5):
        start = time.perf_counter_ns()
        sessions["fp32"].run(None, feeds)
        probe.append(time.perf_counter_ns() - start)
    k = int(min(100, max(3, round(round_seconds / (statistics.median(probe) / 1e9)))))
    names = list(sessions)
    per_round = {name: [] for name in names}
    load_before = os.getloadavg()
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order = order[::-1]
        for name in order:
            session, samples = sessions[name], []
            for _ in range(k):
                start = time.perf_counter_ns()
                session.run(None, feeds)
                samples.append(time.perf_counter_ns() - start)
            per_round[name].append(statistics.median(samples) / 1e6)
        if r == 0 or (r + 1) % 5 == 0:
            say(f"  {group} round {r + 1}/{rounds}: " + "  ".join(
                f"{name} {per_round[name][-1]:.2f}" for name in names) + " ms")
    out = {}
    for name in names:
        ratios = [f / v for f, v in zip(per_round["fp32"], per_round[name])]
        q25, q50, q75 = quartiles(ratios)
        out[name] = {"bytes": len(variants[name]), "p50_ms": statistics.median(per_round[name]),
                     "speedup_median": q50, "speedup_q25": q25, "speedup_q75": q75,
                     "speedup_min": min(ratios), "speedup_max": max(ratios),
                     "round_medians_ms": [round(v, 4) for v in per_round[name]]}
    return {"input_shape": list(feed.shape), "k_runs_per_round": k, "rounds": rounds, "warmup": warmup,
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "variants": out}


# --- graphs: which operators run in integer arithmetic, and where the time goes ------------------
def op_counts(nodes) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in nodes).most_common())


def classify(op_type: str) -> str:
    if op_type.startswith("QLinear") or op_type in INTEGER_OPS:
        return "integer"
    if op_type in CONVERSION_OPS:
        return "conversion"
    if op_type in SHAPE_OPS:
        return "layout/shape"
    return "float"


CONV_OPS = ("Conv", "QLinearConv", "ConvInteger", "FusedConv")


def is_depthwise(node) -> bool:
    return next((a.i for a in node.attribute if a.name == "group"), 1) > 1


def conv_summary(graph) -> dict:
    """Depthwise (group > 1) and dense convolutions, and the activations fused into them."""
    convs = [node for node in graph.node if node.op_type in CONV_OPS]
    fused = collections.Counter(a.s.decode() for node in convs for a in node.attribute if a.name == "activation")
    return {"depthwise": sum(map(is_depthwise, convs)), "dense": sum(not is_depthwise(n) for n in convs),
            "by_op": {op: {"depthwise": sum(is_depthwise(n) for n in convs if n.op_type == op),
                           "dense": sum(not is_depthwise(n) for n in convs if n.op_type == op)}
                      for op in sorted({n.op_type for n in convs})},
            "fused_activations": dict(fused)}


def float_islands(proto: onnx.ModelProto) -> dict[str, int]:
    """Compute nodes (neither Q/DQ nor layout) that read a DequantizeLinear output or feed a
    QuantizeLinear, by op type. In the QDQ file that is every op the quantizer wrapped; in the graph
    onnxruntime runs, it is every op left without an integer kernel, paying a DQ before and a Q after."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers = collections.defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            consumers[name].append(node)
    counts = collections.Counter()
    for node in proto.graph.node:
        if node.op_type in CONVERSION_OPS or node.op_type in SHAPE_OPS:
            continue
        reads_dq = any(getattr(producer.get(i), "op_type", None) == "DequantizeLinear" for i in node.input)
        feeds_q = any(c.op_type == "QuantizeLinear" for o in node.output for c in consumers[o])
        if reads_dq or feeds_q:
            counts[node.op_type] += 1
    return dict(counts.most_common())


def inspect(variants: dict[str, bytes], feed: np.ndarray, profile_runs: int) -> dict:
    """For every variant: node types before and after onnxruntime's optimizer (the graph it runs,
    dumped), and where the time goes (onnxruntime's per-node profile, summed by op type)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="int8-study-graphs-") as tmp:
        for name, data in variants.items():
            optimized_path = str(Path(tmp) / f"{name}.optimized.onnx")
            with contextlib.redirect_stderr(io.StringIO()):
                session = timing_session(data, optimized_path, profile_prefix=str(Path(tmp) / f"{name}-profile"))
            for _ in range(profile_runs):
                session.run(None, {INPUT_NAME: feed})
            profile = json.loads(Path(session.end_profiling()).read_text())
            source = onnx.load_from_string(data)
            optimized = onnx.load(optimized_path)
            depthwise = {node.name: is_depthwise(node) for node in optimized.graph.node if node.op_type in CONV_OPS}
            per_op, conv_time = collections.Counter(), collections.Counter()
            for event in profile:
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"]
                    node = event["name"][:-len("_kernel_time")]
                    if node in depthwise:
                        conv_time["depthwise" if depthwise[node] else "dense"] += event["dur"]
            total = sum(per_op.values()) or 1
            by_class = collections.Counter()
            for op, dur in per_op.items():
                by_class[classify(op)] += dur
            ort_ops = op_counts(optimized.graph.node)
            nodes_by_class = collections.Counter()
            for op, count in ort_ops.items():
                nodes_by_class[classify(op)] += count
            ms = lambda us: round(us / 1000 / profile_runs, 4)  # noqa: E731 - microseconds summed over the runs
            out[name] = {
                "source_ops": op_counts(source.graph.node),
                "qdq_wrapped_ops": float_islands(source) if name in ACTIVATIONS else None,
                "onnxruntime_ops": ort_ops,
                "onnxruntime_nodes_by_class": dict(nodes_by_class),
                "float_ops_between_dq_and_q": float_islands(optimized) if name in ACTIVATIONS else None,
                "convolutions": conv_summary(optimized.graph),
                "profile_runs": profile_runs,
                "profiled_ms_per_run": ms(total),
                "ms_per_run_by_op": {op: ms(dur) for op, dur in per_op.most_common()},
                "ms_per_run_by_class": {c: ms(dur) for c, dur in by_class.most_common()},
                "conv_ms_per_run": {kind: ms(dur) for kind, dur in conv_time.items()},
                "time_share_by_class": {c: round(dur / total, 4) for c, dur in by_class.most_common()},
            }
    return out


# --- training, accuracy, the sparse candidate --------------------------------------------------
def train_model(spec: ModelSpec, splits, epochs: int) -> tuple[torch.nn.Module, dict]:
    recipe = get_table(spec.name).training  # mixprune's from-scratch recipe of the model's family
    torch.manual_seed(0)
    model = build_model(spec)
    start = time.perf_counter()
    history = train(model, splits.train, epochs=epochs, lr=recipe["lr"], batch_size=recipe["batch_size"],
                    warmup=recipe["warmup"], schedule=recipe["schedule"], tune_set=splits.tune, patience=3,
                    description=f"train {spec.name}")
    seconds = time.perf_counter() - start
    return model, {"recipe": recipe, "epochs": epochs, "epochs_run": history["epochs_run"],
                   "best_tune_accuracy": history["best_tune_accuracy"], "seconds": round(seconds, 1),
                   "val_accuracy_torch": evaluate(model, splits.val)}


def accuracy_table(variants: dict[str, bytes], images: torch.Tensor, labels: np.ndarray, label: str,
                   reference: str = "fp32") -> dict:
    logits = {name: parity.ort_logits(parity.session(data, f"{label} {name}"), images)
              for name, data in variants.items()}
    parent = logits[reference]
    out = {}
    for name, values in logits.items():
        accuracy = float(np.mean(values.argmax(axis=1) == labels))
        out[name] = {"accuracy": accuracy, "correct": int(np.sum(values.argmax(axis=1) == labels)),
                     "drop_points": round(100 * (float(np.mean(parent.argmax(axis=1) == labels)) - accuracy), 3),
                     "top1_agreement_with_parent": float(np.mean(values.argmax(axis=1) == parent.argmax(axis=1))),
                     "max_abs_logit_diff": float(np.abs(values.astype(np.float64) - parent).max()),
                     "bytes": len(variants[name])}
    return out


def sparse_candidate(dense_model, spec: ModelSpec, splits) -> tuple[torch.nn.Module, dict]:
    """One global |w| threshold over every conv/linear weight, BN re-estimated, masked fine-tune."""
    defaults = RunConfig()
    model = copy.deepcopy(dense_model)
    names = prunable_names(model)
    params = {name: p for name, p in model.named_parameters() if name in set(names)}
    masks = global_masks({name: p.detach().abs() for name, p in params.items()}, SPARSITY)
    apply_masks(params, masks)
    recalibrate_batchnorm(model, splits.train)
    raw = evaluate(model, splits.val)
    start = time.perf_counter()
    tuned = finetune(model, params, masks, splits.train, splits.tune, epochs=defaults.finetune_epochs,
                     lr=defaults.finetune_lr, patience=defaults.finetune_patience, batch_size=defaults.batch_size,
                     seed=0, description="fine-tune resnet18 at 90%")
    per_layer, overall = measured_sparsity({name: p.detach() for name, p in params.items()})
    return model, {"method": "global magnitude (one |w| threshold over all conv/linear weights), BN re-estimated, "
                             f"{defaults.finetune_epochs}-epoch masked fine-tune at lr {defaults.finetune_lr}",
                   "sparsity": overall, "layer_sparsity_min": min(per_layer.values()),
                   "layer_sparsity_max": max(per_layer.values()),
                   "val_accuracy_torch_before_finetune": raw, "val_accuracy_torch": evaluate(model, splits.val),
                   "finetune_epochs_run": tuned["epochs_run"], "finetune_seconds": round(time.perf_counter() - start, 1)}


# --- main -----------------------------------------------------------------------------------
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
            "usable_cores": len(os.sched_getaffinity(0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.25, help="fp32 time per variant per round (sets k)")
    parser.add_argument("--resnet-epochs", type=int, default=8)
    parser.add_argument("--vit-epochs", type=int, default=10)
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # = OMP_NUM_THREADS=1 for training: one core for us, the other for whoever shares it
    torch.set_num_interop_threads(1)
    record = {"what": "onnxruntime CPU, 1 intra-op thread, batch 1: fp32 vs static QDQ (int8 / uint8 activations, "
                      "mixprune.exporter.quantize) vs onnxruntime dynamic quantization; speedup = median over "
                      "interleaved rounds of fp32 round-median / variant round-median",
              "date": now_iso(), "machine": {**cpu_info(), "load_average_start": list(os.getloadavg())},
              "versions": {**package_versions(), "torch_runtime": torch.__version__,
                           "onnxruntime_runtime": ort.__version__, "onnx_runtime": onnx.__version__},
              "settings": {"rounds": args.rounds, "warmup": args.warmup, "round_seconds": args.round_seconds,
                           "intra_op_threads": 1, "batch": 1, "opset": OPSET, "graph_optimization": "ORT_ENABLE_ALL",
                           "formats": FORMATS, "torch_threads": torch.get_num_threads(),
                           "calibration_224_images": CALIBRATION_224, "vit_args": VIT_ARGS},
              "timing": {}, "graphs": {}}
    timm = import_timm()
    data = DataSpec()
    splits = load_splits(data)
    calibration, _ = stack(splits.calibration)
    val_images, val_labels = stack(splits.val)
    record["data"] = {**data.to_dict(), "samples": splits.describe()["samples"]}
    feed_32 = val_images[:1].numpy()
    feed_224 = upsample(val_images[:1], 224, 3)
    calibration_224 = upsample(calibration[:CALIBRATION_224], 224, 3)

    # 1 + 4: random-weight timm models at 224
    for name in ("resnet18", "vit_tiny_patch16_224", "mobilenetv3_small_100"):
        say(f"{name} at 224: export and quantize")
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        fp32, _, note = export_checked(model, (1, 3, 224, 224), f"{name} 224")
        quant_log = QuantizerWarnings()
        with quant_log.active():
            variants = formats(fp32, calibration_224, f"{name} 224")
        group = f"{name}@224"
        say(f"{group}: timing {', '.join(variants)}")
        record["timing"][group] = time_group(group, variants, feed_224, args.rounds, args.warmup, args.round_seconds)
        record["timing"][group]["simplify_note"] = note
        record["timing"][group]["quantizer_log"] = quant_log.summary()
        record["graphs"][group] = inspect(variants, feed_224, args.profile_runs)

    # 2: trained on digits at 32x32, accuracy of every format
    record["accuracy"] = {}
    trained = {}
    for name, kwargs, epochs in (("resnet18", {}, args.resnet_epochs), ("vit_tiny_patch16_224", VIT_ARGS, args.vit_epochs)):
        spec = ModelSpec(name, num_classes=splits.num_classes, in_chans=splits.in_chans, img_size=data.img_size,
                         kwargs=kwargs)
        say(f"{name} at 32: training on digits ({epochs} epochs, torch threads {torch.get_num_threads()})")
        model, training = train_model(spec, splits, epochs)
        say(f"  {name}: {training['seconds']} s, val accuracy (torch) {training['val_accuracy_torch']:.4f}")
        fp32, export_audit, note = export_checked(model, spec.input_shape, f"{name} digits")
        quant_log = QuantizerWarnings()
        with quant_log.active():
            variants = formats(fp32, calibration.numpy(), f"{name} 32")
        trained[name] = (model, spec, fp32, export_audit, variants)
        record["accuracy"][name] = {"spec": spec.to_dict(), "training": training, "simplify_note": note,
                                    "calibration_images": len(calibration), "held_out_images": len(val_labels),
                                    "quantizer_log": quant_log.summary(),
                                    "formats": accuracy_table(variants, val_images, val_labels, name)}
        for fmt, row in record["accuracy"][name]["formats"].items():
            say(f"  {name} {fmt}: accuracy {row['accuracy']:.4f}, agreement {row['top1_agreement_with_parent']:.4f}")

    # 3: the 90%-sparse resnet18 and its uint8-activation variant
    model, spec, dense_fp32, _, dense_variants = trained["resnet18"]
    say("resnet18 at 90%: global magnitude pruning, BN re-estimation, fine-tune")
    sparse_model, sparse_info = sparse_candidate(model, spec, splits)
    sparse_fp32, sparse_audit, _ = export_checked(sparse_model, spec.input_shape, "resnet18 90%")
    sparse_u8 = quantize(sparse_fp32, calibration.numpy(), ACTIVATIONS["uint8"], "resnet18 90%")
    kept = zeros_kept(onnx.load_from_string(sparse_fp32), sparse_audit["layers"], onnx.load_from_string(sparse_u8))
    fp32_container, u8_container = compact.pack(sparse_fp32), compact.pack(sparse_u8)
    assert compact.unpack(fp32_container) == sparse_fp32 and compact.unpack(u8_container) == sparse_u8
    dense_container = compact.pack(dense_fp32)
    sparse_accuracy = accuracy_table({"dense_fp32": dense_fp32, "sparse_fp32": sparse_fp32, "sparse_uint8": sparse_u8},
                                     val_images, val_labels, "resnet18 90%", reference="dense_fp32")
    agreement = parity.compare(*(parity.ort_logits(parity.session(b, "resnet18 90%"), val_images)
                                 for b in (sparse_fp32, sparse_u8)))
    record["sparse"] = {
        **sparse_info,
        "export": {"zeros_torch": sparse_audit["zeros_torch"], "zeros_onnx": sparse_audit["zeros_onnx"],
                   "prunable_params": sparse_audit["prunable_params"],
                   "sparsity_preserved_fp32": sparse_audit["sparsity_preserved"]},
        "int8_zeros": {"zeros_int8": kept["zeros_int8"], "lost": kept["lost"],
                       "sparsity_preserved": kept["sparsity_preserved"]},
        "bytes": {"dense_fp32_onnx": len(dense_fp32), "dense_fp32_compact": len(dense_container),
                  "sparse_fp32_onnx": len(sparse_fp32), "sparse_fp32_compact": len(fp32_container),
                  "sparse_uint8_onnx": len(sparse_u8), "sparse_uint8_compact": len(u8_container)},
        "ratio_to_dense_fp32_onnx": {key: round(value / len(dense_fp32), 5) for key, value in {
            "dense_fp32_compact": len(dense_container), "sparse_fp32_compact": len(fp32_container),
            "sparse_uint8_onnx": len(sparse_u8), "sparse_uint8_compact": len(u8_container)}.items()},
        "accuracy": sparse_accuracy,
        "uint8_vs_sparse_fp32": agreement,
    }
    ratio = record["sparse"]["ratio_to_dense_fp32_onnx"]["sparse_uint8_compact"]
    say(f"  90%: sparsity {sparse_info['sparsity']:.4f}, int8 zeros lost {kept['lost']}, "
        f"compact uint8 {ratio:.4f}x of the dense fp32 ONNX")

    # timing at 32: every format of the trained models, the sparse pair beside resnet18's
    say("timing the digits models at 32x32")
    for name, (_, _, _, _, variants) in trained.items():
        group = f"{name}@32-digits"
        if name == "resnet18":
            variants = {**variants, "sparse90_fp32": sparse_fp32, "sparse90_uint8": sparse_u8}
        record["timing"][group] = time_group(group, variants, feed_32, args.rounds, args.warmup, args.round_seconds)
        record["graphs"][group] = inspect({k: variants[k] for k in ("fp32", *ACTIVATIONS, "dynamic")}, feed_32,
                                          args.profile_runs)
    # the sparse pair at 224 (the trained weights; a CNN takes any input size): speed only
    say("resnet18 90% at 224: export, quantize, timing")
    big = {"fp32": export_checked(model, (1, 1, 224, 224), "resnet18 digits 224")[0],
           "sparse90_fp32": export_checked(sparse_model, (1, 1, 224, 224), "resnet18 90% 224")[0]}
    big["sparse90_uint8"] = quantize(big["sparse90_fp32"], upsample(calibration[:CALIBRATION_224], 224, 1), ACTIVATIONS["uint8"],
                                     "resnet18 90% 224")
    record["timing"]["resnet18-sparse90@224-digits"] = time_group(
        "resnet18-sparse90@224", big, upsample(val_images[:1], 224, 1), args.rounds, args.warmup, args.round_seconds)

    # targets
    r224 = record["timing"]["resnet18@224"]["variants"]
    best = max(ACTIVATIONS, key=lambda a: r224[a]["speedup_median"])
    acc = record["accuracy"]["resnet18"]["formats"]
    record["targets"] = {
        "best_static_format_resnet18_224": best,
        "speedup_median": r224[best]["speedup_median"], "speedup_target": SPEEDUP_TARGET,
        "speedup_met": r224[best]["speedup_median"] >= SPEEDUP_TARGET,
        "accuracy_drop_points": acc[best]["drop_points"], "drop_target_points": 100 * DROP_TARGET,
        "accuracy_met": acc[best]["drop_points"] <= 100 * DROP_TARGET + 1e-9,
        "compact_ratio": ratio, "compact_target": COMPACT_TARGET, "compact_met": ratio <= COMPACT_TARGET,
    }
    record["machine"]["load_average_end"] = list(os.getloadavg())
    record["wall_seconds"] = round(time.perf_counter() - START, 1)
    atomic_write_json(args.out, record)
    say(f"wrote {args.out}")
    print_summary(record)


def print_summary(record: dict) -> None:
    print(f"\n{'group':<32} {'variant':<16} {'p50 ms':>9} {'speedup':>8} {'[q25, q75]':>16} {'MB':>8}")
    for group, entry in record["timing"].items():
        for name, row in entry["variants"].items():
            print(f"{group:<32} {name:<16} {row['p50_ms']:>9.3f} {row['speedup_median']:>8.3f} "
                  f"[{row['speedup_q25']:.3f}, {row['speedup_q75']:.3f}] {row['bytes'] / 1e6:>8.2f}")
    print(f"\n{'model':<22} {'format':<10} {'accuracy':>9} {'drop pts':>9} {'agreement':>10}")
    for name, entry in record["accuracy"].items():
        for fmt, row in entry["formats"].items():
            print(f"{name:<22} {fmt:<10} {row['accuracy']:>9.4f} {row['drop_points']:>9.2f} "
                  f"{row['top1_agreement_with_parent']:>10.4f}")
    print(f"\ntargets: {json.dumps(record['targets'])}")
    print(f"wall: {record['wall_seconds']} s")


if __name__ == "__main__":
    main()
