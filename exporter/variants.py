"""INT8 variants of exported models: ``candidates/<parent>+int8/`` (int8 activations) and
``candidates/<parent>+int8u/`` (uint8 activations), each a candidate of its own.

A variant is made from its parent's dense ONNX bytes (the compact container holds them
whatever ``--storage`` model.onnx has), calibrated on the run's calibration split, and
measured with onnxruntime on the tune and held-out splits like every candidate. Its
records are written in the order ONNX file, container, export.json, strategy.json and
eval.json last, which marks it finished. A variant whose parent's ONNX and quantization
settings are unchanged is reused.
"""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import onnx
import torch

from mixprune import compact
from mixprune.accuracy import accuracy_of
from mixprune.data import Splits
from mixprune.errors import ExportError
from mixprune.progress import say
from mixprune.runs import ModelDir, RunDir, VariantDir, now_iso, package_versions

from . import parity
from .onnx_export import io_spec
from .quantize import ACTIVATIONS, quantize, settings, zeros_kept

INT8_NOTE = ("INT8 (QDQ): onnxruntime runs integer kernels, so it may be faster or slower than fp32 "
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


def quantize_models(run: RunDir, parents: list[str], activations: tuple[str, ...], splits: Splits,
                    force: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
    """The INT8 variants of the exported ``parents``: ({variant id: export record (``skipped``)},
    {variant id: why it could not be made}). A model onnxruntime cannot quantize loses only that variant."""
    if not activations:
        return {}, {}
    calibration = _stack(splits.calibration)[0].numpy()
    held_out, tune = _stack(splits.val), _stack(splits.tune)
    results, failures = {}, {}
    for mid in parents:
        parent = run.model(mid)
        parent_export = parent.read_export()
        for activation in activations:
            variant = run.variant(mid, ACTIVATIONS[activation].suffix)
            quantization = settings(activation, len(calibration))
            if not force and _is_current(variant, parent_export, quantization):
                results[variant.id] = dict(variant.read_export(), skipped=True)
                continue
            say(f"quantizing {mid} to INT8 ({activation} activations): {variant.id}")
            try:
                results[variant.id] = dict(make_variant(parent, parent_export, variant, quantization,
                                                        calibration, held_out, tune), skipped=False)
            except ExportError as exc:
                if len(calibration) == 0:
                    raise  # no variant can be made: the run cannot go on as asked
                failures[variant.id] = str(exc)
                say(f"[yellow]warning: {exc}; {variant.id} is left out[/yellow]")
    return results, failures


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) == labels))


def make_variant(parent: ModelDir, parent_export: dict, variant: VariantDir, quantization: dict,
                 calibration: np.ndarray, held_out: tuple, tune: tuple) -> dict:
    """Quantize, check, measure and write one variant; returns its export record."""
    label = f"{parent_export['model']} ({variant.id})"
    variant.eval_json.unlink(missing_ok=True)  # unfinished until its eval.json lands again
    variant.drop_export()
    dense_bytes = compact.unpack(parent.compact_file.read_bytes())
    int8_bytes = quantize(dense_bytes, calibration, quantization["activation_type"], label)
    fp32_session = parity.session(dense_bytes, f"{label}'s parent")
    int8_session = parity.session(int8_bytes, label)
    (val_images, val_labels), (tune_images, tune_labels) = held_out, tune
    parent_logits, int8_logits = parity.ort_logits(fp32_session, val_images), parity.ort_logits(int8_session, val_images)
    tune_logits = parity.ort_logits(int8_session, tune_images)
    proto = onnx.load_from_string(int8_bytes)
    zeros = zeros_kept(onnx.load_from_string(dense_bytes), parent_export["layers"], proto)
    container = compact.pack(int8_bytes)
    if compact.unpack(container) != int8_bytes:
        raise ExportError(f"the compact container of {label} does not expand to its ONNX file")
    agreement = parity.compare(parent_logits, int8_logits)
    sha256 = hashlib.sha256(int8_bytes).hexdigest()  # no sparse storage of a variant: model.onnx is the dense file
    record = {
        "model": parent_export["model"], "kind": "int8", "parent": parent.id,
        "parent_onnx_sha256": parent_export["dense_onnx_sha256"], "quantization": quantization,
        "opset": parent_export["opset"], "storage": "dense",
        "files": {"onnx": variant.onnx_file.name, "compact": variant.compact_file.name},
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
        "runtime_note": INT8_NOTE, "versions": package_versions(), "layers": zeros["layers"],
        "exported_at": now_iso(),
    }
    variant.write_export(record, int8_bytes, container)
    parent_strategy = parent.read_strategy() or {}
    variant.write_strategy({
        "cid": variant.id, "kind": "int8", "parent": parent.id, "quantization": quantization,
        "signal": parent_strategy.get("signal", "dense"), "strategy": parent_strategy.get("strategy", "dense"),
        "layers": parent_strategy.get("layers", {}), "global_sparsity": parent_strategy.get("global_sparsity", 0.0),
        "parent_kind": parent_strategy.get("kind", "dense"),
        # a structured parent's INT8 variant is still a channel-cut model: ranking and report group by mode
        **{key: parent_strategy[key] for key in ("mode", "channels", "heads", "params", "macs", "macs_reduction", "params_reduction")
           if key in parent_strategy}})
    parent_eval = parent.read_eval()
    variant.write_eval({
        "accuracy": _accuracy(int8_logits, val_labels), "tune_accuracy": _accuracy(tune_logits, tune_labels),
        "accuracy_finetuned": None, "tune_accuracy_finetuned": None,
        "samples": len(val_labels), "tune_samples": len(tune_labels),
        "agreement_with_parent": agreement["top1_agreement"], "measured_with": "onnxruntime",
        "parent_accuracy": _accuracy(parent_logits, val_labels),
        "parent_accuracy_torch": accuracy_of(parent_eval)[0]})
    return record
