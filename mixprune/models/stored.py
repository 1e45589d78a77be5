"""A torch model of the run directory as its folder stores it, read into memory: what a task gets
instead of a folder. The driver reads the folder (``stored_model_of``); the task, here or on a Ray
worker, rebuilds the model over the dense weights it shares with the other tasks (``build``) and
never touches the run directory.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import masked
from .cuts import Cut, build_cut_model
from .build import ModelSpec, build_model, load_state, numpy_state
from ..runs import DENSE, CandidateDir, CutDir, CutWeights, DenseDir, TorchModelDir


@dataclasses.dataclass(frozen=True)
class DenseModel:
    """``dense/``: the shared dense weights themselves."""
    cid: str = DENSE

    def build(self, spec: ModelSpec, dense_state: dict) -> tuple[torch.nn.Module, dict]:
        model = build_model(spec)
        load_state(model, dense_state, "the dense weights")
        return model, {}


@dataclasses.dataclass(frozen=True)
class MaskedModel:
    """A masked candidate: masks (+ values) + state over the dense weights."""
    cid: str
    stored: masked.MaskedWeights

    def build(self, spec: ModelSpec, dense_state: dict) -> tuple[torch.nn.Module, dict]:
        """The model and {parameter name: keep-mask (bool tensor)} of its pruned weights."""
        model = build_model(spec)
        load_state(model, masked.join(dense_state, self.stored), f"the weights of {self.cid}")
        return model, {name: torch.from_numpy(masked.keep_mask(packed, dense_state[name].shape))
                       for name, packed in self.stored.masks.items()}

    def weights(self, model: torch.nn.Module, dense_state: dict) -> masked.MaskedWeights:
        """``model``'s weights (changed, e.g. fine-tuned) in this stored form."""
        return masked.split(numpy_state(model), dense_state, list(self.stored.masks))

    def store(self, folder: CandidateDir, weights: masked.MaskedWeights) -> str:
        return folder.store(weights)


@dataclasses.dataclass(frozen=True)
class CutModel:
    """A structured candidate: the cut record + the tensors that differ from the dense weights
    with the cut replayed. Its channels are gone, so nothing is held at zero (no masks)."""
    cid: str
    cut: dict
    changed: dict

    def build(self, spec: ModelSpec, dense_state: dict) -> tuple[torch.nn.Module, dict]:
        return build_cut_model(spec, Cut.from_dict(self.cut), dense_state, self.changed, self.cid), {}

    def weights(self, model: torch.nn.Module, dense_state: dict) -> dict:
        return numpy_state(model)  # fine-tuning changes every tensor

    def store(self, folder: CutDir, weights: dict) -> str:
        return folder.store(CutWeights(self.cut, weights))


StoredModel = DenseModel | MaskedModel | CutModel
PrunedModel = MaskedModel | CutModel  # what fine-tuning changes and stores back


def stored_model_of(folder: TorchModelDir) -> StoredModel:
    if isinstance(folder, CutDir):
        return CutModel(folder.id, folder.read_cut(), folder.load_changes())
    if isinstance(folder, DenseDir):
        return DenseModel()
    return MaskedModel(folder.id, folder.stored_weights())


def build_stored(spec: ModelSpec, model_dir: TorchModelDir) -> torch.nn.Module:
    """The torch model a run directory's folder holds, weights loaded, eval mode (cut first when the
    folder holds a structured candidate)."""
    return stored_model_of(model_dir).build(spec, model_dir.run.dense_state())[0].eval()
