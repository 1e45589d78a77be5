"""Torch-Pruning group importances of mixprune's own (the others are Torch-Pruning's): defined on first
use, so that Torch-Pruning is imported only then. pruning/scores.py registers each with its signal."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _gradient_importance_class():
    """GroupGradientImportance, defined on first use so that Torch-Pruning is imported only then."""
    import torch_pruning as tp
    from torch_pruning.pruner import function

    class GroupGradientImportance(tp.importance.GroupMagnitudeImportance):
        """|dL/dw| per channel group: the Lp norm (L1 by default) of each channel's gradients in every
        layer of the group, reduced over the group and normalized as ``GroupMagnitudeImportance`` reduces
        the weights' (the same layers and slices: conv / linear outputs and inputs, grouped convolutions,
        BatchNorm and LayerNorm affine weights). Reads ``weight.grad``: fill it first (one calibration
        pass, ``signals.accumulate_gradients``); a layer without gradients contributes nothing."""

        def __init__(self, p: int = 1, group_reduction: str = "mean", normalizer: str = "mean"):
            super().__init__(p=p, group_reduction=group_reduction, normalizer=normalizer, bias=False)

        def _local(self, layer, prune_fn, idxs) -> torch.Tensor | None:
            weight = getattr(layer, "weight", None)
            grad = None if weight is None else weight.grad
            if grad is None:
                return None
            transposed = getattr(layer, "transposed", False)
            if prune_fn in (function.prune_conv_out_channels, function.prune_linear_out_channels):
                return (grad.transpose(1, 0) if transposed else grad)[idxs].flatten(1).abs().pow(self.p).sum(1)
            if prune_fn in (function.prune_conv_in_channels, function.prune_linear_in_channels):
                local = (grad if transposed else grad.transpose(0, 1)).flatten(1).abs().pow(self.p).sum(1)
                if (prune_fn == function.prune_conv_in_channels and layer.groups != layer.in_channels
                        and layer.groups != 1):
                    local = local.repeat(layer.groups)  # grouped convolutions, as Torch-Pruning does
                return local[idxs]
            if prune_fn == function.prune_batchnorm_out_channels and layer.affine:
                return grad[idxs].abs().pow(self.p)
            if prune_fn == function.prune_layernorm_out_channels and layer.elementwise_affine:
                return grad[idxs].abs().pow(self.p)
            return None

        @torch.no_grad()
        def __call__(self, group):
            scores, root_idxs = [], []
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                if not isinstance(layer, tuple(self.target_types)):
                    continue
                local = self._local(layer, dep.pruning_fn, idxs)
                if local is not None:
                    scores.append(local)
                    root_idxs.append(group[i].root_idxs)
            if not scores:  # no layer of the group has gradients
                return None
            return self._normalize(self._reduce(scores, root_idxs), self.normalizer)

    return GroupGradientImportance


def gradient_importance(p: int = 1):
    """A GroupGradientImportance (a Torch-Pruning ``Importance``): L1 of dL/dw per channel group."""
    return _gradient_importance_class()(p=p)
