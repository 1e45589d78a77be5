"""Structured Mix-and-Match phases 1 and 2 on a tiny resnet: ranges from global structured runs,
strategies inside them, and the shift to a common MAC reduction."""

from __future__ import annotations

import pytest
import torch

from mixprune.errors import CutError
from mixprune.models import build_model
from mixprune.pruning.cut import Blueprint, cut_model, macs_and_params, score_groups
from mixprune.pruning.ranges import get_table
from mixprune.pruning.strategies import STRATEGIES
from mixprune.pruning.cut import IMPORTANCES
from mixprune.pruning.structured import cuttable_layers, shift_to_macs, structured_ranges

from tests.exporter.conftest import SPECS


@pytest.fixture(scope="module")
def resnet():
    spec = SPECS["resnet"]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    model(x).logsumexp(dim=1).sum().backward()  # gradients for the product (Taylor) importance
    scores = {imp: score_groups(model, x, imp) for imp in IMPORTANCES.names()}
    return spec, model, x, Blueprint(model, x, spec.name), scores


def test_ranges_come_from_global_runs_and_the_rule_table(resnet):
    spec, model, x, blueprint, scores = resnet
    table = get_table(spec.name)
    ranges, runs, achieved = structured_ranges(blueprint, scores, cuttable_layers(model), table, targets=(0.3, 0.6),
                                               round_to=2)
    assert set(runs) == set(achieved)
    assert set(achieved) == {f"{imp}@{t}" for imp in ("magnitude", "gradient", "product") for t in ("0.30", "0.60")}
    assert all(abs(achieved[k] - float(k.split("@")[1])) <= 0.05 for k in achieved)
    assert "fc.weight" not in ranges and set(ranges) == {layer.name for layer in cuttable_layers(model)}
    for name, r in ranges.items():
        assert 0 <= r["min"] <= r["max"] < 1, name
        assert r["global_min"] <= r["global_max"]
    stem = next(r for r in ranges.values() if r["role"] == "stem")
    assert stem["max"] <= 0.30  # generic.toml's stem cap clamps channel ratios too
    downsample = [r for r in ranges.values() if r["role"] == "downsample"]
    assert downsample and all(r["max"] <= 0.20 for r in downsample)  # resnet.toml
    assert any(r["max"] > r["min"] for r in ranges.values())  # the runs disagree somewhere: a real range


def test_strategies_shifted_to_a_common_mac_reduction(resnet):
    spec, model, x, blueprint, scores = resnet
    layers = cuttable_layers(model)
    ranges, _, _ = structured_ranges(blueprint, scores, layers, get_table(spec.name), targets=(0.3, 0.6), round_to=2)
    base, _ = macs_and_params(model, x)
    reached = {}
    for strategy, strategy_signal in (("min", "magnitude"), ("max", "gradient"), ("early_light", "product")):
        sampled = STRATEGIES.get(strategy)(layers, ranges)
        shifted = shift_to_macs(blueprint, sampled, 0.5, round_to=2, tolerance=0.02)
        cut, _ = cut_model(model, x, {n: r for n, r in shifted.items() if r > 0}, scores[strategy_signal], round_to=2)
        reached[strategy] = 1 - macs_and_params(cut, x)[0] / base
        assert abs(reached[strategy] - 0.5) <= 0.02, strategy
        order = sorted(sampled, key=sampled.get)  # one offset for all: the allocation's order is kept
        assert all(shifted[a] <= shifted[b] + 1e-9 for a, b in zip(order, order[1:])), strategy


@pytest.mark.parametrize("target, message", [(0.0, r"in \(0, 1\)"), (1.0, r"in \(0, 1\)"), (0.999, "out of reach")])
def test_mac_reduction_out_of_bounds_or_reach(resnet, target, message):
    blueprint = resnet[3]
    with pytest.raises(CutError, match=message):
        shift_to_macs(blueprint, {"layer1.0.conv1.weight": 0.1}, target, round_to=2)


def test_matched_baselines_reach_the_same_macs_and_a_cut_is_described(resnet):
    from mixprune.pruning.scores import STRUCTURED_BASELINES
    from mixprune.pruning.structured import baseline_ratios, describe_cut

    spec, model, x, blueprint, scores = resnet
    baselines = {method: baseline_ratios(blueprint, method, 0.5, scores, round_to=2) for method in STRUCTURED_BASELINES.names()}
    uniform = {r for n, r in baselines["uniform"].items() if r > 0}
    assert len({round(r, 6) for r in uniform}) <= 2  # one ratio for every layer (some clipped to keep channels)
    assert baselines["mag"] != baselines["taylor"]  # two importances, two allocations
    for name, ratios in baselines.items():
        cut, _ = cut_model(model, x, {n: r for n, r in ratios.items() if r > 0},
                           scores[STRUCTURED_BASELINES.get(name).importance], round_to=2)
        described = describe_cut(blueprint, cut, x)
        assert abs(described["macs_reduction"] - 0.5) <= 0.06, name
        assert described["params"]["after"] < described["params"]["before"]
        assert described["channels"]["conv1.weight"]["before"] >= described["channels"]["conv1.weight"]["after"]
        assert described["channels"]["fc.weight"] == {"before": 10, "after": 10}  # the classes stay
