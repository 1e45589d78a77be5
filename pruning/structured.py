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

from .cut import bisect_to, channel_counts, cut_model, global_cut, macs_and_params
from .ranges import RuleTable, layer_ranges
from .roles import Layer, discover_layers

MAX_CHANNEL_RATIO = 0.9  # a shifted strategy keeps at least a tenth of any layer's channels


def cuttable_layers(model: nn.Module) -> list[Layer]:
    """Layers whose output channels a structured cut may remove: every conv / linear but the classifier."""
    return [layer for layer in discover_layers(model) if layer.role != "classifier"]


def structured_ranges(model: nn.Module, example: torch.Tensor, table: RuleTable, *,
                      importances: tuple[str, ...] = ("magnitude", "gradient", "product"),
                      targets: tuple[float, ...] = (0.3, 0.5, 0.7), round_to: int = 8,
                      label: str = "the model") -> tuple[dict, dict]:
    """Phase 1: ({name: range record as in ranges.json}, {run label: achieved MAC reduction}).

    For ``product``, gradients must be in ``model``'s ``.grad`` already (one calibration pass).
    """
    runs, achieved = {}, {}
    for importance in importances:
        for target in targets:
            run = global_cut(model, example, target, importance=importance, round_to=round_to, label=label)
            key = f"{importance}@{target:.2f}"
            runs[key], achieved[key] = run.ratios, round(run.macs_reduction, 4)
    return layer_ranges(cuttable_layers(model), runs, table), achieved


def shift_to_macs(model: nn.Module, example: torch.Tensor, ratios: dict[str, float], target: float, *,
                  round_to: int = 8, tolerance: float = 0.01, steps: int = 14, label: str = "the model") -> dict:
    """Add one common offset to every channel ratio so the cut removes ``target`` of the MACs,
    keeping the strategy's allocation (bisection on the offset; each step cuts a copy and
    counts its MACs). Ratios are clipped to [0, MAX_CHANNEL_RATIO] and so that every layer
    keeps at least one multiple of ``round_to`` channels."""
    if not 0 < target < 1:
        raise CutError(f"a MAC reduction must be in (0, 1), got {target:g}")
    base, _ = macs_and_params(model, example)
    counts = channel_counts(model)
    caps = {n: min(MAX_CHANNEL_RATIO, max(0.0, (counts[n] - round_to) / counts[n])) for n in ratios}

    def shifted(offset):
        return {n: min(max(r + offset, 0.0), caps[n]) for n, r in ratios.items()}

    def reduction(offset):
        cut, _ = cut_model(model, example, {n: r for n, r in shifted(offset).items() if r > 0},
                           round_to=round_to, label=label)
        return 1 - macs_and_params(cut, example)[0] / base

    reach = reduction(1.0)
    if reach < target:
        raise CutError(f"a MAC reduction of {target:g} is out of reach for {label}: with every layer cut by "
                       f"{MAX_CHANNEL_RATIO:.0%} of its channels (or down to {round_to}) the MACs drop by {reach:.3f}")
    offset = bisect_to(target, lambda x: (reduction(x), x), -1.0, 1.0, steps=steps, tolerance=tolerance)
    return shifted(offset)


def matched_baselines(model: nn.Module, example: torch.Tensor, macs_reduction: float, *, round_to: int = 8,
                      label: str = "the model") -> dict[str, dict[str, float]]:
    """The paper's comparison, structured: per-layer channel ratios of Torch-Pruning's global magnitude
    and global Taylor runs and of one uniform ratio for every layer, each at ``macs_reduction``.
    For Taylor, gradients must be in ``model``'s ``.grad`` already."""
    baselines = {name: global_cut(model, example, macs_reduction, importance=importance, round_to=round_to,
                                  label=label).ratios
                 for name, importance in (("mag", "magnitude"), ("taylor", "product"))}
    flat = {layer.name: 0.0 for layer in cuttable_layers(model)}
    baselines["uniform"] = shift_to_macs(model, example, flat, macs_reduction, round_to=round_to, label=label)
    return baselines


def describe_cut(model: nn.Module, cut: nn.Module, example: torch.Tensor) -> dict:
    """strategy.json's record of a cut: output channels per layer before and after, parameters and MACs."""
    before, after = channel_counts(model), channel_counts(cut)
    (macs_before, params_before), (macs_after, params_after) = macs_and_params(model, example), \
        macs_and_params(cut, example)
    return {"channels": {name: {"before": before[name], "after": after[name]} for name in before},
            "params": {"before": params_before, "after": params_after},
            "macs": {"before": macs_before, "after": macs_after},
            "macs_reduction": round(1 - macs_after / macs_before, 6),
            "params_reduction": round(1 - params_after / params_before, 6)}
