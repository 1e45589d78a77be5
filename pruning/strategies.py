"""Phase 2: strategies decide how much to prune per layer, inside its [min, max] range.

Each strategy maps (layers, ranges) to a ratio per parameter name. Which ten a model gets
is data: the ``strategies`` list of its rule table. ``balanced`` and ``p50`` coincide, so
the ten are made distinct with ``early_light`` (earliest stage at min, the rest balanced).
"""

from __future__ import annotations

from typing import Callable

from mixprune.config import MAX_SHIFTED_RATIO  # the 98% cap; config refuses a --sparsity above it
from mixprune.errors import ConfigError
from mixprune.registry import Registry

from .masks import achieved_sparsity
from .roles import Layer


def rounded(ratios: dict[str, float]) -> dict[str, float]:
    """Per-layer ratios as records keep them (6 decimals)."""
    return {name: round(v, 6) for name, v in ratios.items()}


StrategyFn = Callable[[list[Layer], dict], dict[str, float]]
STRATEGIES: Registry[StrategyFn] = Registry("strategy")


def _at(ranges: dict, name: str, alpha: float) -> float:
    lo, hi = ranges[name]["min"], ranges[name]["max"]
    return lo + alpha * (hi - lo)


def _percentile(alpha: float) -> StrategyFn:
    return lambda layers, ranges: {layer.name: _at(ranges, layer.name, alpha) for layer in layers}


def _max_where(predicate: Callable[[Layer, list[Layer]], bool], rest: float) -> StrategyFn:
    """Layers matching ``predicate`` at their max, the rest at percentile ``rest``."""
    def strategy(layers, ranges):
        return {layer.name: _at(ranges, layer.name, 1.0 if predicate(layer, layers) else rest) for layer in layers}
    return strategy


STRATEGIES.register("min")(_percentile(0.0))
STRATEGIES.register("max")(_percentile(1.0))
STRATEGIES.register("balanced")(_percentile(0.5))
for _alpha in (0.3, 0.7, 0.9):
    STRATEGIES.register(f"p{int(_alpha * 100)}")(_percentile(_alpha))


@STRATEGIES.register("proportional")
def proportional(layers, ranges):
    """Graduated by size: beta = min(1, 0.1 * params / mean params), big layers pruned harder."""
    mean = sum(layer.params for layer in layers) / len(layers)
    return {layer.name: _at(ranges, layer.name, min(1.0, 0.1 * layer.params / mean)) for layer in layers}


def _last_stage(layer: Layer, layers: list[Layer]) -> bool:
    stages = [l.stage for l in layers if l.stage is not None]
    if stages:
        return layer.stage == max(stages)
    return layer.position >= 0.75


def _first_stage(layer: Layer, layers: list[Layer]) -> bool:
    stages = [l.stage for l in layers if l.stage is not None]
    if stages:
        return layer.stage == min(stages) or (layer.stage is None and layer.position < 0.5)
    return layer.position < 0.25


STRATEGIES.register("classifier_heavy")(_max_where(lambda layer, _: layer.role == "classifier", rest=0.0))
STRATEGIES.register("late_stage")(_max_where(_last_stage, rest=0.5))
STRATEGIES.register("mlp_heavy")(_max_where(lambda layer, _: layer.role == "mlp", rest=0.5))
STRATEGIES.register("attention_aggressive")(
    _max_where(lambda layer, _: layer.role in ("attention_qkv", "attention_proj"), rest=0.5))


@STRATEGIES.register("early_light")
def early_light(layers, ranges):
    """The stem and the earliest stage at their min (they see raw features), the rest balanced."""
    return {layer.name: _at(ranges, layer.name, 0.0 if _first_stage(layer, layers) else 0.5) for layer in layers}


def shift_to_sparsity(ratios: dict[str, float], sizes: dict[str, int], target: float,
                      frozen: set[str]) -> dict[str, float]:
    """Add one common offset to every ratio so the global sparsity hits ``target``.

    Ratios are clipped to [0, 0.98]; ``frozen`` layers (ranges pinned at 0, e.g.
    normalization) keep their ratio. The offset is found by bisection, which keeps the
    strategy's allocation and lands within one weight of the target.
    """
    def shifted(offset):
        return {name: ratio if name in frozen else min(max(ratio + offset, 0.0), MAX_SHIFTED_RATIO)
                for name, ratio in ratios.items()}

    lo, hi = -1.0, 1.0
    if achieved_sparsity(shifted(hi), sizes) < target:
        raise ConfigError(f"--sparsity {target} is out of reach: with every layer at most "
                          f"{MAX_SHIFTED_RATIO:.0%} the model reaches {achieved_sparsity(shifted(hi), sizes):.4f}")
    for _ in range(60):
        mid = (lo + hi) / 2
        if achieved_sparsity(shifted(mid), sizes) < target:
            lo = mid
        else:
            hi = mid
    return shifted(hi)
