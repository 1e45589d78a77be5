"""Importance signals: how to score each weight (lowest score = pruned first).

One calibration pass over the calibration set collects everything the gradient-based
scores need (the accumulated gradient g and the Hessian-gradient product Hg); every
signal and baseline is then a cheap function of (w, g, Hg), never recomputed per
strategy.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mixprune.errors import DataError
from mixprune.progress import track
from mixprune.training import make_loader

GRASP_TEMPERATURE = 200.0  # GraSP's softened logits (Wang et al., 2020)

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_SIGNALS: dict[str, ScoreFn] = {}
_BASELINE_SCORES: dict[str, ScoreFn] = {}


def register_signal(name: str):
    def wrap(fn: ScoreFn) -> ScoreFn:
        _SIGNALS[name] = fn
        return fn
    return wrap


def register_baseline(name: str):
    def wrap(fn: ScoreFn) -> ScoreFn:
        _BASELINE_SCORES[name] = fn
        return fn
    return wrap


def list_signals() -> list[str]:
    return list(_SIGNALS)


def get_signal(name: str) -> ScoreFn:
    return _SIGNALS[name]


def get_baseline_score(name: str) -> ScoreFn:
    return _BASELINE_SCORES[name]


# Mix-and-Match signals, ranked within each layer ---------------------------------------
@register_signal("magnitude")
def magnitude(w, g, hg):
    return w.abs()


@register_signal("gradient")
def gradient(w, g, hg):
    return g.abs()


@register_signal("product")
def product(w, g, hg):
    return (w * g).abs()


# Global baselines, ranked across all layers at once --------------------------------------
register_baseline("mag")(magnitude)
register_baseline("snip")(product)  # SNIP's connection sensitivity |w * dL/dw|
register_baseline("uniform")(magnitude)  # same ratio in every layer, magnitude within it


@register_baseline("grasp")
def grasp(w, g, hg):
    # GraSP removes the weights with the largest -w*Hg (their removal preserves gradient
    # flow best), i.e. keeps the largest w*Hg: with "lowest is pruned" that is w*Hg.
    return w * hg


def calibrate(model, calibration_set, weight_names: list[str], batch_size: int = 64) -> dict[str, dict[str, torch.Tensor]]:
    """One pass over the calibration set: {"grad": {name: g}, "hg": {name: Hg}}.

    ``g`` is dL/dw summed over batches (cross-entropy); ``Hg`` is GraSP's Hessian-gradient
    product of the temperature-softened loss, per batch. The model is left unchanged
    (eval mode, so BatchNorm statistics are not touched).
    """
    params = dict(model.named_parameters())
    weights = [params[name] for name in weight_names]
    grad = {name: torch.zeros_like(w) for name, w in zip(weight_names, weights)}
    hg = {name: torch.zeros_like(w) for name, w in zip(weight_names, weights)}
    loss_fn = torch.nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    batches = 0
    for images, labels in track(make_loader(calibration_set, batch_size), "calibration pass"):
        # Hg needs a double backward, which fused attention kernels do not implement
        with sdpa_kernel([SDPBackend.MATH]):
            logits = model(images)
            plain = torch.autograd.grad(loss_fn(logits, labels), weights, retain_graph=True)
            soft = torch.autograd.grad(loss_fn(logits / GRASP_TEMPERATURE, labels), weights, create_graph=True)
            z = sum((s * s.detach()).sum() for s in soft)
            hessian_grad = torch.autograd.grad(z, weights)
        for name, g_b, hg_b in zip(weight_names, plain, hessian_grad):
            grad[name] += g_b.detach()
            hg[name] += hg_b.detach()
        batches += 1
    if batches == 0:
        raise DataError("the calibration set is empty; raise --calib-fraction or use more training data")
    model.train(was_training)
    return {"grad": grad, "hg": hg}


def score_all(fn: ScoreFn, weights: dict[str, torch.Tensor], calibration: dict) -> dict[str, torch.Tensor]:
    return {name: fn(w.detach(), calibration["grad"][name], calibration["hg"][name]) for name, w in weights.items()}
