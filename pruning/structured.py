"""Structured Mix-and-Match, phases 1 and 2: per-layer channel-ratio ranges from global structured
runs, and strategies inside them, shifted to a common MAC reduction.

The method of the unstructured path applied to channel groups. Phase 1: Torch-Pruning's
global pruning (one importance threshold across layers, pruning/cut.global_cut) at several
MAC-reduction targets with each importance tells how much of each layer's output channels
the global criterion would remove; the min and max over those runs are the layer's range,
clamped by the model's rule table (the same tables as unstructured pruning: the stem and
downsample convs get tighter caps; the classifier is never cut). Phase 2: the table's
strategies pick a ratio per layer inside its range (pruning/strategies.py, unchanged);
``shift_to_macs`` moves them all by one offset to a common MAC reduction, as
``--sparsity`` does for zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from mixprune.errors import CutError
from mixprune.models.heads import head_counts, max_head_ratio, token_width_layers

from .cut import Blueprint, GroupScores, channel_counts, global_cut, macs_and_params, solve_for
from .ranges import RuleTable, layer_ranges
from .roles import Layer, discover_layers
from .scores import STRUCTURED_BASELINES

MAX_CHANNEL_RATIO = 0.9  # a strategy keeps at least a tenth of any layer's channels


def cuttable_layers(model: nn.Module) -> list[Layer]:
    """Layers whose output channels a structured cut may remove: every conv / linear but the classifier
    and a transformer's token width (mixprune.models.heads)."""
    kept = token_width_layers(model)
    return [layer for layer in discover_layers(model) if layer.role != "classifier" and layer.name not in kept]


def structured_ranges(blueprint: Blueprint, scores: dict[str, GroupScores], layers: list[Layer], table: RuleTable,
                      *, targets: tuple[float, ...] = (0.3, 0.5, 0.7), round_to: int = 8) -> tuple[dict, dict, dict]:
    """Phase 1: ({name: range record as in ranges.json}, {run label: per-layer ratios},
    {run label: achieved MAC reduction}), one global run per importance in ``scores`` and target."""
    runs, achieved = {}, {}
    for importance, group_scores in scores.items():
        for target in targets:
            run = global_cut(blueprint, target, group_scores, round_to=round_to)
            key = f"{importance}@{target:.2f}"
            runs[key], achieved[key] = run.ratios, round(run.macs_reduction, 4)
    return layer_ranges(layers, runs, table), runs, achieved


def within_caps(blueprint: Blueprint, ratios: dict[str, float], round_to: int) -> dict[str, float]:
    """``ratios`` clipped to [0, MAX_CHANNEL_RATIO] and so that every layer keeps at least one multiple
    of ``round_to`` channels (an attention layer: one head)."""
    counts, heads = blueprint.counts, blueprint.heads
    return {n: min(max(r, 0.0), MAX_CHANNEL_RATIO,
                   max_head_ratio(heads[n]) if n in heads else max(0.0, (counts[n] - round_to) / counts[n]))
            for n, r in ratios.items()}


def cut_ratios(ratios: dict[str, float]) -> dict[str, float]:
    """The layers a cut touches: Torch-Pruning is given only ratios above zero."""
    return {n: r for n, r in ratios.items() if r > 0}


def macs_reduction(blueprint: Blueprint, ratios: dict[str, float], round_to: int) -> float:
    """The share of the MACs a per-layer cut by ``ratios`` removes."""
    return blueprint.macs_reduction(blueprint.cut(ratios=cut_ratios(ratios), round_to=round_to))


def shift_to_macs(blueprint: Blueprint, ratios: dict[str, float], target: float, *, round_to: int = 8,
                  tolerance: float = 0.01, steps: int = 14) -> dict:
    """Add one common offset to every channel ratio so the cut removes ``target`` of the MACs,
    keeping the strategy's allocation (bisection on the offset), within the caps of ``within_caps``."""
    if not 0 < target < 1:
        raise CutError(f"a MAC reduction must be in (0, 1), got {target:g}")

    def shifted(offset):
        return within_caps(blueprint, {n: r + offset for n, r in ratios.items()}, round_to)

    reach = macs_reduction(blueprint, shifted(1.0), round_to)
    if reach < target:
        raise CutError(f"a MAC reduction of {target:g} is out of reach for {blueprint.label}: with every layer cut "
                       f"by {MAX_CHANNEL_RATIO:.0%} of its channels (or down to {round_to}) the MACs drop by "
                       f"{reach:.3f}")
    # at offset -1 every ratio in [0, 1] is clipped to 0: nothing is cut
    offset = solve_for(target, lambda x: (macs_reduction(blueprint, shifted(x), round_to), x), (-1.0, (0.0, -1.0)),
                       (1.0, (reach, 1.0)), steps=steps, tolerance=tolerance)
    return shifted(offset)


def baseline_ratios(blueprint: Blueprint, method: str, target: float, scores: dict[str, GroupScores], *,
                    round_to: int = 8) -> dict[str, float]:
    """The paper's comparison, structured: per-layer channel ratios of Torch-Pruning's global magnitude
    (``mag``) or global Taylor (``taylor``) run, or one uniform ratio for every layer (``uniform``),
    at the MAC reduction ``target``."""
    baseline = STRUCTURED_BASELINES.get(method)
    if baseline.strategy == "uniform":
        return shift_to_macs(blueprint, {n: 0.0 for n in blueprint.cuttable}, target, round_to=round_to)
    return global_cut(blueprint, target, scores[baseline.importance], round_to=round_to).ratios


def describe_cut(blueprint: Blueprint, cut: nn.Module, example: torch.Tensor) -> dict:
    """strategy.json's record of a cut of the blueprint's model: output channels (and attention heads)
    per layer before and after, parameters and MACs."""
    after, heads_after = channel_counts(cut), head_counts(cut)
    macs_after, params_after = macs_and_params(cut, example)
    heads = {"heads": {name: {"before": blueprint.heads[name], "after": heads_after[name]} for name in heads_after}} \
        if heads_after else {}
    return {"channels": {name: {"before": blueprint.counts[name], "after": after[name]} for name in after}, **heads,
            "params": {"before": blueprint.params, "after": params_after},
            "macs": {"before": blueprint.macs, "after": macs_after},
            "macs_reduction": round(1 - macs_after / blueprint.macs, 6),
            "params_reduction": round(1 - params_after / blueprint.params, 6)}
