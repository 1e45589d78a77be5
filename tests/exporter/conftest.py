"""Run directories shaped like the pruning stage's output, built from tiny timm models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixprune.data import DataSpec
from mixprune.models import ModelSpec, build_model, numpy_state
from mixprune.pruning.roles import prunable_names
from mixprune.runs import CutWeights, RunDir

# tiny configurations of the timm families mixprune must export (the full resnet18 is
# kept for one slow test)
SPECS = {
    "resnet": ModelSpec("resnet18", 10, 1, 16, {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}),
    "mobilenet": ModelSpec("mobilenetv3_small_050", 10, 1, 16),
    "convnext": ModelSpec("convnext_atto", 10, 1, 32, {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}),
    "swin": ModelSpec("swin_tiny_patch4_window7_224", 10, 1, 16,
                      {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2]}),
    "vit": ModelSpec("vit_tiny_patch16_224", 10, 1, 16, {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 2}),
    "resnet18_full": ModelSpec("resnet18", 10, 1, 16),
}


def prune_by_magnitude(state: dict, ratio: float) -> dict:
    """Zero the ``ratio`` smallest |w| of every >= 2-dim weight, layer by layer."""
    pruned = {}
    for name, tensor in state.items():
        if tensor.dim() >= 2 and name.endswith("weight") and tensor.is_floating_point():
            k = int(ratio * tensor.numel())
            if k:
                threshold = tensor.abs().flatten().kthvalue(k).values
                tensor = torch.where(tensor.abs() <= threshold, torch.zeros_like(tensor), tensor)
        pruned[name] = tensor
    return pruned


def make_run(root: Path, spec: ModelSpec, ratios: dict[str, float], seed: int = 0) -> Path:
    """A run directory with a dense model and one finished candidate per {cid: ratio}.

    BatchNorm statistics and affine parameters are randomized so conv+BN folding really
    rescales the exported weights (and some scales are negative, which makes -0.0).
    """
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(-1.5, 1.5)
                module.bias.normal_(0, 0.1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = DataSpec(img_size=spec.img_size)
    run = RunDir(root)
    run.save({"model": spec.to_dict(), "data": data.to_dict(), "seed": seed, "config": {}, "stages": {}})
    prunable = prunable_names(model)
    run.write_ranges({"layers": {name: {} for name in prunable}})
    run.dense.save_weights(numpy_state(state))
    run.dense.write_eval({"accuracy": 0.1})
    for cid, ratio in ratios.items():
        folder = run.candidate(cid)
        pruned = prune_by_magnitude(state, ratio)
        folder.save_pruned(numpy_state(pruned), pruned=prunable)
        zeros = sum(int((pruned[k] == 0).sum()) for k in prunable)
        total = sum(pruned[k].numel() for k in prunable)
        folder.write_strategy({"cid": cid, "kind": "baseline", "signal": "mag", "strategy": "uniform",
                               "layers": {k: ratio for k in prunable}, "global_sparsity": zeros / total})
        folder.write_eval({"accuracy": 0.1})
    return root


def add_cut_candidate(run: RunDir, spec: ModelSpec, cid: str, ratio: float = 0.5):
    """A structured candidate in ``run``, as the prune stage stores one: every cuttable layer loses
    ``ratio`` of its channels (magnitude), stored as its cut and nothing else (no retraining, so no
    tensor differs from the replayed cut). Returns the cut torch model."""
    from mixprune.models.stored import build_stored
    from mixprune.pruning.cut import Blueprint, cut_model, score_groups
    from mixprune.pruning.structured import cuttable_layers, describe_cut

    dense = build_stored(spec, run.dense)
    example = torch.zeros(1, *spec.input_shape[1:])
    ratios = {layer.name: ratio for layer in cuttable_layers(dense)}
    cut_net, cut = cut_model(dense, example, ratios, score_groups(dense, example, "magnitude"), round_to=4,
                             label=spec.name)
    folder = run.candidate(cid)
    folder.store(CutWeights(cut.to_dict(), {}))
    described = describe_cut(Blueprint(dense, example, spec.name), cut_net, example)
    folder.write_strategy({"cid": cid, "kind": "structured", "signal": "magnitude", "strategy": "balanced",
                           "layers": ratios, "global_sparsity": described["params_reduction"], "mode": "structured",
                           **described})
    folder.write_eval({"accuracy": 0.1})
    return cut_net


@pytest.fixture
def build_run(tmp_path):
    """build_run(family, {cid: ratio}) -> a fresh run directory of a tiny model of that family."""
    return lambda family, ratios, seed=0: make_run(tmp_path / family, SPECS[family], ratios, seed)
