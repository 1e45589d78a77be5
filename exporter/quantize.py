"""INT8 variants: onnxruntime's quantization of an exported fp32 model, one registered recipe per format.

A recipe (``RECIPES``) is everything one INT8 format brings: the variant's id suffix, how onnxruntime
quantizes (``quantize_static`` with its settings, or ``quantize_dynamic``), whether it needs calibration
images, its ``quantization`` record for strategy.json, its ``format`` axis value, which models it applies
to and its plot style; a new format is one entry here (and, to be chosen by ``--quantize``, a name in
config.QUANTIZE).

- ``int8u`` (``+int8u``, ``int8-uint8``) and ``int8`` (``+int8``, ``int8-int8``): static QDQ. Weights
  int8, symmetric, one scale per output channel (so a zero weight stays exactly zero: the zeros of a
  pruned parent survive); activations uint8 or int8, calibrated with MinMax on real images of the run's
  calibration split. Which activation type runs faster depends on the model and the device (on this
  x86 host, uint8 activations made resnet18 4x faster and int8 ones barely faster), so each gets a
  variant of its own and the bench decides.
- ``int8d`` (``+int8d``, ``int8-dynamic``): dynamic quantization (QOperator: MatMulInteger /
  ConvInteger, activations quantized to uint8 at run time, int8 symmetric per-tensor weights, so zeros
  stay zeros here too), no calibration. For attention models only: measured on vit_tiny it is the fastest
  format (1.77x fp32 at 224, 2.59x at 32, static uint8 1.49x / 1.85x, no accuracy lost on digits),
  while on resnet18 and mobilenetv3 it runs 4-10x slower than fp32 (experiments/int8). Which models
  have attention is read off the parent's ONNX graph (``has_attention``: a MatMul whose two inputs are
  both activations, as q @ k^T and attention @ v are), not off the model's name, so any timm family
  with attention (ViT, DeiT, Swin, ...) gets it and no convolutional one does.

onnxruntime's pre-processing (shape inference and graph optimization) runs first, as its quantization
guide asks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from mixprune.config import QUANTIZE
from mixprune.errors import ExportError
from mixprune.registry import Registry, Style

from .onnx_export import INPUT_NAME

CALIBRATION_BATCH = 16
PREPROCESSED = "onnxruntime.quantization.quant_pre_process"


def every_model(parent: onnx.ModelProto) -> bool:
    return True


def has_attention(parent: onnx.ModelProto) -> bool:
    """Whether the graph multiplies two activations (a MatMul with neither input a weight: attention's
    q @ k^T and attention @ v), where dynamic quantization's run-time quantized MatMulInteger pays off."""
    constants = {init.name for init in parent.graph.initializer}
    constants |= {out for node in parent.graph.node if node.op_type == "Constant" for out in node.output}
    return any(node.op_type == "MatMul" and len(node.input) == 2 and not set(node.input) & constants
               for node in parent.graph.node)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One INT8 format: how a variant ``<parent><suffix>`` is made and recorded."""

    name: str  # its name in RECIPES and config.QUANTIZE
    suffix: str  # the variant's id is <parent><suffix>
    format: str  # strategy.json's ``format`` axis (mixprune.candidates: int8-<activation type>)
    activation: str  # the ``quantization`` record's activation_type
    calibrated: bool  # static: needs the run's calibration images; dynamic: none
    options: Callable[[], dict]  # () -> the onnxruntime.quantization call's keyword arguments
    settings: dict  # the ``quantization`` record, but for the calibration samples
    style: Style  # the report's series of this format (structured_marker: a channel-cut parent's)
    applies: Callable[[onnx.ModelProto], bool] = every_model  # which parents (their fp32 ONNX graph) get it

    def record(self, calibration_samples: int) -> dict:
        """The ``quantization`` record of strategy.json (and export.json)."""
        samples = {"calibration_samples": calibration_samples} if self.calibrated else {}
        return {**self.settings, **samples}

    def quantize(self, prepared: Path, output: Path, images: np.ndarray | None) -> None:
        """Run onnxruntime's quantizer on the pre-processed model ``prepared`` into ``output``."""
        from onnxruntime.quantization import quantize_dynamic, quantize_static

        if self.calibrated:
            quantize_static(str(prepared), str(output), _Images(images), **self.options())
        else:
            quantize_dynamic(str(prepared), str(output), **self.options())


RECIPES: Registry[Recipe] = Registry("INT8 recipe")


def register(recipe: Recipe) -> Recipe:
    return RECIPES.register(recipe.name)(recipe)


def _static_settings(activation: str) -> dict:
    return {"format": "QDQ", "activation_type": activation, "weight_type": "int8", "weight_symmetric": True,
            "per_channel": True, "reduce_range": False, "calibration_method": "MinMax",
            "calibration_split": "calibration", "preprocessed": PREPROCESSED}


def _static_options(activation_type: str) -> Callable[[], dict]:
    def options() -> dict:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        return dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return options


def _dynamic_options() -> dict:
    from onnxruntime.quantization import QuantType

    return dict(per_channel=False, reduce_range=False, weight_type=QuantType.QInt8,
                extra_options={"WeightSymmetric": True})


register(Recipe("int8", "+int8", "int8-int8", "int8", True, _static_options("QInt8"), _static_settings("int8"),
                Style("P", "#bcbd22", structured_marker="8")))
register(Recipe("int8u", "+int8u", "int8-uint8", "uint8", True, _static_options("QUInt8"), _static_settings("uint8"),
                Style("D", "#17becf", structured_marker="d")))
register(Recipe("int8d", "+int8d", "int8-dynamic", "uint8", False, _dynamic_options,
                {"format": "QOperator", "dynamic": True, "activation_type": "uint8", "weight_type": "int8",
                 "weight_symmetric": True, "per_channel": False, "reduce_range": False, "calibration_method": None,
                 "calibration_samples": 0, "calibration_split": None, "preprocessed": PREPROCESSED},
                Style(">", "#e7ba52", structured_marker="<"), applies=has_attention))

# The static recipes by activation type (what experiments/int8 compares)
ACTIVATIONS = {recipe.activation: recipe for _, recipe in RECIPES.items() if recipe.calibrated}
if not {name for chosen in QUANTIZE.values() for name in chosen} <= set(RECIPES.names()):
    raise RuntimeError(f"config.QUANTIZE names an INT8 recipe that does not exist (known: {', '.join(RECIPES.names())})")


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


def quantize(onnx_bytes: bytes, images: np.ndarray | None, recipe: Recipe, label: str) -> bytes:
    """The INT8 model of ``onnx_bytes`` by ``recipe``, calibrated on ``images`` (N, C, H, W float32)
    when the recipe is static."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.calibrated:
        require_calibration(images if images is not None else np.zeros((0,)), label)
    with tempfile.TemporaryDirectory(prefix="mixprune-quantize-") as tmp:
        source, prepared, output = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints its progress
                quant_pre_process(str(source), str(prepared))
                recipe.quantize(prepared, output, images)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises whatever its passes raise
            detail = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ExportError(f"onnxruntime cannot quantize {label} ({recipe.format}): {detail}") from exc
        return output.read_bytes()


def zeros_kept(parent: onnx.ModelProto, layers: dict, quantized: onnx.ModelProto) -> dict:
    """Zeros of each prunable weight in the INT8 model, where the parent's export audit found its tensor.

    ``layers``: the parent's export.json ``layers``. A weight's zeros are kept when every
    zero of its fp32 tensor is a zero of the int8 tensor quantized from it: ``<name>_quantized`` (as
    static QDQ and dynamic quantization both name it), ``<name>_Transposed_quantized`` (onnxruntime's
    pre-processing turns a Gemm with a transposed weight into a MatMul over the transposed tensor,
    compared transposed back), or the fp32 tensor itself when the quantizer left it alone.
    """
    fp32 = {init.name: init for init in parent.graph.initializer}
    int8 = {init.name: init for init in quantized.graph.initializer}
    per_layer, zeros, lost = {}, 0, 0
    for name, entry in layers.items():
        source = entry.get("onnx")
        found = next(((int8[key], transposed) for key, transposed in (
            (f"{source}_quantized", False), (source, False), (f"{source}_Transposed_quantized", True),
            (f"{source}_Transposed", True)) if key in int8), None)
        if source not in fp32 or found is None:
            per_layer[name] = {"int8": None, "zeros_int8": None, "lost": None}
            continue
        target, transposed = found
        before, after = numpy_helper.to_array(fp32[source]), numpy_helper.to_array(target)
        if transposed and before.ndim == 2:
            before = before.T
        missing = int(np.count_nonzero((before == 0) & (after != 0))) if before.shape == after.shape else None
        count = int(np.count_nonzero(after == 0))
        per_layer[name] = {"int8": target.name, "dtype": str(after.dtype), "zeros_int8": count, "lost": missing}
        zeros += count
        lost = None if lost is None or missing is None else lost + missing
    return {"layers": per_layer, "zeros_int8": zeros, "lost": lost,
            "sparsity_preserved": lost == 0 and all(v["int8"] for v in per_layer.values())}
