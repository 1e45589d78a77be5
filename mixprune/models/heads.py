"""Vision transformers under a structured cut: whole attention heads and MLP hidden units go,
the token width stays.

timm's ``Attention`` reshapes its qkv projection into ``num_heads`` x ``head_dim`` and its
output into ``attn_dim`` = ``num_heads * head_dim``; cutting channels of qkv one by one breaks
that shape, so qkv is cut by whole heads (Torch-Pruning's head pruning) and ``num_heads`` /
``attn_dim`` are set from the cut weights afterwards. The token width (the residual stream
written by the patch embedding, every attention output projection and every MLP output layer)
couples every block and the position embedding: it is never cut, so a block loses heads and
MLP hidden units only. A qkv layer's channel ratio is the fraction of its heads removed.
"""

from __future__ import annotations

import dataclasses

from torch import nn


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name of the qkv weight: its attention module} for timm-style fused-qkv attention."""
    return {f"{name}.qkv.weight": module for name, module in model.named_modules()
            if isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "num_heads")
            and hasattr(module, "head_dim")}


def token_width_layers(model: nn.Module) -> set[str]:
    """Weight names of the layers that write a transformer's token width: never cut (see above)."""
    blocks = [module for module in model.modules()
              if isinstance(getattr(getattr(module, "attn", None), "qkv", None), nn.Linear) and hasattr(module, "mlp")]
    if not blocks:
        return set()
    names = {module: name for name, module in model.named_modules()}
    writers = [getattr(getattr(model, "patch_embed", None), "proj", None)]
    for block in blocks:
        writers += [getattr(block.attn, "proj", None), getattr(block.mlp, "fc2", None)]
    return {f"{names[m]}.weight" for m in writers if isinstance(m, nn.Module)}


def heads_removed(ratio: float, heads: int) -> int:
    """How many of ``heads`` a channel ratio removes: the nearest whole number."""
    return int(ratio * heads + 0.5)


def max_head_ratio(heads: int) -> float:
    """The largest ratio that keeps one head (a ratio rounds to the nearest head)."""
    return (heads - 1) / heads


@dataclasses.dataclass(frozen=True)
class HeadCut:
    """What Torch-Pruning's MetaPruner is given for the heads of a model (all empty without attention)."""
    ignored: list  # the token-width layers
    scoped: dict  # qkv module -> a channel ratio of its own: Torch-Pruning ranks heads only in such a group
    options: dict  # num_heads, prune_num_heads, prune_head_dims and the head ratios


def head_cut(model: nn.Module, ratios: dict[str, float] | None, global_ratio: float | None) -> HeadCut:
    """Head pruning of every qkv layer of ``model`` (never of its head dims), per layer by ``ratios``
    (keyed by qkv weight name) or globally at ``global_ratio``."""
    attention = attention_modules(model)
    if not attention:
        return HeadCut([], {}, {})
    modules = dict(model.named_modules())
    ignored = [modules[n.rpartition(".")[0]] for n in sorted(token_width_layers(model))]
    options = {"num_heads": {m.qkv: m.num_heads for m in attention.values()}, "prune_num_heads": True,
               "prune_head_dims": False}
    if ratios is None:
        return HeadCut(ignored, {}, {**options, "head_pruning_ratio": global_ratio or 0.0})
    wanted = {name: heads_removed(ratio, attention[name].num_heads) for name, ratio in ratios.items() if name in attention}
    wanted = {name: k for name, k in wanted.items() if k > 0}
    # Torch-Pruning removes ceil(ratio * heads) heads: half a head below k makes that exactly k
    head_ratios = {attention[n].qkv: (k - 0.5) / attention[n].num_heads for n, k in wanted.items()}
    return HeadCut(ignored, {attention[n].qkv: 0.5 for n in wanted}, {**options, "head_pruning_ratio_dict": head_ratios})


def sync_heads(model: nn.Module) -> None:
    """After a cut: every attention module's ``num_heads`` and ``attn_dim`` from its qkv weight."""
    for module in attention_modules(model).values():
        module.num_heads = module.qkv.out_features // (3 * module.head_dim)
        if hasattr(module, "attn_dim"):
            module.attn_dim = module.num_heads * module.head_dim


def head_counts(model: nn.Module) -> dict[str, int]:
    """{qkv weight name: heads} of every attention module."""
    return {name: module.qkv.out_features // (3 * module.head_dim) for name, module in attention_modules(model).items()}
