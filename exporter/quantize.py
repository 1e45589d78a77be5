"""INT8 variants: onnxruntime's static quantization of an exported fp32 model, in QDQ format.

Weights are int8, symmetric, one scale per output channel (so a zero weight stays exactly
zero: the zeros of a pruned parent survive); activations are uint8 or int8, calibrated
with MinMax on real images of the run's calibration split. Which activation type runs
faster depends on the model and the device (on this x86 host, uint8 activations made
resnet18 4x faster and int8 ones barely faster), so each gets a variant of its own and the
bench decides. onnxruntime's pre-processing (shape inference and graph optimization)
runs first, as its quantization guide asks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mixprune.config import QUANTIZE
from mixprune.errors import ExportError

from .onnx_export import INPUT_NAME

CALIBRATION_BATCH = 16


@dataclasses.dataclass(frozen=True)
class Activation:
    suffix: str  # the variant's id is <parent><suffix>
    onnx_type: str  # onnxruntime.quantization.QuantType member


# Which activation types exist, and the name each variant gets (what --quantize means: config.QUANTIZE).
ACTIVATIONS = {"int8": Activation("+int8", "QInt8"), "uint8": Activation("+int8u", "QUInt8")}
assert {a for chosen in QUANTIZE.values() for a in chosen} <= set(ACTIVATIONS)


def settings(activation: str, calibration_samples: int) -> dict:
    """The ``quantization`` record of strategy.json."""
    return {"format": "QDQ", "activation_type": activation, "weight_type": "int8", "weight_symmetric": True,
            "per_channel": True, "reduce_range": False, "calibration_method": "MinMax",
            "calibration_samples": calibration_samples, "calibration_split": "calibration",
            "preprocessed": "onnxruntime.quantization.quant_pre_process"}


class _Images:
    """onnxruntime's CalibrationDataReader protocol over a stack of images."""

    def __init__(self, images: np.ndarray):
        self._batches = iter([images[i:i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def require_calibration(images: np.ndarray, label: str) -> None:
    if len(images) == 0:
        raise ExportError(f"cannot quantize {label}: the run's calibration split is empty "
                          f"(raise --calib-fraction, or use --quantize none)")


def quantize(onnx_bytes: bytes, images: np.ndarray, activation: str, label: str) -> bytes:
    """The QDQ INT8 model of ``onnx_bytes``, calibrated on ``images`` (N, C, H, W float32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    require_calibration(images, label)
    with tempfile.TemporaryDirectory(prefix="mixprune-quantize-") as tmp:
        source, prepared, output = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints its progress
                quant_pre_process(str(source), str(prepared))
                quantize_static(str(prepared), str(output), _Images(images), quant_format=QuantFormat.QDQ,
                                per_channel=True, reduce_range=False,
                                activation_type=getattr(QuantType, ACTIVATIONS[activation].onnx_type),
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        except Exception as exc:  # noqa: BLE001 - the quantizer raises whatever its passes raise
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ExportError(f"onnxruntime cannot quantize {label} ({activation} activations): {detail}") from exc
        return output.read_bytes()


def zeros_kept(parent: onnx.ModelProto, layers: dict, quantized: onnx.ModelProto) -> dict:
    """Zeros of each prunable weight in the INT8 model, where the parent's export audit found its tensor.

    ``layers``: the parent's export.json ``layers``. A weight's zeros are kept when every
    zero of its fp32 tensor is a zero of the int8 tensor quantized from it (``<name>_quantized``,
    or the fp32 tensor itself when the quantizer left it alone).
    """
    fp32 = {init.name: init for init in parent.graph.initializer}
    int8 = {init.name: init for init in quantized.graph.initializer}
    per_layer, zeros, lost = {}, 0, 0
    for name, entry in layers.items():
        source = entry.get("onnx")
        target = int8.get(f"{source}_quantized") or int8.get(source)
        if source not in fp32 or target is None:
            per_layer[name] = {"int8": None, "zeros_int8": None, "lost": None}
            continue
        before, after = numpy_helper.to_array(fp32[source]), numpy_helper.to_array(target)
        missing = int(np.count_nonzero((before == 0) & (after != 0))) if before.shape == after.shape else None
        count = int(np.count_nonzero(after == 0))
        per_layer[name] = {"int8": target.name, "dtype": str(after.dtype), "zeros_int8": count, "lost": missing}
        zeros += count
        lost = None if lost is None or missing is None else lost + missing
    return {"layers": per_layer, "zeros_int8": zeros, "lost": lost,
            "sparsity_preserved": lost == 0 and all(v["int8"] for v in per_layer.values())}
