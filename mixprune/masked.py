"""A candidate's weights stored as the dense weights times a mask, not as a full copy.

A pruned candidate differs from the dense model only where its masks zero weights, where
normalization statistics were re-estimated and, once fine-tuned, in the values it kept.
So it is stored as three tensor files (ARCHITECTURE.md, "The run directory"):

- ``masks``: per pruned parameter, uint8 ``numpy.packbits(weight.reshape(-1) != 0)``;
- ``values``: per pruned parameter, its kept values in row-major order; only where they
  differ from the dense ones (after fine-tuning);
- ``state``: every other tensor whose bytes differ from the dense model's.

``join`` rebuilds the full state dict bit for bit: dense, each pruned parameter zeroed
(+0.0) outside its mask and filled inside it from ``values`` (else from dense), overlaid
with ``state``. A weight of -0.0 counts as pruned (``!= 0`` is False) and comes back as
+0.0, which is why the prune stage zeros weights as +0.0. Only numpy is used, so records
stay readable without torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskedWeights:
    masks: dict[str, np.ndarray]  # packed bits, uint8
    values: dict[str, np.ndarray] | None  # None: the kept values are the dense ones
    state: dict[str, np.ndarray]


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def keep_mask(packed: np.ndarray, shape: tuple) -> np.ndarray:
    """The boolean keep-mask (True = kept) of ``shape`` from its packed bits."""
    count = int(np.prod(shape, dtype=np.int64))
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)


def split(full: dict[str, np.ndarray], dense: dict[str, np.ndarray], pruned: list[str]) -> MaskedWeights:
    """The stored form of ``full``, a candidate of ``dense`` whose ``pruned`` parameters hold its zeros."""
    if set(full) != set(dense):
        raise ValueError(f"the candidate's tensors differ from the dense model's: "
                         f"{sorted(set(full) ^ set(dense))[:4]}")
    masks, values, kept_as_dense = {}, {}, True
    for name in pruned:
        flat = full[name].reshape(-1)
        kept = flat != 0
        masks[name] = np.packbits(kept)
        values[name] = np.ascontiguousarray(flat[kept])
        kept_as_dense = kept_as_dense and _same_bytes(values[name], dense[name].reshape(-1)[kept])
    state = {name: np.array(full[name], order="C") for name in full
             if name not in masks and not _same_bytes(full[name], dense[name])}
    return MaskedWeights(masks=masks, values=None if kept_as_dense else values, state=state)


def join(dense: dict[str, np.ndarray], stored: MaskedWeights) -> dict[str, np.ndarray]:
    """The full state dict of a stored candidate (new arrays; ``dense`` is not modified)."""
    full = dict(dense)
    for name, packed in stored.masks.items():
        base = dense[name]
        kept = keep_mask(packed, base.shape).reshape(-1)
        weight = np.zeros(base.size, dtype=base.dtype)
        weight[kept] = base.reshape(-1)[kept] if stored.values is None else stored.values[name]
        full[name] = weight.reshape(base.shape)
    full.update(stored.state)
    return full
