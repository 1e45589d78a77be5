"""Structured cuts: whole output channels removed with Torch-Pruning.

Torch-Pruning's dependency graph finds the coupled groups (residual adds, depthwise and
grouped convolutions, concatenations); cutting one root prunes every coupled layer with
it. Each cut comes with its record (mixprune.cuts.Cut), which replays it. Ratios are keyed by the
parameter name of a conv / linear weight (``layer1.0.conv1.weight``), the fraction of its
output channels to remove; Torch-Pruning's ratios count channels, so such a layer loses
about 1 - (1 - p)^2 of its parameters when its input is cut too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import warnings

import torch
from torch import nn

from mixprune.cuts import Cut, CutGroup, forward_or_explain
from mixprune.errors import CutError
from mixprune.registry import Registry

from .roles import discover_layers

# How a group of coupled channels is scored (Torch-Pruning's group importances), by signal.
IMPORTANCES: Registry = Registry("structured importance", CutError)


@IMPORTANCES.register("magnitude")
def _magnitude():
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


@IMPORTANCES.register("gradient")
def _gradient():
    """|dL/dw| per channel group: Torch-Pruning's magnitude importance (L1) read on the gradients."""
    import torch_pruning as tp

    magnitude = tp.importance.GroupMagnitudeImportance(p=1)

    def score(group):
        layers = {id(dep.target.module): dep.target.module for dep, _ in group
                  if getattr(dep.target.module, "weight", None) is not None
                  and dep.target.module.weight.grad is not None}
        swapped = {key: layer.weight.data for key, layer in layers.items()}
        try:
            for layer in layers.values():
                layer.weight.data = layer.weight.grad.data
            return magnitude(group)
        finally:
            for key, layer in layers.items():
                layer.weight.data = swapped[key]

    return score


@IMPORTANCES.register("product")
def _taylor():
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()  # |w * dL/dw|: needs .grad filled by the caller


def classifier_weights(model: nn.Module) -> set[str]:
    """Parameter names of the classifier's weight: its outputs are the classes, never cut."""
    return {f"{n}.weight" for n, m in model.named_modules() if m is model.get_classifier()}


@contextlib.contextmanager
def torch_pruning(label: str):
    """Around a call into Torch-Pruning: its warnings silenced, its failures one CutError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about every parameter it cannot unwrap
            yield
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's tracing fails in many ways on unsupported graphs
        detail = " ".join(str(exc).split())[:200]
        raise CutError(f"Torch-Pruning cannot cut {label} ({type(exc).__name__}: {detail})") from exc


def bisect_to(target: float, measure, low: float, high: float, *, steps: int, tolerance: float):
    """The result of ``measure(x)`` -> (achieved, result) closest to ``target``, bisecting x in
    [low, high] (``achieved`` grows with x) until within ``tolerance`` or ``steps`` probes."""
    best = None
    for _ in range(steps):
        x = (low + high) / 2
        achieved, result = measure(x)
        if best is None or abs(achieved - target) < abs(best[0] - target):
            best = (achieved, result)
        if abs(achieved - target) <= tolerance:
            break
        low, high = (x, high) if achieved < target else (low, x)
    return best[1]


def channel_counts(model: nn.Module) -> dict[str, int]:
    """{parameter name of each conv / linear weight: its output channels}."""
    return {layer.name: layer.shape[0] for layer in discover_layers(model)}


def _check_ratios(model: nn.Module, ratios: dict[str, float], round_to: int, label: str) -> None:
    if round_to < 1:
        raise CutError(f"channel counts must be rounded to a multiple of at least 1, got {round_to}")
    counts = channel_counts(model)
    classifier = classifier_weights(model)
    for name, ratio in ratios.items():
        if name in classifier:
            raise CutError(f"{name} is {label}'s classifier: its outputs are the classes and are never cut")
        if name not in counts:
            close = difflib.get_close_matches(name, counts, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CutError(f"{label} has no conv or linear weight '{name}'{hint}")
        if not 0 <= ratio < 1:
            raise CutError(f"cutting {ratio:g} of the output channels of {name} would remove them all "
                           "(a structured ratio must be in [0, 1))")
        kept = counts[name] - int(counts[name] * ratio)
        if kept < min(round_to, counts[name]):
            raise CutError(f"cutting {ratio:g} of {name}'s {counts[name]} channels leaves {kept}, fewer than "
                           f"one multiple of {round_to} (lower the ratio or the rounding)")


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """A copy in eval mode; deepcopy drops gradients, and Taylor importance reads them."""
    copied = copy.deepcopy(model).eval()
    for source, target in zip(model.parameters(), copied.parameters(), strict=True):
        if source.grad is not None:
            target.grad = source.grad.clone()
    return copied


def cut_model(model: nn.Module, example: torch.Tensor, ratios: dict[str, float], *, importance: str = "magnitude",
              round_to: int = 8, label: str = "the model") -> tuple[nn.Module, Cut]:
    """A copy of ``model`` with channels removed, and the record that replays the cut (``model``
    itself is left alone, so a cut that fails leaves nothing half-cut behind).

    The classifier keeps its outputs (the classes) and no layer loses input channels of the
    image (Torch-Pruning only ever cuts what feeds from a cut layer). For ``product``,
    gradients must be in ``model``'s ``.grad`` already.
    """
    import torch_pruning as tp

    _check_ratios(model, ratios, round_to, label)
    scorer = IMPORTANCES.get(importance)()
    model = _copy_with_grads(model)
    modules = dict(model.named_modules())
    names = {module: name for name, module in modules.items()}
    groups = []
    with torch_pruning(label):
        pruner = tp.pruner.MetaPruner(
            model, example, importance=scorer, pruning_ratio=0.0, round_to=round_to,
            pruning_ratio_dict={modules[n.rpartition(".")[0]]: r for n, r in ratios.items()},
            ignored_layers=[model.get_classifier()])
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            groups.append(CutGroup(names[dep.target.module], tuple(sorted(int(i) for i in idxs))))
            group.prune()
    forward_or_explain(model, example, label, "the cut")
    return model, Cut(tuple(groups), round_to)


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass on ``example`` and parameters (Torch-Pruning's counter)."""
    import torch_pruning as tp

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)


@dataclasses.dataclass(frozen=True)
class GlobalCut:
    """What one global structured run (one importance, one MAC target) left in each layer."""

    ratios: dict[str, float]  # parameter name -> fraction of its output channels removed
    macs_reduction: float  # achieved: 1 - MACs after / MACs before
    channel_ratio: float  # Torch-Pruning's global pruning_ratio that achieved it


def global_cut(model: nn.Module, example: torch.Tensor, macs_reduction: float, *, importance: str = "magnitude",
               round_to: int = 8, tolerance: float = 0.02, steps: int = 10, label: str = "the model") -> GlobalCut:
    """Torch-Pruning's global pruning (one importance threshold across layers) at the channel ratio that
    removes ``macs_reduction`` of the MACs (bisection, within ``tolerance``): the per-layer ratios it
    chose are Phase 1's global guidance, as a global magnitude run is for unstructured pruning."""
    import torch_pruning as tp

    if not 0 < macs_reduction < 1:
        raise CutError(f"a MAC reduction must be in (0, 1), got {macs_reduction:g}")
    scorer = IMPORTANCES.get(importance)()
    base_macs, _ = macs_and_params(model, example)
    before = channel_counts(model)
    head = classifier_weights(model)

    def run(ratio):
        trial = _copy_with_grads(model)
        with torch_pruning(label):
            tp.pruner.MetaPruner(trial, example, importance=scorer, pruning_ratio=ratio, global_pruning=True,
                                 round_to=round_to, ignored_layers=[trial.get_classifier()]).step()
        forward_or_explain(trial, example, label, "a global cut")
        achieved = 1 - macs_and_params(trial, example)[0] / base_macs
        after = channel_counts(trial)
        return achieved, GlobalCut({n: 1 - after[n] / before[n] for n in before if n not in head}, achieved, ratio)

    return bisect_to(macs_reduction, run, 0.0, 0.95, steps=steps, tolerance=tolerance)
