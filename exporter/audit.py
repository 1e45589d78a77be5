"""Sparsity audit: map ONNX weights back to torch parameters and count zeros on both sides.

The TorchScript exporter keeps some parameter names (``fc.weight``) and renames others
(``onnx::Conv_193`` after conv+BN folding, ``onnx::MatMul_80`` for a transposed linear
weight). So a parameter is matched by name where possible, else by value: an ONNX tensor
of the same shape (or, for 2-d weights, the transposed shape) that equals the parameter
times one scale per output channel (BatchNorm folding). Every zero of the parameter must
then be a zero of its ONNX tensor.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .storage import densify

_RTOL = 1e-5  # residual allowed after removing a per-channel scale (fp32 rounding is ~1e-7)


def prunable_names(model, extra=()) -> list[str]:
    """Weights of conv and linear layers (>= 2 dims), plus any other names in ``extra``."""
    import torch

    layer_types = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)
    names = {f"{prefix}.weight" if prefix else "weight"
             for prefix, module in model.named_modules()
             if isinstance(module, layer_types) and getattr(module, "weight", None) is not None
             and module.weight.dim() >= 2}
    params = dict(model.named_parameters())
    names.update(name for name in extra if name in params)
    return sorted(names)


def onnx_tensors(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the main graph: initializers, sparse initializers, Constant nodes."""
    tensors = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    tensors.update({sparse.values.name: densify(sparse) for sparse in proto.graph.sparse_initializer})
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    return tensors


def audit(params: dict[str, np.ndarray], proto: onnx.ModelProto) -> dict:
    """Zero counts of every prunable parameter (``params``: name -> array) in torch and ONNX.

    ``sparsity_preserved`` holds only when every parameter that has zeros was found in the
    ONNX model and none of its zeros became nonzero there.
    """
    tensors = onnx_tensors(proto)
    by_shape: dict[tuple, list[str]] = {}
    for name, array in tensors.items():
        if array.ndim >= 2 and array.dtype.kind == "f":
            by_shape.setdefault(array.shape, []).append(name)
    layers, unmatched = {}, []
    for name, weight in params.items():
        weight = weight.astype(np.float64)
        entry = {"numel": int(weight.size), "zeros_torch": int(np.count_nonzero(weight == 0))}
        match = _best_match(name, weight, tensors, by_shape)
        if match is None:
            unmatched.append(name)
            entry.update(onnx=None, zeros_onnx=None, lost=None)
        else:
            onnx_name, layout, onnx_weight, scaled = match
            entry.update(onnx=onnx_name, layout=layout, scaled=scaled,
                         zeros_onnx=int(np.count_nonzero(onnx_weight == 0)),
                         lost=int(np.count_nonzero((weight == 0) & (onnx_weight != 0))))
        layers[name] = entry
    zeros_torch = sum(e["zeros_torch"] for e in layers.values())
    zeros_onnx = sum(e["zeros_onnx"] or 0 for e in layers.values())
    preserved = all(e["lost"] == 0 if e["onnx"] else e["zeros_torch"] == 0 for e in layers.values())
    return {
        "prunable_params": sum(e["numel"] for e in layers.values()),
        "zeros_torch": zeros_torch, "zeros_onnx": zeros_onnx,
        "sparsity_preserved": bool(preserved and zeros_onnx >= zeros_torch),
        "unmatched": unmatched, "layers": layers,
    }


def _best_match(name, weight, tensors, by_shape):
    """(onnx name, layout, array in torch layout, scaled) of the tensor holding ``weight``.

    Among tensors proportional to ``weight`` per output channel, an exact name wins, then
    the one that kept the most of its zeros (only all-zero weights have several matches).
    """
    candidates = [(n, "same") for n in by_shape.get(weight.shape, [])]
    if weight.ndim == 2:  # linear weights may be stored transposed (MatMul)
        candidates += [(n, "transposed") for n in by_shape.get(weight.shape[::-1], [])]
    found = []
    for onnx_name, layout in candidates:
        array = tensors[onnx_name].astype(np.float64)
        if layout == "transposed":
            array = array.T
        if _proportional(weight, array):
            lost = int(np.count_nonzero((weight == 0) & (array != 0)))
            found.append((onnx_name != name, lost, onnx_name, layout, array, not np.array_equal(array, weight)))
    if not found:
        return None
    found.sort(key=lambda f: f[:2])
    return found[0][2:]


def _proportional(weight: np.ndarray, array: np.ndarray) -> bool:
    """Whether array == s * weight on weight's nonzeros, with one s per output channel."""
    rows = min(4, weight.shape[0])  # a cheap look at a few channels rejects most candidates
    for part in (slice(0, rows), slice(None)):
        w = weight[part].reshape(weight[part].shape[0], -1)
        a = array[part].reshape(w.shape)
        norm = np.einsum("ij,ij->i", w, w)
        scale = np.divide(np.einsum("ij,ij->i", a, w), norm, out=np.zeros_like(norm), where=norm > 0)
        fitted = scale[:, None] * w
        residual = np.abs(np.where(w != 0, a - fitted, 0.0)).max(axis=1)
        bound = _RTOL * np.abs(fitted).max(axis=1) + 1e-30
        if np.any(residual > bound):
            return False
    return True
