"""Application: turn scores and ratios into masks, and masks into zeros.

Exactly round(rho * n) weights are zeroed in a layer (ties broken by position), so a
layer's measured sparsity matches its target to within half a weight.
"""

from __future__ import annotations

import torch


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean tensor marking exactly the ``k`` lowest entries of flat ``scores``."""
    flat = scores.reshape(-1)
    marked = torch.zeros(flat.numel(), dtype=torch.bool)
    if k <= 0:
        return marked
    if k >= flat.numel():
        return ~marked
    threshold = torch.kthvalue(flat.float(), k).values
    below = flat < threshold
    marked |= below
    ties = torch.nonzero(flat == threshold).reshape(-1)[: k - int(below.sum())]
    marked[ties] = True
    return marked


def layer_masks(scores: dict[str, torch.Tensor], ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept) pruning ``ratios[name]`` of each layer's lowest scores."""
    return {
        name: (~lowest_k(score, int(round(ratios[name] * score.numel())))).reshape(score.shape)
        for name, score in scores.items()
    }


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks of one global threshold: the ``sparsity`` lowest scores over all layers."""
    flat = torch.cat([score.reshape(-1).float() for score in scores.values()])
    pruned = lowest_k(flat, int(round(sparsity * flat.numel())))
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = ~pruned[start:start + score.numel()].reshape(score.shape)
        start += score.numel()
    return masks


def mask_ratios(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """The pruned fraction of each keep-mask."""
    return {name: 1.0 - float(mask.sum()) / mask.numel() for name, mask in masks.items()}


def achieved_sparsity(ratios: dict[str, float], sizes: dict[str, int]) -> float:
    """Global sparsity (pruned / prunable) the integer per-layer counts give."""
    total = sum(sizes.values())
    return sum(int(round(ratios[name] * sizes[name])) for name in sizes) / total


@torch.no_grad()
def apply_masks(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight outside its keep-mask, as +0.0 (the stored masks cannot tell -0.0 apart)."""
    for name, mask in masks.items():
        params[name].masked_fill_(~mask, 0.0)


def measured_sparsity(params: dict[str, torch.Tensor]) -> tuple[dict[str, float], float]:
    """Zero fraction per layer and over all of them."""
    zeros = {name: int((p == 0).sum()) for name, p in params.items()}
    per_layer = {name: zeros[name] / p.numel() for name, p in params.items()}
    return per_layer, sum(zeros.values()) / max(sum(p.numel() for p in params.values()), 1)
