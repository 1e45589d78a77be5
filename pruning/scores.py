"""Importance scores: how to rank each weight (lowest score = pruned first), by name.

The one source of signal and baseline names: the run config, the prune stage and the
range finding all read these registries. Every score is a cheap function of the weight
``w``, the accumulated gradient ``g`` and the Hessian-gradient product ``Hg`` that one
calibration pass collects (``signals.calibrate``). Only tensor methods are used, so this
module imports no torch and the command line can list the names cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from mixprune.registry import Registry

ScoreFn = Callable[..., object]  # (w, g, hg) -> a tensor shaped like w
SIGNALS: Registry[ScoreFn] = Registry("signal")  # Mix-and-Match: ranked within each layer


@dataclasses.dataclass(frozen=True)
class Baseline:
    score: ScoreFn
    strategy: str  # "global": one threshold over all layers; "uniform": the same ratio in every layer


BASELINES: Registry[Baseline] = Registry("baseline")


@SIGNALS.register("magnitude")
def magnitude(w, g, hg):
    return w.abs()


@SIGNALS.register("gradient")
def gradient(w, g, hg):
    return g.abs()


@SIGNALS.register("product")
def product(w, g, hg):
    return (w * g).abs()


def grasp(w, g, hg):
    # GraSP removes the weights with the largest -w*Hg (their removal preserves gradient
    # flow best), i.e. keeps the largest w*Hg: with "lowest is pruned" that is w*Hg.
    return w * hg


BASELINES.register("mag")(Baseline(magnitude, "global"))
BASELINES.register("snip")(Baseline(product, "global"))  # SNIP's connection sensitivity |w * dL/dw|
BASELINES.register("grasp")(Baseline(grasp, "global"))
BASELINES.register("uniform")(Baseline(magnitude, "uniform"))  # magnitude within each layer


def global_methods() -> tuple[str, ...]:
    """The global baselines, whose runs at the range-finding targets give each layer its range (Phase 1)."""
    return tuple(name for name in BASELINES.names() if BASELINES.get(name).strategy == "global")


@dataclasses.dataclass(frozen=True)
class StructuredBaseline:
    importance: str  # the group importance that ranks channels (pruning/cut.py IMPORTANCES)
    strategy: str  # "global": Torch-Pruning's global ranking; "uniform": the same channel ratio in every layer


# Structured mode's matched baselines (pruning/structured.py), at the MACs of the candidates they match
STRUCTURED_BASELINES: Registry[StructuredBaseline] = Registry("structured baseline")
STRUCTURED_BASELINES.register("mag")(StructuredBaseline("magnitude", "global"))
STRUCTURED_BASELINES.register("taylor")(StructuredBaseline("product", "global"))  # |w * dL/dw| per group
STRUCTURED_BASELINES.register("uniform")(StructuredBaseline("magnitude", "uniform"))
