"""Structured Mix-and-Match phases 1 and 2 on a tiny resnet: ranges from global structured runs,
strategies inside them, and the shift to a common MAC reduction."""

from __future__ import annotations

import pytest
import torch

from mixprune.errors import CutError
from mixprune.models import build_model
from mixprune.pruning.cut import cut_model, macs_and_params
from mixprune.pruning.ranges import get_table
from mixprune.pruning.strategies import STRATEGIES
from mixprune.pruning.structured import cuttable_layers, shift_to_macs, structured_ranges

from tests.exporter.conftest import SPECS


@pytest.fixture(scope="module")
def resnet():
    spec = SPECS["resnet"]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    model(x).logsumexp(dim=1).sum().backward()  # gradients for the product (Taylor) importance
    return spec, model, x


def test_ranges_come_from_global_runs_and_the_rule_table(resnet):
    spec, model, x = resnet
    table = get_table(spec.name)
    ranges, achieved = structured_ranges(model, x, table, targets=(0.3, 0.6), round_to=2, label=spec.name)
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
    spec, model, x = resnet
    ranges, _ = structured_ranges(model, x, get_table(spec.name), targets=(0.3, 0.6), round_to=2)
    layers = cuttable_layers(model)
    base, _ = macs_and_params(model, x)
    reached = {}
    for strategy in ("min", "max", "early_light"):
        sampled = STRATEGIES.get(strategy)(layers, ranges)
        shifted = shift_to_macs(model, x, sampled, 0.5, round_to=2, tolerance=0.02)
        cut, _ = cut_model(model, x, {n: r for n, r in shifted.items() if r > 0}, round_to=2)
        reached[strategy] = 1 - macs_and_params(cut, x)[0] / base
        assert abs(reached[strategy] - 0.5) <= 0.02, strategy
        order = sorted(sampled, key=sampled.get)  # one offset for all: the allocation's order is kept
        assert all(shifted[a] <= shifted[b] + 1e-9 for a, b in zip(order, order[1:])), strategy


@pytest.mark.parametrize("target, message", [(0.0, r"in \(0, 1\)"), (1.0, r"in \(0, 1\)"), (0.999, "out of reach")])
def test_mac_reduction_out_of_bounds_or_reach(resnet, target, message):
    _, model, x = resnet
    with pytest.raises(CutError, match=message):
        shift_to_macs(model, x, {"layer1.0.conv1.weight": 0.1}, target, round_to=2)


def test_matched_baselines_reach_the_same_macs_and_a_cut_is_described(resnet):
    from mixprune.pruning.structured import describe_cut, matched_baselines

    spec, model, x = resnet
    baselines = matched_baselines(model, x, 0.5, round_to=2)
    assert set(baselines) == {"mag", "taylor", "uniform"}
    uniform = {r for n, r in baselines["uniform"].items() if r > 0}
    assert len({round(r, 6) for r in uniform}) <= 2  # one ratio for every layer (some clipped to keep channels)
    for name, ratios in baselines.items():
        cut, _ = cut_model(model, x, {n: r for n, r in ratios.items() if r > 0}, round_to=2)
        described = describe_cut(model, cut, x)
        assert abs(described["macs_reduction"] - 0.5) <= 0.06, name
        assert described["params"]["after"] < described["params"]["before"]
        assert described["channels"]["conv1.weight"]["before"] >= described["channels"]["conv1.weight"]["after"]
        assert described["channels"]["fc.weight"] == {"before": 10, "after": 10}  # the classes stay
