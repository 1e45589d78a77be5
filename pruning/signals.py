"""The calibration pass, and scoring every prunable weight with one of ``scores``' functions.

One pass over the calibration set collects everything the gradient-based scores need
(the accumulated gradient g and the Hessian-gradient product Hg); every signal and
baseline is then a cheap function of (w, g, Hg), never recomputed per strategy.
"""

from __future__ import annotations

import torch

from mixprune.errors import DataError
from mixprune.progress import track
from mixprune.training import make_loader

from .scores import ScoreFn

GRASP_TEMPERATURE = 200.0  # GraSP's softened logits (Wang et al., 2020)
_FD_STEP = 1e-3  # relative finite-difference step for Hessian-gradient products


EMPTY_CALIBRATION = ("the calibration set is empty; raise --calib-fraction (calib_fraction in a --config file) "
                     "or use more training data")


def calibrate(model, calibration_set, weight_names: list[str], batch_size: int = 64) -> dict[str, dict[str, torch.Tensor]]:
    """One pass over the calibration set: {"grad": {name: g}, "hg": {name: Hg}}.

    ``g`` is dL/dw summed over batches (cross-entropy); ``Hg`` is GraSP's Hessian-gradient
    product of the temperature-softened loss, per batch. Hg comes from a central finite
    difference of gradients, (g(w + r g) - g(w - r g)) / 2r, because double backward is
    missing for common ops (hardsigmoid, fused attention). The model is left unchanged
    (eval mode, weights restored bit for bit, BatchNorm statistics untouched).
    """
    params = dict(model.named_parameters())
    weights = [params[name] for name in weight_names]
    grad = {name: torch.zeros_like(w) for name, w in zip(weight_names, weights)}
    hg = {name: torch.zeros_like(w) for name, w in zip(weight_names, weights)}
    originals = [w.detach().clone() for w in weights]
    loss_fn = torch.nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()

    def soft_grad(images, labels):
        return torch.autograd.grad(loss_fn(model(images) / GRASP_TEMPERATURE, labels), weights)

    batches = 0
    for images, labels in track(make_loader(calibration_set, batch_size), "calibration pass"):
        logits = model(images)
        plain = torch.autograd.grad(loss_fn(logits, labels), weights)
        direction = soft_grad(images, labels)
        norm = torch.sqrt(sum((d * d).sum() for d in direction))
        weight_norm = torch.sqrt(sum((w * w).sum() for w in originals))
        r = float(_FD_STEP * (1.0 + weight_norm) / (norm + 1e-12))
        shifted = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, d in zip(weights, originals, direction):
                    w.copy_(w0 + sign * r * d)
            shifted.append(soft_grad(images, labels))
        with torch.no_grad():
            for w, w0 in zip(weights, originals):
                w.copy_(w0)
        for name, g_b, up, down in zip(weight_names, plain, *shifted):
            grad[name] += g_b
            hg[name] += (up - down) / (2.0 * r)
        batches += 1
    if batches == 0:
        raise DataError(EMPTY_CALIBRATION)
    model.train(was_training)
    return {"grad": grad, "hg": hg}


def accumulate_gradients(model, calibration_set, batch_size: int = 64) -> None:
    """Fill every parameter's ``.grad`` with dL/dw summed over calibration batches (``calibrate``'s g, for
    every parameter): what the structured gradient and Taylor importances read (pruning/cut.py). The
    weights and BatchNorm statistics stay as they are."""
    loss_fn = torch.nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    batches = 0
    for images, labels in track(make_loader(calibration_set, batch_size), "calibration gradients"):
        loss_fn(model(images), labels).backward()
        batches += 1
    if batches == 0:
        raise DataError(EMPTY_CALIBRATION)
    model.train(was_training)


def score_all(fn: ScoreFn, weights: dict[str, torch.Tensor], calibration: dict) -> dict[str, torch.Tensor]:
    return {name: fn(w.detach(), calibration["grad"][name], calibration["hg"][name]) for name, w in weights.items()}
