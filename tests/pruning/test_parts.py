"""Roles, rule tables, strategies and masks in isolation."""

import pytest
import torch

from mixprune.compat import import_timm
from mixprune.errors import ConfigError
from mixprune.pruning import masks as masklib
from mixprune.pruning.ranges import get_table, layer_ranges
from mixprune.pruning.roles import Layer, discover_layers
from mixprune.pruning.strategies import STRATEGIES, shift_to_sparsity
from mixprune.training import lr_factor

FAMILIES = {
    "resnet18": {},
    "vit_tiny_patch16_224": dict(img_size=32, patch_size=4, depth=2),
    "swin_tiny_patch4_window7_224": dict(img_size=32, window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2)),
    "mobilenetv3_small_050": {},
    "convnext_atto": {},
}


@pytest.mark.parametrize("name", FAMILIES)
def test_roles_on_each_family(name):
    model = import_timm().create_model(name, num_classes=10, in_chans=1, **FAMILIES[name])
    layers = discover_layers(model)
    roles = {layer.role for layer in layers}
    assert "classifier" in roles
    assert roles & {"stem", "patch_embed"}
    assert all(len(layer.shape) >= 2 for layer in layers)
    assert sum(layer.params for layer in layers) < sum(p.numel() for p in model.parameters())
    # norms and biases are never prunable
    assert not any("norm" in layer.name or "bn" in layer.name or layer.name.endswith("bias") for layer in layers)
    if name.startswith(("vit", "swin")):
        assert {"attention_qkv", "attention_proj", "mlp"} <= roles
    if name == "resnet18":
        assert {"downsample"} <= roles and {layer.stage for layer in layers} >= {1, 2, 3, 4}


def _layer(name, role, params, stage=None, position=0.5):
    return Layer(name=name, kind="conv", shape=(params, 1), params=params, role=role, stage=stage,
                 block=None, position=position)


def test_small_layer_cap_beats_patch_embedding_band():
    table = get_table("vit_tiny_patch16_224")
    layers = [_layer("patch_embed.proj.weight", "patch_embed", 3072), _layer("big.weight", "mlp", 200_000)]
    runs = {"a": {"patch_embed.proj.weight": 0.6, "big.weight": 0.5}, "b": {"patch_embed.proj.weight": 0.9, "big.weight": 0.8}}
    ranges = layer_ranges(layers, runs, table)
    assert ranges["patch_embed.proj.weight"]["max"] == 0.10
    assert ranges["patch_embed.proj.weight"]["rule"].endswith("+small_layer")
    assert (ranges["big.weight"]["min"], ranges["big.weight"]["max"], ranges["big.weight"]["rule"]) == (0.5, 0.8, "global")
    big_embed = [_layer("patch_embed.proj.weight", "patch_embed", 50_000)]
    band = layer_ranges(big_embed, {"a": {"patch_embed.proj.weight": 0.05}, "b": {"patch_embed.proj.weight": 0.6}},
                        table)["patch_embed.proj.weight"]
    assert (band["min"], band["max"]) == (0.15, 0.30)


def test_family_tables_are_chosen_by_model_name():
    assert get_table("resnet50").name == "resnet"
    assert get_table("deit_tiny_patch16_224").name == "vit"
    assert get_table("swin_tiny_patch4_window7_224").name == "swin"
    assert get_table("convnext_atto").name == "generic"
    for table_name in ("resnet", "vit", "swin", "generic"):
        assert len(set(get_table({"resnet": "resnet18", "vit": "vit_small_patch16_224", "swin": "swin_base_patch4_window7_224",
                                  "generic": "convnext_atto"}[table_name]).strategies)) == 10


def test_family_training_recipes_inherit_and_override(tmp_path):
    assert get_table("resnet18").training == {"lr": 1e-3, "batch_size": 64, "warmup": 0.0, "schedule": "constant"}
    assert get_table("vit_tiny_patch16_224").training == {"lr": 3e-4, "batch_size": 16, "warmup": 0.1, "schedule": "cosine"}
    assert get_table("swin_tiny_patch4_window7_224").training["schedule"] == "cosine"
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nextends = "vit"\n[training]\nlr = 1e-4\n')
    assert get_table("anything", str(path)).training == {"lr": 1e-4, "batch_size": 16, "warmup": 0.1, "schedule": "cosine"}
    path.write_text('name = "bare"\nstrategies = ["min"]\n')  # extends nothing: the generic recipe
    assert get_table("anything", str(path)).training == get_table("convnext_atto").training


def test_learning_rate_warms_up_then_decays():
    factor = lr_factor(total_steps=100, warmup=0.1, schedule="cosine")
    assert [round(factor(s), 3) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(10) == 1.0 and 0.49 < factor(55) < 0.51 and factor(99) < 0.001
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))
    constant = lr_factor(total_steps=100, warmup=0.0, schedule="constant")
    assert {constant(s) for s in range(100)} == {1.0}


@pytest.mark.parametrize("text, field", [
    ('name = "x"\nextends = "generic"\n[[rules]]\nname = "r"\nmax = 1.5\n', "rules[0].max"),
    ('name = "x"\nextends = "generic"\n[[rules]]\nname = "r"\nmaxx = 0.5\n', "maxx"),
    ('name = "x"\nextends = "nope"\n', "cannot extend 'nope'"),
    ('name = "x"\nextends = "generic"\n[[rules]]\nname = "r"\nmin = 0.5\nmax = 0.2\n', "min 0.5 is above max 0.2"),
    ('name = [1]\n', "'name' must be a string"),
    ('name = "x"\nrules = 3\n', "'rules' must be an array"),
    ('this is not toml', "not valid TOML"),
    ('name = "x"\nextends = "generic"\n[training]\nlr = -1\n', "lr must be > 0"),
    ('name = "x"\nextends = "generic"\n[training]\nbatch_size = 1.5\n', "batch_size must be an integer"),
    ('name = "x"\nextends = "generic"\n[training]\nschedule = "step"\n', "schedule must be one of constant, cosine"),
    ('name = "x"\nextends = "generic"\n[training]\nmomentum = 0.9\n', "unknown field\\(s\\) momentum"),
])
def test_malformed_rule_table_names_the_problem(tmp_path, text, field):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        get_table("resnet18", str(path))


def test_strategies_stay_in_range_and_differ():
    layers = [_layer("stem.weight", "stem", 20_000, stage=None, position=0.0),
              _layer("s0.weight", "conv", 40_000, stage=0, position=0.25),
              _layer("s1.weight", "mlp", 400_000, stage=1, position=0.5),
              _layer("s1.attn.weight", "attention_qkv", 100_000, stage=1, position=0.6),
              _layer("s2.weight", "conv", 1_000_000, stage=2, position=0.75),
              _layer("head.weight", "classifier", 30_000, stage=None, position=1.0)]
    ranges = {layer.name: {"min": 0.1 + i * 0.05, "max": 0.5 + i * 0.1} for i, layer in enumerate(layers)}
    seen = {}
    for table in ("resnet18", "vit_tiny_patch16_224"):
        for name in get_table(table).strategies:
            ratios = STRATEGIES.get(name)(layers, ranges)
            for layer_name, ratio in ratios.items():
                assert ranges[layer_name]["min"] - 1e-9 <= ratio <= ranges[layer_name]["max"] + 1e-9
            seen[name] = tuple(round(v, 6) for v in ratios.values())
    assert len(set(seen.values())) == len(seen)  # every strategy gives its own allocation
    assert seen["classifier_heavy"][-1] == pytest.approx(ranges["head.weight"]["max"])
    assert seen["classifier_heavy"][1] == pytest.approx(ranges["s0.weight"]["min"])
    assert seen["late_stage"][4] == pytest.approx(ranges["s2.weight"]["max"])


def test_shift_hits_the_target_and_keeps_frozen_layers():
    sizes = {"a": 1000, "b": 100_000, "c": 50_000, "norm": 64}
    ratios = {"a": 0.1, "b": 0.5, "c": 0.3, "norm": 0.0}
    shifted = shift_to_sparsity(ratios, sizes, 0.9, frozen={"norm"})
    assert abs(masklib.achieved_sparsity(shifted, sizes) - 0.9) < 0.001
    assert shifted["norm"] == 0.0 and max(shifted.values()) <= 0.98
    # one common offset (0.469 here, every layer below the 98% cap): the differences between layers stay
    assert shifted["b"] - shifted["c"] == pytest.approx(0.2) and shifted["c"] - shifted["a"] == pytest.approx(0.2)
    assert shifted["b"] < 0.98
    with pytest.raises(ConfigError, match="out of reach"):
        shift_to_sparsity(ratios, sizes, 0.99, frozen={"norm"})


def test_masks_prune_exact_counts_even_with_ties():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.5])
    marked = masklib.lowest_k(scores, 3)
    assert int(marked.sum()) == 3 and bool(marked[5]) and not bool(marked[0])
    weights = {"w": torch.randn(64, 32), "v": torch.randn(10, 10)}
    kept = masklib.layer_masks({k: w.abs() for k, w in weights.items()}, {"w": 0.73, "v": 0.0})
    assert int((~kept["w"]).sum()) == round(0.73 * 64 * 32) and bool(kept["v"].all())
    glob = masklib.global_masks({k: w.abs() for k, w in weights.items()}, 0.5)
    pruned = sum(int((~m).sum()) for m in glob.values())
    assert pruned == round(0.5 * (64 * 32 + 100))
    params = {k: torch.nn.Parameter(w.clone()) for k, w in weights.items()}
    masklib.apply_masks(params, glob)
    per_layer, overall = masklib.measured_sparsity({k: p.detach() for k, p in params.items()})
    assert overall == pytest.approx(pruned / (64 * 32 + 100))
    assert per_layer == pytest.approx(masklib.mask_ratios(glob))


def test_calibration_hessian_gradient_matches_double_backward_and_leaves_weights():
    from mixprune.pruning.signals import GRASP_TEMPERATURE, calibrate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Tanh(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = ["0.weight", "4.weight"]
    result = calibrate(model, torch.utils.data.TensorDataset(x, y), names, batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()  # calibration scores the deployed model: BatchNorm with its running statistics
    weights = [dict(model.named_parameters())[n] for n in names]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    exact_g = torch.autograd.grad(loss, weights)
    soft = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x) / GRASP_TEMPERATURE, y), weights,
                               create_graph=True)
    exact_hg = torch.autograd.grad(sum((s * s.detach()).sum() for s in soft), weights)
    for name, g, hg in zip(names, exact_g, exact_hg):
        assert torch.allclose(result["grad"][name], g, atol=1e-6)
        assert float((result["hg"][name] - hg).norm() / hg.norm()) < 1e-2


def test_a_registry_refuses_a_name_twice():
    from mixprune.registry import Registry

    registry = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="thing 'a' is registered already"):
        registry.register("a")(2)
    assert registry.get("a") == 1 and registry.names() == ["a"]
    with pytest.raises(ConfigError, match="unknown thing 'b' \\(known: a\\)"):
        registry.get("b")


def test_scores_module_stays_light():
    import subprocess
    import sys

    code = ("import sys; import mixprune.pruning.scores as s; s.SIGNALS.get('gradient').style.record(); "
            "print(sorted(m for m in ('torch', 'torch_pruning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
