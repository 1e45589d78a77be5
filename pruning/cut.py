"""Structured cuts: whole output channels removed with Torch-Pruning.

Torch-Pruning's dependency graph finds the coupled groups (residual adds, depthwise and
grouped convolutions, concatenations); cutting one root prunes every coupled layer with
it. Each cut comes with its record (mixprune.models.cuts.Cut), which replays it. Ratios are keyed by the
parameter name of a conv / linear weight (``layer1.0.conv1.weight``), the fraction of its
output channels to remove; Torch-Pruning's ratios count channels, so such a layer loses
about 1 - (1 - p)^2 of its parameters when its input is cut too.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import time
import warnings

import torch
from torch import nn

from mixprune.models.cuts import Cut, CutGroup, explained, forward_or_explain
from mixprune.errors import CutError
from mixprune.models.heads import attention_modules, head_counts, head_cut, heads_removed, sync_heads, token_width_layers

from .roles import discover_layers
from .scores import SIGNALS

MAX_GLOBAL_RATIO = 0.95  # the largest global channel ratio a global run tries


class _Importances:
    """The structured group importances by signal name: a view of pruning/scores.py ``SIGNALS``, where each
    signal is registered once with its importance (a new signal cannot be missing here)."""

    def names(self) -> list[str]:
        return SIGNALS.names()

    def get(self, name: str):
        """The factory of ``name``'s Torch-Pruning importance (CutError for an unknown name)."""
        if name not in SIGNALS:
            raise CutError(f"unknown structured importance '{name}' (known: {', '.join(SIGNALS.names())})")
        return SIGNALS.get(name).importance

    def __contains__(self, name: str) -> bool:
        return name in SIGNALS


IMPORTANCES = _Importances()


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
    [low, high] (``achieved`` grows with x near the target) until within ``tolerance`` or ``steps`` probes."""
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


def solve_for(target: float, measure, low: tuple, high: tuple, *, steps: int, tolerance: float):
    """The result of ``measure(x)`` -> (achieved, result) closest to ``target``, for x in a bracket whose
    ends are given measured, ``low`` = (x, (achieved, result)) and ``high`` alike (``achieved`` grows
    with x everywhere). Regula falsi, Illinois variant: the MACs of a cut change smoothly with the ratio but in
    steps (channel rounding), which stalls plain false position; halving the stuck end's value does
    not. Stops within ``tolerance`` or after ``steps`` probes."""
    (x_lo, best_lo), (x_hi, best_hi) = low, high
    f_lo, f_hi = best_lo[0] - target, best_hi[0] - target
    best = min(best_lo, best_hi, key=lambda pair: abs(pair[0] - target))
    stuck = 0  # +1: the high end moved last, -1: the low end did
    for _ in range(steps):
        if abs(best[0] - target) <= tolerance or f_hi == f_lo:
            break
        x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
        achieved, result = measure(x)
        if abs(achieved - target) < abs(best[0] - target):
            best = (achieved, result)
        if achieved < target:
            x_lo, f_lo = x, achieved - target
            f_hi, stuck = (f_hi / 2 if stuck == -1 else f_hi), -1
        else:
            x_hi, f_hi = x, achieved - target
            f_lo, stuck = (f_lo / 2 if stuck == 1 else f_lo), 1
    return best[1]


def channel_counts(model: nn.Module) -> dict[str, int]:
    """{parameter name of each conv / linear weight: its output channels}."""
    return {layer.name: layer.shape[0] for layer in discover_layers(model)}


def _check_ratios(model: nn.Module, ratios: dict[str, float], round_to: int, label: str) -> None:
    if round_to < 1:
        raise CutError(f"channel counts must be rounded to a multiple of at least 1, got {round_to}")
    counts, heads = channel_counts(model), head_counts(model)
    classifier, token_width = classifier_weights(model), token_width_layers(model)
    for name, ratio in ratios.items():
        if name in classifier:
            raise CutError(f"{name} is {label}'s classifier: its outputs are the classes and are never cut")
        if name in token_width:
            raise CutError(f"{name} writes {label}'s token width, which couples every block and is never cut "
                           "(attention heads and MLP hidden units are)")
        if name not in counts:
            close = difflib.get_close_matches(name, counts, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise CutError(f"{label} has no conv or linear weight '{name}'{hint}")
        if not 0 <= ratio < 1:
            raise CutError(f"cutting {ratio:g} of the output channels of {name} would remove them all "
                           "(a structured ratio must be in [0, 1))")
        if name in heads:
            if heads_removed(ratio, heads[name]) >= heads[name]:
                raise CutError(f"cutting {ratio:g} of {name}'s {heads[name]} attention heads would remove them all")
            continue
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


def _group_key(group, names: dict) -> tuple[str, str]:
    dep, _ = group[0]
    return names[dep.target.module], getattr(dep.handler, "__name__", type(dep.handler).__name__)


@dataclasses.dataclass(frozen=True)
class GroupScores:
    """One importance's score of each output channel of every coupled group of the uncut model, by the
    group's root (module name, pruning function). Every cut, probe and global run of a model starts
    from its uncut weights, so each group is scored once and then looked up."""

    importance: str
    scores: dict[tuple[str, str], torch.Tensor | None]

    def on(self, model: nn.Module):
        """The importance function Torch-Pruning calls on groups of ``model`` (an uncut copy)."""
        names = {module: name for name, module in model.named_modules()}

        def lookup(group):
            key = _group_key(group, names)
            if key not in self.scores:
                raise CutError(f"no {self.importance} score for the channel group rooted at {key[0]}")
            return self.scores[key]

        return lookup


def score_groups(model: nn.Module, example: torch.Tensor, importance: str, *, round_to: int = 8,
                 label: str = "the model") -> GroupScores:
    """Score every channel group of ``model`` with ``importance`` (for ``gradient`` and ``product``
    the gradients must be in ``model``'s ``.grad``): one pass of Torch-Pruning's global ranking, which
    scores every group, with nothing cut."""
    scorer = IMPORTANCES.get(importance)()
    trial = _copy_with_grads(model)
    names = {module: name for name, module in trial.named_modules()}
    recorded = {}

    def record(group):
        recorded[_group_key(group, names)] = value = scorer(group)
        return value

    with torch_pruning(label):
        for _ in _pruner(trial, example, record, round_to=round_to, global_ratio=0.5).step(interactive=True):
            pass  # scored, not cut
    return GroupScores(importance, recorded)


def _in_order(group) -> torch.Tensor:
    """An importance for cuts whose channel counts matter and whose choice of channels does not."""
    return torch.arange(len(group[0][1]), dtype=torch.float32)


def _cut(model: nn.Module, example: torch.Tensor, importance, *, round_to: int, label: str,
         ratios: dict[str, float] | None = None, global_ratio: float | None = None) -> list:
    """Cut ``model`` in place, per layer (``ratios``) or globally (``global_ratio``); returns the groups
    as Torch-Pruning pruned them, in order."""
    pruned = []
    with torch_pruning(label):
        for group in _pruner(model, example, importance, round_to=round_to, ratios=ratios,
                             global_ratio=global_ratio).step(interactive=True):
            pruned.append(group[0])
            group.prune()
    sync_heads(model)
    return pruned


def _pruner(model: nn.Module, example: torch.Tensor, importance, *, round_to: int,
            ratios: dict[str, float] | None = None, global_ratio: float | None = None):
    """Torch-Pruning's pruner for a cut per layer (``ratios``) or global (``global_ratio``); the
    classifier is never cut, and attention is cut by whole heads (mixprune.models.heads)."""
    import torch_pruning as tp

    heads = head_cut(model, ratios, global_ratio)
    if ratios is not None:
        modules, attention = dict(model.named_modules()), attention_modules(model)
        channels = {modules[n.rpartition(".")[0]]: r for n, r in ratios.items() if n not in attention}
        scope = dict(pruning_ratio=0.0, pruning_ratio_dict={**channels, **heads.scoped})
    else:
        scope = dict(pruning_ratio=global_ratio, global_pruning=True)
    return tp.pruner.MetaPruner(model, example, importance=importance, round_to=round_to,
                                ignored_layers=[model.get_classifier(), *heads.ignored], **scope, **heads.options)


def cut_model(model: nn.Module, example: torch.Tensor, ratios: dict[str, float], scores: GroupScores, *,
              round_to: int = 8, label: str = "the model") -> tuple[nn.Module, Cut]:
    """A copy of ``model`` with channels removed (``ratios``: the fraction of each named layer's output
    channels, the lowest by ``scores``), and the record that replays the cut. ``model`` itself is left
    alone, so a cut that fails leaves nothing half-cut behind.

    The classifier keeps its outputs (the classes) and no layer loses input channels of the
    image (Torch-Pruning only ever cuts what feeds from a cut layer).
    """
    _check_ratios(model, ratios, round_to, label)
    model = copy.deepcopy(model).eval()
    names = {module: name for name, module in model.named_modules()}
    pruned = _cut(model, example, scores.on(model), ratios=ratios, round_to=round_to, label=label)
    forward_or_explain(model, example, label, "the cut")
    return model, Cut(tuple(CutGroup(names[dep.target.module], tuple(sorted(int(i) for i in idxs)),
                                     "in" if dep.handler.__name__ == "prune_in_channels" else "out")
                            for dep, idxs in pruned), round_to)


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass on ``example`` and parameters (Torch-Pruning's counter)."""
    import torch_pruning as tp

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(model.eval(), example)
    return int(macs), int(params)


class Blueprint:
    """A copy of a model to cut for channel counts and MACs only (the bisections of phase 1 and of the
    shift to a MAC reduction cut it hundreds of times). On torch's meta device a cut copies no weights,
    but BatchNorm runs there through Python decompositions, so for small models and inputs a real copy
    is faster: the first forward pass of each decides. Either gives the numbers a real cut would."""

    def __init__(self, model: nn.Module, example: torch.Tensor, label: str = "the model", device: str | None = None):
        """``device`` "meta" or "cpu" for one of the two; None: the faster."""
        self.label = label
        copies = {"cpu": lambda: (copy.deepcopy(model).eval(), example[:1])}
        copies["meta"] = lambda: (copy.deepcopy(model).to("meta").eval(), example[:1].to("meta"))
        if device is not None:
            self.model, self.example = copies[device]()
        else:
            made = [copies["cpu"]()]
            with contextlib.suppress(Exception):  # a model with an op that has no meta kernel stays on the cpu
                made.append(copies["meta"]())
            self.model, self.example = min(made, key=lambda pair: _probe_seconds(*pair))
        self.macs, self.params = macs_and_params(self.model, self.example)
        self.counts = channel_counts(self.model)
        self.heads = head_counts(self.model)
        kept = classifier_weights(self.model) | token_width_layers(self.model)
        self.cuttable = [n for n in self.counts if n not in kept]
        self._global_runs: dict[tuple, GlobalCut] = {}  # bisections for nearby targets probe the same ratios

    def global_run(self, channel_ratio: float, scores: GroupScores, round_to: int) -> GlobalCut:
        """What Torch-Pruning's global pruning at ``channel_ratio`` (ranked by ``scores``) leaves."""
        key = (scores.importance, round_to, channel_ratio)
        if key not in self._global_runs:
            trial = self.cut(global_ratio=channel_ratio, scores=scores, round_to=round_to)
            self._global_runs[key] = GlobalCut(self.ratios(trial), self.macs_reduction(trial), channel_ratio)
        return self._global_runs[key]

    def cut(self, *, round_to: int, ratios: dict[str, float] | None = None, global_ratio: float | None = None,
            scores: GroupScores | None = None) -> nn.Module:
        """A cut copy: per layer (``ratios``; which channels does not matter for counts) or globally
        (``global_ratio`` with ``scores``, which decide how much each layer loses)."""
        trial = copy.deepcopy(self.model)
        if ratios is not None:
            _check_ratios(trial, ratios, round_to, self.label)
        _cut(trial, self.example, _in_order if scores is None else scores.on(trial), ratios=ratios,
             global_ratio=global_ratio, round_to=round_to, label=self.label)
        return trial

    def macs_reduction(self, cut: nn.Module) -> float:
        with explained(self.label, "a cut"):
            return 1 - macs_and_params(cut, self.example)[0] / self.macs

    def ratios(self, cut: nn.Module) -> dict[str, float]:
        """The fraction of its output channels each cuttable layer lost in ``cut``."""
        after = channel_counts(cut)
        return {n: 1 - after[n] / self.counts[n] for n in self.cuttable}


def _probe_seconds(model: nn.Module, example: torch.Tensor) -> float:
    """Seconds to copy ``model`` and run it once (after a first run that warms caches up); infinite when
    it fails."""
    try:
        with torch.no_grad():
            model(example)
            start = time.perf_counter()
            copy.deepcopy(model)(example)
            return time.perf_counter() - start
    except Exception:  # noqa: BLE001 - any op without a meta kernel
        return float("inf")


@dataclasses.dataclass(frozen=True)
class GlobalCut:
    """What one global structured run (one importance, one MAC target) left in each layer."""

    ratios: dict[str, float]  # parameter name -> fraction of its output channels removed
    macs_reduction: float  # achieved: 1 - MACs after / MACs before
    channel_ratio: float  # Torch-Pruning's global pruning_ratio that achieved it


def global_cut(blueprint: Blueprint, macs_reduction: float, scores: GroupScores, *, round_to: int = 8,
               tolerance: float = 0.02, steps: int = 10) -> GlobalCut:
    """Torch-Pruning's global pruning (one importance threshold across layers) at the channel ratio that
    removes ``macs_reduction`` of the MACs (bisection, within ``tolerance``): the per-layer ratios it
    chose are Phase 1's global guidance, as a global magnitude run is for unstructured pruning."""
    if not 0 < macs_reduction < 1:
        raise CutError(f"a MAC reduction must be in (0, 1), got {macs_reduction:g}")

    def run(ratio):
        result = blueprint.global_run(ratio, scores, round_to)
        return result.macs_reduction, result

    # bisection, not false position: at high channel ratios Torch-Pruning's global runs can remove less
    # again (layers hit their limits), so the ends of the bracket say nothing
    return bisect_to(macs_reduction, run, 0.0, MAX_GLOBAL_RATIO, steps=steps, tolerance=tolerance)
