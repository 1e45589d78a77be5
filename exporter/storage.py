"""Sparse storage: ONNX ``sparse_initializer``s for the tensors where they save bytes.

onnxruntime densifies sparse initializers when it loads a model, so this shrinks the file,
not memory or latency. Indices are linear (one per nonzero) in the smallest integer type
that holds the largest index; onnxruntime loads int8/16/32/64 indices alike, while
``onnx.checker`` accepts only int64, so the sparse file is verified with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

INDEX_DTYPES = (np.int8, np.int16, np.int32, np.int64)


def index_dtype_for(numel: int):
    """The smallest index type that can address ``numel`` elements."""
    return next(dtype for dtype in INDEX_DTYPES if numel - 1 <= np.iinfo(dtype).max)


def to_sparse(proto: onnx.ModelProto, index_dtype=None) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``proto`` with float initializers moved to sparse_initializer where smaller.

    ``index_dtype`` forces one index type (int32 / int64); by default each tensor gets the
    smallest that fits. Returns the model and a summary (tensors moved, index types).
    """
    sparse = onnx.ModelProto()
    sparse.CopyFrom(proto)
    keep, moved, index_types = [], [], {}
    for init in sparse.graph.initializer:
        array = numpy_helper.to_array(init)
        dtype = np.dtype(index_dtype or index_dtype_for(array.size))
        flat = array.reshape(-1)
        nonzero = np.flatnonzero(flat != 0) if array.dtype.kind == "f" else None
        if nonzero is None or array.size - 1 > np.iinfo(dtype).max or \
                nonzero.size * (array.itemsize + dtype.itemsize) >= array.nbytes:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[nonzero], init.name)
        indices = numpy_helper.from_array(nonzero.astype(dtype), f"{init.name}.indices")
        moved.append(helper.make_sparse_tensor(values, indices, list(array.shape)))
        index_types[dtype.name] = index_types.get(dtype.name, 0) + 1
    del sparse.graph.initializer[:]
    sparse.graph.initializer.extend(keep)
    sparse.graph.sparse_initializer.extend(moved)
    return sparse, {"tensors": len(moved), "index_dtypes": index_types}


def densify(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """The dense array of a sparse tensor (linear or coordinate indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(indices.T, shape)
    dense[indices] = values
    return dense.reshape(shape)


def dense_equivalent(dense: onnx.ModelProto, sparse: onnx.ModelProto) -> bool:
    """Whether every sparse initializer densifies to exactly the dense model's tensor."""
    originals = {init.name: init for init in dense.graph.initializer}
    for tensor in sparse.graph.sparse_initializer:
        original = originals.get(tensor.values.name)
        if original is None:
            return False
        expected = numpy_helper.to_array(original)
        if not np.array_equal(densify(tensor).view(np.uint8), expected.view(np.uint8)):
            return False
    return True
