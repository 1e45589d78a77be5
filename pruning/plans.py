"""The prune stage's plans: what a candidate is before it is made (its id, its axes, its record), one
protocol for every kind, and what a candidate task returns to the driver (``Made``).

A plan of the unstructured family is made by masking (``score`` ranks the weights, ``masks`` picks
them); one of the structured family by cutting (``importance`` ranks the channel groups, ``ratios``
says how many go). Either way the task returns ``Made`` and the driver writes it
(pruning/tasks.store_result).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Protocol

from mixprune.candidates import BASELINE, MIXMATCH, STRUCTURED, UNSTRUCTURED, Axes, CandidateId

from . import masks as masklib
from .scores import BASELINES, SIGNALS, STRUCTURED_BASELINES, ScoreFn
from .strategies import rounded

# strategy.json's key for a shift of every strategy to a common target, and a baseline's own target
TARGET_KEYS = {UNSTRUCTURED: "target_sparsity", STRUCTURED: "target_macs_reduction"}


class Plan(Protocol):
    """What every plan says: its id, its axes (method, family; every plan is fp32), the matched
    baselines' ids (none for a baseline), and strategy.json's keys it knows given the per-layer
    ratios the made candidate has."""

    @property
    def cid(self) -> str: ...

    @property
    def axes(self) -> Axes: ...

    @property
    def baselines(self) -> tuple[str, ...]: ...

    def record(self, layers: dict[str, float]) -> dict: ...


@dataclasses.dataclass(frozen=True)
class StrategyPlan:
    """One Mix-and-Match strategy of one signal: a ratio per layer (unstructured: of its weights
    zeroed, ranked within the layer; structured: of its output channels cut)."""
    family: str
    signal: str
    strategy: str
    ratios: dict[str, float]
    sampled: dict[str, float]  # the strategy's ratios before any shift to a common target
    target: float | None  # --sparsity / --macs-reduction, when the ratios were shifted to it
    baselines: tuple[str, ...]  # the matched baselines' ids

    @property
    def cid(self) -> str:
        return str(CandidateId.mixmatch(self.family, self.signal, self.strategy))

    @property
    def axes(self) -> Axes:
        return Axes(MIXMATCH, self.family)

    @property
    def score(self) -> ScoreFn:
        return SIGNALS.get(self.signal)

    @property
    def importance(self) -> str:
        return self.signal

    def masks(self, scores: dict) -> dict:
        return masklib.layer_masks(scores, self.ratios)

    def record(self, layers: dict[str, float]) -> dict:
        shifted = {} if self.target is None else {"sampled": rounded(self.sampled),
                                                  TARGET_KEYS[self.family]: self.target}
        return {"signal": self.signal, "strategy": self.strategy, "layers": rounded(self.ratios), **shifted,
                "baselines": list(self.baselines),
                "style": SIGNALS.get(self.signal).style.record(structured=self.family == STRUCTURED)}


@dataclasses.dataclass(frozen=True)
class MatchedBaseline:
    """What the baselines of both families share: a method at the target (a global sparsity, or a MAC
    reduction) of the Mix-and-Match candidates it is matched to; it has no baselines of its own."""
    method: str
    target: float
    baselines = ()
    axes: typing.ClassVar[Axes]

    @property
    def cid(self) -> str:
        return str(CandidateId.baseline(self.axes.family, self.method, self.target))


@dataclasses.dataclass(frozen=True)
class BaselinePlan(MatchedBaseline):
    """An unstructured baseline: one global threshold, or the same ratio in every layer."""
    axes = Axes(BASELINE, UNSTRUCTURED)

    @property
    def score(self) -> ScoreFn:
        return BASELINES.get(self.method).score

    @property
    def strategy(self) -> str:
        return BASELINES.get(self.method).strategy

    def masks(self, scores: dict) -> dict:
        if self.strategy == "global":
            return masklib.global_masks(scores, self.target)
        return masklib.layer_masks(scores, {name: self.target for name in scores})

    def record(self, layers: dict[str, float]) -> dict:
        style = BASELINES.get(self.method).style.record()
        if self.strategy == "global":  # the ratio the threshold left in each layer
            return {"signal": self.method, "strategy": self.strategy, "layers": rounded(layers),
                    "global_target": self.target, "style": style}
        return {"signal": self.method, "strategy": self.strategy,
                "layers": rounded({name: self.target for name in layers}), "style": style}


@dataclasses.dataclass(frozen=True)
class CutBaselinePlan(MatchedBaseline):
    """A structured baseline (Torch-Pruning's global magnitude or Taylor, or uniform): its channel ratios."""
    ratios: dict[str, float]
    axes = Axes(BASELINE, STRUCTURED)

    @property
    def importance(self) -> str:
        return STRUCTURED_BASELINES.get(self.method).importance

    def record(self, layers: dict[str, float]) -> dict:
        baseline = STRUCTURED_BASELINES.get(self.method)
        return {"signal": self.method, "strategy": baseline.strategy, "layers": rounded(self.ratios),
                "global_target_macs_reduction": self.target, "style": baseline.style.record(structured=True)}


def strategy_record(plan: Plan, layers: dict[str, float], global_sparsity: float, measured: dict[str, float],
                    rule_table: str, **more) -> dict:
    """strategy.json of a made candidate, for every plan kind: its id, axes and family (``mode``), what the
    plan knows, the share of the prunable weights it removed and per layer, then ``more``."""
    return {"cid": plan.cid, **plan.axes.record(), "mode": plan.axes.family, **plan.record(layers),
            "global_sparsity": round(global_sparsity, 6), "measured": rounded(measured), "rule_table": rule_table,
            **more}


@dataclasses.dataclass(frozen=True)
class Made:
    """What a candidate task returns to the driver: its weights as its folder stores them
    (``masked.MaskedWeights``, or ``runs.CutWeights``), strategy.json, and eval.json but for the weights
    digest, which the driver's write gives."""
    weights: object
    strategy: dict
    evaluation: dict
