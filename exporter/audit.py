"""Sparsity audit: map ONNX weights back to torch parameters and count zeros on both sides.

The TorchScript exporter keeps some parameter names (``fc.weight``) and renames others
(``onnx::Conv_193`` after conv+BN folding, ``onnx::MatMul_80`` for a transposed linear
weight). So a parameter is matched by name where possible, else by value: an ONNX tensor
of the same shape (or, for 2-d weights, the transposed shape) that equals the parameter
times one nonzero scale per output channel (BatchNorm folding) on the parameter's
nonzeros, each of which must be a nonzero of the tensor. Every zero of the parameter must
then be a zero of its ONNX tensor; one that is not is counted as lost.

The exporter folds identical constants into one tensor (at high sparsity, whole layers
are zero and share one all-zero initializer). One ONNX tensor may therefore back several
parameters, but only parameters that hold the same values up to the per-channel scale;
the record lists such tensors in ``shared_onnx``. ``zeros_onnx`` counts a tensor's zeros
once per parameter it backs; ``zeros_onnx_distinct`` counts each tensor once.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .storage import densify

_RTOL = 1e-5  # residual allowed after removing a per-channel scale (fp32 rounding is ~1e-7)
ZEROS_ONNX_COUNTING = ("zeros_onnx counts the zeros of each prunable weight's ONNX tensor, once per weight: "
                       "a tensor backing k weights (shared_onnx) counts k times; zeros_onnx_distinct counts it once")


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
    weight = lambda name: params[name].astype(np.float64)  # noqa: E731 - converted when used, not all at once
    # every (parameter, tensor) pair that matches, best first: the parameter's own name,
    # then the fewest lost zeros; a tensor taken by one parameter is open to another only
    # when the two hold the same values up to the per-channel scale
    pairs = sorted((match for name in params for match in _matches(name, weight(name), tensors, by_shape)),
                   key=lambda match: match[:2])
    chosen, users = {}, {}
    for _, _, name, onnx_name, layout in pairs:
        first = users.get(onnx_name, [None])[0]
        if name in chosen or first and not (layout == chosen[first][1] and _same_values(weight(name), weight(first))):
            continue
        chosen[name] = (onnx_name, layout)
        users.setdefault(onnx_name, []).append(name)
    layers, unmatched, distinct = {}, [], {}
    for name in params:
        torch_weight = weight(name)
        entry = {"numel": int(torch_weight.size), "zeros_torch": int(np.count_nonzero(torch_weight == 0))}
        if name not in chosen:
            unmatched.append(name)
            entry.update(onnx=None, zeros_onnx=None, lost=None)
        else:
            onnx_name, layout = chosen[name]
            array = _in_torch_layout(tensors[onnx_name], layout)
            entry.update(onnx=onnx_name, layout=layout, scaled=not np.array_equal(array, torch_weight),
                         zeros_onnx=int(np.count_nonzero(array == 0)),
                         lost=int(np.count_nonzero((torch_weight == 0) & (array != 0))))
            distinct[onnx_name] = entry["zeros_onnx"]
        layers[name] = entry
    zeros_torch = sum(e["zeros_torch"] for e in layers.values())
    zeros_onnx = sum(e["zeros_onnx"] or 0 for e in layers.values())
    preserved = all(e["lost"] == 0 if e["onnx"] else e["zeros_torch"] == 0 for e in layers.values())
    return {
        "prunable_params": sum(e["numel"] for e in layers.values()),
        "zeros_torch": zeros_torch, "zeros_onnx": zeros_onnx,
        "zeros_onnx_distinct": sum(distinct.values()),
        "zeros_onnx_counting": ZEROS_ONNX_COUNTING,
        "shared_onnx": {onnx_name: names for onnx_name, names in sorted(users.items()) if len(names) > 1},
        "sparsity_preserved": bool(preserved and zeros_onnx >= zeros_torch),
        "unmatched": unmatched, "layers": layers,
    }


def _matches(name, weight, tensors, by_shape):
    """(not its own name, lost zeros, name, onnx name, layout) of every tensor that holds
    ``weight`` up to one nonzero scale per output channel."""
    candidates = [(n, "same") for n in by_shape.get(weight.shape, [])]
    if weight.ndim == 2:  # linear weights may be stored transposed (MatMul)
        candidates += [(n, "transposed") for n in by_shape.get(weight.shape[::-1], [])]
    for onnx_name, layout in candidates:
        array = _in_torch_layout(tensors[onnx_name], layout)
        if _proportional(weight, array):
            lost = int(np.count_nonzero((weight == 0) & (array != 0)))
            yield onnx_name != name, lost, name, onnx_name, layout


def _in_torch_layout(array: np.ndarray, layout: str) -> np.ndarray:
    array = array.astype(np.float64)
    return array.T if layout == "transposed" else array


def _same_values(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two weights are equal up to one nonzero scale per output channel."""
    return _proportional(first, second) and _proportional(second, first)


def _proportional(weight: np.ndarray, array: np.ndarray) -> bool:
    """Whether array == s * weight on weight's nonzeros, with one s per output channel.

    s must be nonzero on every channel that holds a nonzero, and every nonzero of
    ``weight`` must be a nonzero of ``array``: an all-zero tensor (scale 0) holds only an
    all-zero weight.
    """
    rows = min(4, weight.shape[0])  # a cheap look at a few channels rejects most candidates
    for part in (slice(0, rows), slice(None)):
        w = weight[part].reshape(weight[part].shape[0], -1)
        a = array[part].reshape(w.shape)
        if np.any((w != 0) & (a == 0)):
            return False
        norm = np.einsum("ij,ij->i", w, w)
        scale = np.divide(np.einsum("ij,ij->i", a, w), norm, out=np.zeros_like(norm), where=norm > 0)
        if np.any((norm > 0) & (scale == 0)):
            return False
        fitted = scale[:, None] * w
        residual = np.abs(np.where(w != 0, a - fitted, 0.0)).max(axis=1)
        bound = _RTOL * np.abs(fitted).max(axis=1) + 1e-30
        if np.any(residual > bound):
            return False
    return True
