"""INT8 variants of exported models: ``candidates/<parent><suffix>/``, one per INT8 recipe
(exporter/quantize.py ``RECIPES``: ``+int8u`` uint8 activations, ``+int8`` int8 ones, static QDQ;
``+int8d`` dynamic, for attention models), each a candidate of its own.

A variant is a quantization task (on the run's executor) over its parent's dense ONNX bytes
(the compact container holds them whatever ``--storage`` model.onnx has), calibrated on the
run's calibration split when its recipe is static, made only for the parents its recipe applies
to (the recipe reads the parent's fp32 graph), and measured with onnxruntime on the tune and held-out splits like every candidate. The driver
writes its records in the order ONNX file, container, export.json, strategy.json and
eval.json last, which marks it finished. A variant whose parent's ONNX and quantization
settings are unchanged is reused.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib

import numpy as np
import onnx
import torch

from mixprune import compact
from mixprune.accuracy import accuracy_of, eval_record
from mixprune.candidates import STRUCTURED, Axes
from mixprune.data import Splits
from mixprune.errors import ExportError
from mixprune.executors import Executor, TaskFailure, run_tasks
from mixprune.progress import say
from mixprune.runs import COMPACT_FILE, ONNX_FILE, RunDir, VariantDir, now_iso, package_versions

from . import parity
from .onnx_export import io_spec
from .quantize import RECIPES, every_model, quantize, require_calibration, zeros_kept

INT8_NOTE = ("INT8 ({format}): onnxruntime runs integer kernels, so it may be faster or slower than fp32 "
             "depending on the model and the device; only its bench records say which")


def _stack(dataset) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), np.asarray(labels)


def _is_current(variant: VariantDir, parent_export: dict, quantization: dict) -> bool:
    if not (variant.is_finished() and variant.is_exported()):
        return False
    previous = variant.read_export()
    return (previous.get("parent_onnx_sha256") == parent_export["dense_onnx_sha256"]
            and previous.get("quantization") == quantization)


@dataclasses.dataclass(frozen=True)
class QuantizeWork:
    """What every quantization task shares: put into the executor's object store once."""
    calibration: np.ndarray  # (N, C, H, W) float32
    held_out: tuple[torch.Tensor, np.ndarray]  # images, labels
    tune: tuple[torch.Tensor, np.ndarray]


@dataclasses.dataclass(frozen=True)
class VariantJob:
    """One variant to make, with what the driver read of its parent."""
    vid: str
    parent: str
    recipe: str  # its name in RECIPES
    quantization: dict
    dense_bytes: bytes  # the parent's dense ONNX file
    parent_export: dict
    parent_strategy: dict
    parent_eval: dict


@dataclasses.dataclass(frozen=True)
class Variant:
    """A quantization task's result; the driver writes it (ONNX file, container, export.json,
    strategy.json, eval.json last)."""
    export: dict
    int8_bytes: bytes
    container: bytes
    strategy: dict
    evaluation: dict


def quantize_models(run: RunDir, parents: list[str], recipes: tuple[str, ...], splits: Splits,
                    executor: Executor, force: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
    """The INT8 variants of the exported ``parents`` by the named ``recipes`` (config.QUANTIZE), one
    ``quantize_task`` each on ``executor``, for the parents each recipe applies to: ({variant id: export
    record (``skipped``)}, {variant id: why it could not be made}). A model onnxruntime cannot quantize
    loses only that variant."""
    if not recipes:
        return {}, {}
    chosen = [RECIPES.get(name) for name in recipes]
    work = QuantizeWork(calibration=_stack(splits.calibration)[0].numpy(), held_out=_stack(splits.val),
                        tune=_stack(splits.tune))
    if any(recipe.calibrated for recipe in chosen):
        require_calibration(work.calibration, f"the models of {run.root}")  # no static variant could be made
    results, jobs = {}, []
    for mid in parents:
        parent = run.model(mid)
        parent_export = parent.read_export()
        dense_bytes = compact.unpack(parent.compact_file.read_bytes())
        graph = onnx.load_from_string(dense_bytes) if any(r.applies is not every_model for r in chosen) else None
        for recipe in chosen:
            if graph is not None and not recipe.applies(graph):
                continue
            variant = run.variant(mid, recipe.suffix)
            quantization = recipe.record(len(work.calibration))
            if not force and _is_current(variant, parent_export, quantization):
                results[variant.id] = dict(variant.read_export(), skipped=True)
                continue
            variant.eval_json.unlink(missing_ok=True)  # unfinished until its eval.json lands again
            variant.drop_export()
            jobs.append(VariantJob(variant.id, mid, recipe.name, quantization, dense_bytes,
                                   parent_export, parent.read_strategy() or {}, parent.read_eval()))
    if jobs:
        say(f"quantizing {len(jobs)} model(s) to INT8, {executor.describe()}")

    def store(job: VariantJob, made: Variant) -> None:
        variant = run.candidate(job.vid)
        variant.write_export(made.export, made.int8_bytes, made.container)
        variant.write_strategy(made.strategy)
        variant.write_eval(made.evaluation)
        results[job.vid] = dict(made.export, skipped=False)

    failures = run_tasks(executor, quantize_task, work, jobs, title="INT8 variants", name=lambda j: j.vid, store=store)
    return results, failures


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def quantize_task(work: QuantizeWork, job: VariantJob) -> Variant | TaskFailure:
    """Quantize, check and measure one variant (here or on a Ray worker; it writes nothing); a
    variant onnxruntime cannot make is a TaskFailure."""
    try:
        return make_variant(work, job)
    except ExportError as exc:
        return TaskFailure(job.vid, str(exc))


def make_variant(work: QuantizeWork, job: VariantJob) -> Variant:
    parent_export, dense_bytes = job.parent_export, job.dense_bytes
    label = f"{parent_export['model']} ({job.vid})"
    recipe = RECIPES.get(job.recipe)
    int8_bytes = quantize(dense_bytes, work.calibration if recipe.calibrated else None, recipe, label)
    fp32_session = parity.session(dense_bytes, f"{label}'s parent")
    int8_session = parity.session(int8_bytes, label)
    (val_images, val_labels), (tune_images, tune_labels) = work.held_out, work.tune
    parent_logits, int8_logits = parity.ort_logits(fp32_session, val_images), parity.ort_logits(int8_session, val_images)
    tune_logits = parity.ort_logits(int8_session, tune_images)
    proto = onnx.load_from_string(int8_bytes)
    zeros = zeros_kept(onnx.load_from_string(dense_bytes), parent_export["layers"], proto)
    container = compact.pack(int8_bytes)
    if compact.unpack(container) != int8_bytes:
        raise ExportError(f"the compact container of {label} does not expand to its ONNX file")
    agreement = parity.compare(parent_logits, int8_logits)
    sha256 = hashlib.sha256(int8_bytes).hexdigest()  # no sparse storage of a variant: model.onnx is the dense file
    export = {
        "model": parent_export["model"], "kind": "int8", "parent": job.parent,
        "parent_onnx_sha256": parent_export["dense_onnx_sha256"], "quantization": job.quantization,
        "opset": parent_export["opset"], "storage": "dense",
        "files": {"onnx": ONNX_FILE, "compact": COMPACT_FILE},
        "onnx_sha256": sha256, "dense_onnx_sha256": sha256,
        **io_spec(proto),
        "zeros_torch": parent_export["zeros_torch"], "zeros_onnx": zeros["zeros_int8"],
        "zeros_int8": zeros["zeros_int8"], "lost": zeros["lost"], "prunable_params": parent_export["prunable_params"],
        "sparsity": parent_export["sparsity"], "sparsity_preserved": zeros["sparsity_preserved"],
        # against the fp32 parent in onnxruntime: INT8 rounding moves logits, so agreement is what counts
        "parity": {**agreement, "against": "the fp32 parent in onnxruntime"},
        "verified": bool(zeros["sparsity_preserved"]),
        "bytes": {"onnx": len(int8_bytes), "gzip": len(gzip.compress(int8_bytes, compresslevel=6, mtime=0)),
                  "sparse": None, "compact": len(container), "model_onnx": len(int8_bytes)},
        "runtime_note": INT8_NOTE.format(format=job.quantization["format"]), "versions": package_versions(), "layers": zeros["layers"],
        "exported_at": now_iso(),
    }
    parent_strategy = job.parent_strategy
    axes = Axes.of(parent_strategy or None).quantized(recipe.format)  # kind int8, method, family, format
    strategy = {
        "cid": job.vid, **axes.record(), "parent": job.parent, "recipe": recipe.name, "quantization": job.quantization,
        "style": recipe.style.record(structured=axes.family == STRUCTURED),
        "signal": parent_strategy.get("signal", "dense"), "strategy": parent_strategy.get("strategy", "dense"),
        "layers": parent_strategy.get("layers", {}), "global_sparsity": parent_strategy.get("global_sparsity", 0.0),
        "parent_kind": parent_strategy.get("kind", "dense"),
        # a structured parent's INT8 variant is still a channel-cut model: ranking and report group by mode
        **{key: parent_strategy[key] for key in ("mode", "channels", "heads", "params", "macs", "macs_reduction", "params_reduction")
           if key in parent_strategy}}
    evaluation = eval_record(
        {"accuracy": _accuracy(int8_logits, val_labels), "tune_accuracy": _accuracy(tune_logits, tune_labels)},
        samples=len(val_labels), tune_samples=len(tune_labels),
        agreement_with_parent=agreement["top1_agreement"], measured_with="onnxruntime",
        parent_accuracy=_accuracy(parent_logits, val_labels), parent_accuracy_torch=accuracy_of(job.parent_eval)[0])
    return Variant(export, int8_bytes, container, strategy, evaluation)
