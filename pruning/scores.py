"""Signals and baselines: how to rank each weight (lowest score = pruned first), by name.

The one source of signal and baseline names: the run config, the prune stage, the range finding and
the structured cuts all read these registries, and each piece is registered once with everything it
brings. A signal (``Signal``) carries its per-weight score, its structured group importance (a
Torch-Pruning ``Importance``, made when asked for) and its plot style; a baseline its score (or, structured, the
signal whose importance ranks its channels), how it spreads sparsity, and its style.

Every score is a cheap function of the weight ``w``, the accumulated gradient ``g`` and the
Hessian-gradient product ``Hg`` that one calibration pass collects (``signals.calibrate``). Only tensor
methods are used and Torch-Pruning is imported only when an importance is made, so this module imports
no torch and the command line can list the names cheaply. The styles reach the report through the
records (strategy.json ``style``): the report reads no pruning code.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from mixprune.registry import Registry, Style

ScoreFn = Callable[..., object]  # (w, g, hg) -> a tensor shaped like w
ImportanceFactory = Callable[[], object]  # () -> a torch_pruning.importance.Importance (group -> channel scores)


@dataclasses.dataclass(frozen=True)
class Signal:
    """A Mix-and-Match signal: ranked within each layer (unstructured), or per channel group (structured)."""

    score: ScoreFn
    importance: ImportanceFactory  # the structured group importance, made lazily (Torch-Pruning imported then)
    style: Style  # structured_marker: the structured family's series

    def __call__(self, w, g, hg):
        return self.score(w, g, hg)


SIGNALS: Registry[Signal] = Registry("signal")


def magnitude(w, g, hg):
    return w.abs()


def gradient(w, g, hg):
    return g.abs()


def product(w, g, hg):
    return (w * g).abs()


def grasp(w, g, hg):
    # GraSP removes the weights with the largest -w*Hg (their removal preserves gradient
    # flow best), i.e. keeps the largest w*Hg: with "lowest is pruned" that is w*Hg.
    return w * hg


def magnitude_importance():
    """L2 of each channel group's weights (Torch-Pruning's group magnitude importance)."""
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


def gradient_importance():
    """L1 of each channel group's gradients dL/dw (pruning/importance.py GroupGradientImportance); the
    gradients must be in the model's ``.grad``."""
    from .importance import gradient_importance as make

    return make()


def taylor_importance():
    """|w * dL/dw| per channel group (Torch-Pruning's group Taylor importance); needs ``.grad`` filled."""
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()


SIGNALS.register("magnitude")(Signal(magnitude, magnitude_importance, Style("o", "#9467bd", structured_marker="h")))
SIGNALS.register("gradient")(Signal(gradient, gradient_importance, Style("s", "#d62728", structured_marker="p")))
SIGNALS.register("product")(Signal(product, taylor_importance, Style("^", "#8c564b", structured_marker="v")))


@dataclasses.dataclass(frozen=True)
class Baseline:
    score: ScoreFn
    strategy: str  # "global": one threshold over all layers; "uniform": the same ratio in every layer
    style: Style


BASELINES: Registry[Baseline] = Registry("baseline")
BASELINES.register("mag")(Baseline(magnitude, "global", Style("x", "#ff7f0e")))
BASELINES.register("snip")(Baseline(product, "global", Style("+", "#2ca02c")))  # SNIP's connection sensitivity |w * dL/dw|
BASELINES.register("grasp")(Baseline(grasp, "global", Style("1", "#1f77b4")))
BASELINES.register("uniform")(Baseline(magnitude, "uniform", Style("2", "#7f7f7f")))  # magnitude within each layer


def global_methods() -> tuple[str, ...]:
    """The global baselines, whose runs at the range-finding targets give each layer its range (Phase 1)."""
    return tuple(name for name in BASELINES.names() if BASELINES.get(name).strategy == "global")


@dataclasses.dataclass(frozen=True)
class StructuredBaseline:
    importance: str  # the signal whose group importance ranks the channels (SIGNALS)
    strategy: str  # "global": Torch-Pruning's global ranking; "uniform": the same channel ratio in every layer
    style: Style


# Structured mode's matched baselines (pruning/structured.py), at the MACs of the candidates they match
STRUCTURED_BASELINES: Registry[StructuredBaseline] = Registry("structured baseline")
STRUCTURED_BASELINES.register("mag")(StructuredBaseline("magnitude", "global", Style("X", "#ff7f0e")))
STRUCTURED_BASELINES.register("taylor")(StructuredBaseline("product", "global", Style("*", "#e377c2")))  # |w * dL/dw|
STRUCTURED_BASELINES.register("uniform")(StructuredBaseline("magnitude", "uniform", Style("3", "#7f7f7f")))
