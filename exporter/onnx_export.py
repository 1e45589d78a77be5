"""torch -> ONNX (TorchScript exporter, dynamic batch, named input and output), checked."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from mixprune.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
EXPORT_BATCH = 2  # not 1, so no size-1 shortcut gets baked into the graph

_OP_RE = re.compile(r"operator '([\w.:]+)'")


def export_onnx(model, input_shape: tuple, *, opset: int, label: str) -> onnx.ModelProto:
    """Export ``model`` (eval mode) and return the checked ONNX model.

    Raises ExportError naming the failing operator and the model when the exporter or
    ``onnx.checker`` refuses it.
    """
    model.eval()
    dummy = torch.randn((EXPORT_BATCH, *input_shape[1:]), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="mixprune-export-") as tmp:
        path = Path(tmp) / "exported.onnx"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    model, (dummy,), str(path), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                    dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                )
        except Exception as exc:  # noqa: BLE001 - every exporter failure means the same to the user
            raise ExportError(f"cannot export {label} to ONNX opset {opset}: {_describe(exc)}") from exc
        proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker raises several types
        raise ExportError(f"onnx.checker rejects the export of {label}: {first_line(exc)}") from exc
    return proto


def canonicalize_zeros(proto: onnx.ModelProto) -> int:
    """Turn -0.0 into +0.0 in float initializers; returns how many elements changed.

    Pruning (w * mask) and conv+BN folding (0 * negative scale) leave -0.0 behind. It
    computes exactly like +0.0 but has a different bit pattern, which would make zeros
    cost as much as any value in the compact storage.
    """
    changed = 0
    for index, init in enumerate(proto.graph.initializer):
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        array = numpy_helper.to_array(init)
        negative = int(np.count_nonzero((array == 0) & np.signbit(array)))
        if negative:
            changed += negative
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(array + array.dtype.type(0), init.name))
    return changed


def io_spec(proto: onnx.ModelProto) -> dict:
    """Names, shapes (symbolic dims by name) and element types of the graph inputs/outputs."""
    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "shape": shape,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name})
        return out

    initializers = {init.name for init in proto.graph.initializer}
    return {"inputs": describe(v for v in proto.graph.input if v.name not in initializers),
            "outputs": describe(proto.graph.output)}


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's deprecation warning and its graph dumps on failure."""
    set_log = getattr(torch._C, "_jit_set_onnx_log_enabled", None)
    was_on = getattr(torch._C, "_jit_is_onnx_log_enabled", lambda: False)()
    if set_log:
        set_log(False)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        if set_log:
            set_log(was_on)


def _describe(exc: Exception) -> str:
    text = str(exc)
    match = _OP_RE.search(text)
    if match:
        return f"operator {match.group(1)} is not supported (try `mixprune export --opset N`, 13-20, or a model without it)"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
