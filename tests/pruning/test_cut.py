"""Structured cuts with Torch-Pruning: smaller models that replay from a record and safetensors weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mixprune.models.cuts import Cut, build_cut_model, changed_tensors, replay_cut
from mixprune.errors import CheckpointError, CutError
from mixprune.models import build_model, numpy_state
from mixprune.pruning.cut import Blueprint, channel_counts, cut_model, score_groups
from mixprune.pruning.structured import cuttable_layers

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
    # the record replayed on the dense weights gives the cut weights exactly: nothing to store but the record
    dense_state = numpy_state(model)
    assert changed_tensors(numpy_state(cut_net), numpy_state(build_cut_model(spec, cut, dense_state, {}, spec.name))) == {}
    # what training changes is stored (JSON + safetensors) and loaded over the replayed cut: the same function
    with torch.no_grad():
        next(cut_net.parameters()).mul_(2)
    changed = changed_tensors(numpy_state(cut_net), numpy_state(build_cut_model(spec, cut, dense_state, {}, spec.name)))
    assert list(changed) == [next(n for n, _ in cut_net.named_parameters())]
    (tmp_path / "cut.json").write_text(json.dumps(cut.to_dict()))
    save_file({k: torch.from_numpy(v).contiguous() for k, v in changed.items()}, tmp_path / "state.safetensors")
    fresh = build_cut_model(spec, Cut.from_dict(json.loads((tmp_path / "cut.json").read_text())), dense_state,
                            load_file(tmp_path / "state.safetensors"), spec.name)
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


def _gradient_as_weights():
    """The gradient importance as it was first written: Torch-Pruning's L1 magnitude importance run on
    weights swapped for their gradients (the reference the Importance subclass must match)."""
    import torch_pruning as tp

    magnitude = tp.importance.GroupMagnitudeImportance(p=1)

    def score(group):
        layers = {id(dep.target.module): dep.target.module for dep, _ in group
                  if getattr(dep.target.module, "weight", None) is not None
                  and dep.target.module.weight.grad is not None}
        swapped = {key: layer.weight.data for key, layer in layers.items()}
        try:
            for layer in layers.values():
                layer.weight.data = layer.weight.grad.data
            return magnitude(group)
        finally:
            for key, layer in layers.items():
                layer.weight.data = swapped[key]

    return score


@pytest.mark.parametrize("family", ["resnet", "mobilenet", "vit"])
def test_gradient_importance_scores_as_magnitude_on_the_gradients(family, monkeypatch):
    import torch_pruning as tp

    from mixprune.pruning import cut as cutlib
    from mixprune.pruning.scores import SIGNALS

    spec, model, x = _model(family)
    with torch.no_grad():  # timm zero-initializes each block's last BN: gradients everywhere, not only in the stem
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
    model(x).logsumexp(dim=1).sum().backward()
    importance = SIGNALS.get("gradient").importance()
    assert isinstance(importance, tp.importance.Importance)  # a Torch-Pruning importance, no weight swapping
    new = score_groups(model, x, "gradient", round_to=1)
    magnitude = score_groups(model, x, "magnitude", round_to=1)

    class Old:
        @staticmethod
        def get(name):
            return _gradient_as_weights

    monkeypatch.setattr(cutlib, "IMPORTANCES", Old)
    old = score_groups(model, x, "gradient", round_to=1)
    assert new.scores.keys() == old.scores.keys() and len(new.scores) > 3
    for key, scores in old.scores.items():
        assert (scores is None) == (new.scores[key] is None), key
        if scores is not None:
            assert torch.allclose(new.scores[key], scores, rtol=1e-5, atol=0, equal_nan=True), key
            assert torch.equal(new.scores[key].argsort(), scores.argsort()), key  # the same channel choice
    assert any(not torch.allclose(s, magnitude.scores[k]) for k, s in new.scores.items() if s is not None)


def test_every_signal_brings_its_importance_and_style():
    from mixprune.pruning.cut import IMPORTANCES
    from mixprune.pruning.scores import BASELINES, SIGNALS, STRUCTURED_BASELINES

    assert IMPORTANCES.names() == SIGNALS.names()
    styles = set()
    for name, signal in SIGNALS.items():
        assert callable(IMPORTANCES.get(name)())
        styles |= {tuple(signal.style.record().items()), tuple(signal.style.record(structured=True).items())}
    for registry, structured in ((BASELINES, False), (STRUCTURED_BASELINES, True)):
        for name, baseline in registry.items():
            styles.add(tuple(baseline.style.record(structured).items()))
    for name, baseline in STRUCTURED_BASELINES.items():
        assert baseline.importance in SIGNALS
    assert len(styles) == 2 * len(SIGNALS.names()) + len(BASELINES.names()) + len(STRUCTURED_BASELINES.names())
    with pytest.raises(CutError, match="unknown structured importance 'nope'"):
        IMPORTANCES.get("nope")


def test_a_model_that_cannot_be_cut_is_one_clear_line():
    spec, model, x = _model("swin")
    with pytest.raises(CutError, match="Torch-Pruning cannot cut|does not run after the cut") as info:
        cut_model(model, x, {layer.name: 0.5 for layer in cuttable_layers(model)},
                  score_groups(model, x, "magnitude", label=spec.name), round_to=4, label=spec.name)
    assert spec.name in str(info.value) and "\n" not in str(info.value)


def test_a_vit_loses_whole_heads_and_mlp_units_and_keeps_its_token_width():
    spec, model, x = _model("vit")
    model(x).logsumexp(dim=1).sum().backward()  # the product (Taylor) importance reads gradients
    with torch.no_grad():
        reference = model(x)
    layers = [layer.name for layer in cuttable_layers(model)]
    assert layers == [f"blocks.{b}.{part}.weight" for b in (0, 1) for part in ("attn.qkv", "mlp.fc1")]
    cut_net, cut = cut_model(model, x, {name: 0.5 for name in layers}, score_groups(model, x, "product"), round_to=4,
                             label=spec.name)
    before, after = channel_counts(model), channel_counts(cut_net)
    for block in cut_net.blocks:
        assert block.attn.num_heads == 1 and block.attn.qkv.out_features == 3 * block.attn.head_dim  # 1 of 2 heads
        assert block.attn.proj.in_features == block.attn.head_dim and block.mlp.fc1.out_features == 96
    assert all(after[n] == before[n] for n in before if n not in layers)  # the token width (48) everywhere
    with torch.no_grad():
        assert cut_net(x).shape == reference.shape and torch.equal(model(x), reference)
    replayed = build_cut_model(spec, cut, numpy_state(model), {}, spec.name)
    assert changed_tensors(numpy_state(cut_net), numpy_state(replayed)) == {}
    assert torch.allclose(replayed(x), cut_net(x), atol=1e-6)
    with pytest.raises(CutError, match="token width"):
        cut_model(model, x, {"blocks.0.attn.proj.weight": 0.5}, score_groups(model, x, "magnitude"))
    with pytest.raises(CutError, match="remove them all"):
        cut_model(model, x, {"blocks.0.attn.qkv.weight": 0.8}, score_groups(model, x, "magnitude"))


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
    with pytest.raises(CutError, match="removes output channels"):
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
