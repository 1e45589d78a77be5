"""A structured cut as a record: which channels Torch-Pruning removed, so that it replays.

A cut is recorded as the groups Torch-Pruning pruned, in the order they were pruned: the
module that roots each one (by name) and the output channels removed. Replaying them with
Torch-Pruning's dependency graph on a freshly built timm model gives the same smaller
architecture, onto which the cut model's weights (a safetensors state dict) load: no
module is ever pickled. The prune stage makes cuts (mixprune.pruning.cut); the export
stage and experiments rebuild cut models from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

from ..errors import CutError
from .heads import sync_heads

CUT_FORMAT = 1
SIDES = ("out", "in")


@dataclasses.dataclass(frozen=True)
class CutGroup:
    module: str  # the module whose channels root the group
    removed: tuple[int, ...]  # those channels removed (indices before the cut)
    # which channels of it: its outputs, or its inputs (Torch-Pruning roots an attention head group at the
    # output projection's inputs)
    side: str = "out"


@dataclasses.dataclass(frozen=True)
class Cut:
    groups: tuple[CutGroup, ...]
    round_to: int

    def to_dict(self) -> dict:
        return {"format": CUT_FORMAT, "round_to": self.round_to,
                "groups": [{"module": g.module, "removed": list(g.removed), "side": g.side} for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict) -> Cut:
        try:
            if data["format"] != CUT_FORMAT:
                raise CutError(f"a cut record of format {data['format']}; this mixprune reads format {CUT_FORMAT}")
            groups = tuple(CutGroup(str(g["module"]), tuple(int(i) for i in g["removed"]), _side(g.get("side", "out")))
                           for g in data["groups"])
            return cls(groups, int(data["round_to"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CutError(f"a malformed cut record ({type(exc).__name__}: {exc})") from exc


def _side(side) -> str:
    if side not in SIDES:
        raise ValueError(f"a group's side must be one of {', '.join(SIDES)}, got {side!r}")
    return side


@contextlib.contextmanager
def explained(label: str, after: str):
    """Around running a cut model: its failure becomes one CutError line."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the model's own forward raises whatever its layers raise
        detail = " ".join(str(exc).split())[:200]
        raise CutError(f"{label} does not run after {after} ({type(exc).__name__}: {detail}); Torch-Pruning "
                       "cannot cut this architecture as it is") from exc


def forward_or_explain(model, example, label: str, after: str):
    import torch

    with explained(label, after), torch.no_grad():
        return model(example)


def replay_cut(model, example, cut: Cut, label: str = "the model") -> None:
    """Apply a recorded cut to a freshly built ``model`` (same architecture), in place."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model.eval(), example)
    for g in cut.groups:
        module = modules.get(g.module)
        if module is None:
            raise CutError(f"the recorded cut names a module {g.module} that {label} does not have")
        pruner = graph.get_pruner_of_module(module)
        size = module.weight.shape[0 if g.side == "out" else 1]
        if any(i >= size for i in g.removed) or len(g.removed) >= size:
            raise CutError(f"the recorded cut removes {g.side}put channels {g.removed[:3]}... of {g.module}, "
                           f"which has {size}")
        cut_fn = pruner.prune_out_channels if g.side == "out" else pruner.prune_in_channels
        graph.get_pruning_group(module, cut_fn, list(g.removed)).prune()
    sync_heads(model)
    forward_or_explain(model, example, label, "replaying its cut")


def changed_tensors(state: dict, reference: dict) -> dict:
    """The numpy arrays of ``state`` that differ from ``reference`` (the same cut model before any
    re-estimation or training): what a structured candidate stores (mixprune.runs.CutDir)."""
    import numpy as np

    return {name: value for name, value in state.items()
            if name not in reference or not np.array_equal(value, reference[name])}


def build_cut_model(spec, cut: Cut, dense_state: dict, changed: dict, label: str):
    """The timm model of ``spec`` with the dense weights, ``cut`` replayed on them and the ``changed``
    tensors (numpy or torch) loaded over the result, in eval mode."""
    import torch

    from .build import build_model, load_state, numpy_state

    model = build_model(spec).eval()
    load_state(model, dense_state, f"the dense weights under {label}")
    replay_cut(model, torch.zeros(1, *spec.input_shape[1:]), cut, label)
    load_state(model, {**numpy_state(model), **changed}, f"the weights of {label} (against its recorded cut)")
    return model.eval()
