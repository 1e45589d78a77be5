"""onnxsim behind a guard: a simplified graph is kept only if it loses no zero and no byte."""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import onnx

from .onnx_export import first_line


def simplify_guarded(proto: onnx.ModelProto, audit: Callable[[onnx.ModelProto], dict]) -> tuple[onnx.ModelProto, bool, str]:
    """(model to keep, whether it is the simplified one, why).

    ``audit`` maps a model to its sparsity audit; simplification is rejected when it
    fails, drops a zero of any prunable weight, loses track of a weight, or grows the file.
    """
    import onnxsim

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises anything its passes raise
        return proto, False, f"onnxsim failed ({first_line(exc)}); kept the unsimplified graph"
    if not ok:
        return proto, False, "onnxsim could not validate its result; kept the unsimplified graph"
    before, after = audit(proto), audit(simplified)
    lost = sorted(name for name, entry in after["layers"].items()
                  if entry["onnx"] is None and before["layers"][name]["onnx"] is not None
                  or (entry["lost"] or 0) > (before["layers"][name]["lost"] or 0))
    if lost or after["zeros_onnx"] < before["zeros_onnx"]:
        where = f" in {', '.join(lost[:3])}" if lost else ""
        return proto, False, (f"onnxsim lost zeros{where} ({before['zeros_onnx']} -> {after['zeros_onnx']}); "
                              f"kept the unsimplified graph")
    size_before, size_after = proto.ByteSize(), simplified.ByteSize()
    if size_after > size_before:
        return proto, False, f"onnxsim grew the file ({size_before} -> {size_after} bytes); kept the unsimplified graph"
    return simplified, True, f"onnxsim: {len(proto.graph.node)} -> {len(simplified.graph.node)} nodes, {size_before} -> {size_after} bytes"
