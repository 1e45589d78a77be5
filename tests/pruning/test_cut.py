"""Structured cuts with Torch-Pruning: smaller models that replay from a record and safetensors weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixprune.cuts import Cut, build_cut_model, replay_cut
from mixprune.errors import CheckpointError, CutError
from mixprune.models import build_model
from mixprune.pruning.cut import Blueprint, channel_counts, cut_model, score_groups

from tests.exporter.conftest import SPECS


def _model(family):
    spec = SPECS[family]
    torch.manual_seed(0)
    return spec, build_model(spec).eval(), torch.randn(2, spec.in_chans, spec.img_size, spec.img_size)


def _half_of_every_layer(model):
    head = next(n for n, m in model.named_modules() if m is model.get_classifier())
    return {name: 0.5 for name in channel_counts(model) if name != f"{head}.weight"}


@pytest.mark.parametrize("family", ["resnet", "mobilenet", "convnext"])
def test_cut_is_smaller_and_replays_from_its_record_and_weights(family, tmp_path):
    spec, model, x = _model(family)
    before = sum(p.numel() for p in model.parameters())
    reference = model(x)
    cut_net, cut = cut_model(model, x, _half_of_every_layer(model), score_groups(model, x, "magnitude"), round_to=4,
                             label=spec.name)
    assert torch.equal(model(x), reference)  # the original is left alone
    after = sum(p.numel() for p in cut_net.parameters())
    assert after < 0.45 * before  # half the channels: about a quarter of the weights where both sides are cut
    counts = channel_counts(cut_net)
    assert counts[next(iter(counts))] % 4 == 0 and cut_net(x).shape == reference.shape
    # saved as JSON + safetensors, replayed on a freshly built model: the same function
    (tmp_path / "cut.json").write_text(json.dumps(cut.to_dict()))
    save_file({k: v.contiguous() for k, v in cut_net.state_dict().items()}, tmp_path / "weights.safetensors")
    fresh = build_cut_model(spec, Cut.from_dict(json.loads((tmp_path / "cut.json").read_text())),
                            load_file(tmp_path / "weights.safetensors"), spec.name)
    assert torch.allclose(fresh(x), cut_net(x), atol=1e-6)


def test_gradient_and_product_importances_use_gradients(tmp_path):
    spec, model, x = _model("resnet")
    model(x).logsumexp(dim=1).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the stem: timm zero-initializes each block's last BN, so nothing reaches a block's first conv yet
    removed = {imp: cut_model(model, x, {"conv1.weight": 0.5}, score_groups(model, x, imp), round_to=1)[1]
               .groups[0].removed for imp in ("magnitude", "gradient", "product")}
    assert all(len(r) == channel_counts(model)["conv1.weight"] // 2 for r in removed.values())
    assert len(set(removed.values())) == 3  # three signals, three different choices of channels
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # scoring left the weights alone


@pytest.mark.parametrize("family", ["swin", "vit"])
def test_a_model_that_cannot_be_cut_is_one_clear_line(family):
    spec, model, x = _model(family)
    with pytest.raises(CutError, match="Torch-Pruning cannot cut") as info:
        cut_model(model, x, _half_of_every_layer(model), score_groups(model, x, "magnitude", label=spec.name),
                  round_to=4, label=spec.name)
    assert spec.name in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("ratios, round_to, message", [
    ({"layer1.0.conv1.weight": 1.0}, 8, "would remove them all"),
    ({"layer1.0.conv1.weight": 0.9}, 4, "fewer than one multiple of 4"),
    ({"layer1.0.conv1.weight": 0.5}, 0, "at least 1"),
    ({"layer1.0.conv.weight": 0.5}, 8, "did you mean .*layer1.0.conv1.weight"),
    ({"fc.weight": 0.5}, 8, "classifier"),
])
def test_bad_cuts_are_refused(ratios, round_to, message):
    _, model, x = _model("resnet")
    with pytest.raises(CutError, match=message):
        cut_model(model, x, ratios, score_groups(model, x, "magnitude"), round_to=round_to)


def test_weights_that_do_not_match_their_cut_are_refused():
    from mixprune.models import load_state

    spec, model, x = _model("resnet")
    scores = score_groups(model, x, "magnitude")
    half, cut = cut_model(model, x, {"layer1.0.conv1.weight": 0.5}, scores, round_to=4)
    quarter, _ = cut_model(model, x, {"layer1.0.conv1.weight": 0.25}, scores, round_to=2)
    fresh = build_model(spec).eval()
    replay_cut(fresh, x, cut)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(shape mismatch: layer1.0.bn1.bias \(6,\) vs model \(4,\)"):
        load_state(fresh, quarter.state_dict(), "the candidate")
    with pytest.raises(CutError, match="format"):
        Cut.from_dict({**cut.to_dict(), "format": 99})
    with pytest.raises(CutError, match="removes channels"):
        replay_cut(build_model(spec).eval(), x, Cut((cut.groups[0].__class__("layer1.0.conv1", tuple(range(8))),), 4))



def test_global_cut_reaches_its_mac_reduction_with_per_layer_ratios():
    from mixprune.pruning.cut import global_cut, macs_and_params

    spec, model, x = _model("resnet")
    macs, params = macs_and_params(model, x[:1])
    assert macs > params > 0
    scores = score_groups(model, x[:1], "magnitude")
    runs = {}
    for device in ("meta", "cpu"):  # a weightless copy and a real one: the same numbers
        blueprint = Blueprint(model, x, spec.name, device=device)
        assert next(blueprint.model.parameters()).device.type == device
        assert (blueprint.macs, blueprint.params) == (macs, params)
        runs[device] = global_cut(blueprint, 0.5, scores, round_to=2, tolerance=0.03)
    assert runs["meta"] == runs["cpu"]
    result = runs["meta"]
    assert abs(result.macs_reduction - 0.5) <= 0.03
    assert "fc.weight" not in result.ratios and set(result.ratios) < set(channel_counts(model))
    assert len({round(r, 3) for r in result.ratios.values()}) > 1  # global: each layer its own share
    # the per-layer ratios it found cut the real model to the same channels and MACs
    cut_net, _ = cut_model(model, x[:1], {n: r for n, r in result.ratios.items() if r > 0}, scores, round_to=2)
    assert abs(1 - macs_and_params(cut_net, x[:1])[0] / macs - result.macs_reduction) < 1e-9
    assert blueprint.ratios(cut_net) == result.ratios
    with pytest.raises(CutError, match=r"in \(0, 1\)"):
        global_cut(blueprint, 1.0, scores)
