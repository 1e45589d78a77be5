"""Training, evaluation and normalization re-estimation loops shared by every stage."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch.utils.data import DataLoader

from .progress import say, track


def make_loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)


@torch.no_grad()
def evaluate(model, dataset, batch_size: int = 256, description: str = "evaluate") -> float:
    """Top-1 accuracy (0..1) on ``dataset``."""
    model.eval()
    correct = total = 0
    for images, labels in track(make_loader(dataset, batch_size), description):
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += int(labels.numel())
    return correct / max(total, 1)


def split_accuracies(model, splits, label: str, suffix: str = "") -> dict:
    """Held-out and tune accuracy of ``model`` as it is, under eval.json's keys ending in ``suffix``."""
    return {f"accuracy{suffix}": evaluate(model, splits.val, description=f"{label}: accuracy"),
            f"tune_accuracy{suffix}": evaluate(model, splits.tune, description=f"{label}: tune accuracy")}


@torch.no_grad()
def recalibrate_batchnorm(model, dataset, batch_size: int = 128, description: str = "re-estimate BN") -> bool:
    """Re-estimate BatchNorm running statistics from unlabeled images; no weight changes.

    Pruning shifts every activation distribution, so the stored running mean/var no longer
    fit; a forward pass in train mode with cumulative averaging restores them. Returns
    False when the model has no BatchNorm (LayerNorm has no running statistics).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.train()
    for images, _ in track(make_loader(dataset, batch_size), description):
        if images.shape[0] > 1:  # train-mode BatchNorm cannot take a single-image batch
            model(images)
    for m, (momentum, _) in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return True


def lr_factor(total_steps: int, warmup: float, schedule: str) -> Callable[[int], float]:
    """The multiplier of the base rate at each step: linear warmup, then constant or cosine."""
    warmup_steps = int(warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
        return 1.0

    return factor


def train(
    model,
    train_set,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    after_step: Callable[[], None] | None = None,
    warmup: float = 0.0,
    schedule: str = "constant",
    tune_set=None,
    patience: int | None = None,
    description: str = "train",
) -> dict:
    """Adam training; optional hook after every step (mask re-application) and early stopping.

    ``warmup`` (a fraction of all steps) ramps the rate up linearly; ``schedule`` "cosine"
    then decays it to 0 over the remaining steps. With ``tune_set`` and ``patience`` the
    best epoch by tune accuracy is restored, and training stops after ``patience`` epochs
    without gain.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(epochs * math.ceil(len(train_set) / batch_size), warmup, schedule))
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    best_acc, best_state, stale = -1.0, None, 0
    for epoch in range(epochs):
        model.train()
        loader = make_loader(train_set, batch_size, shuffle=True, seed=seed + epoch)
        running = 0.0
        for images, labels in track(loader, f"{description} epoch {epoch + 1}/{epochs}"):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            running += loss.item() * int(labels.numel())
        entry = {"epoch": epoch + 1, "loss": running / max(len(train_set), 1)}
        if tune_set is not None:
            entry["tune_accuracy"] = evaluate(model, tune_set, description="tune accuracy")
            if entry["tune_accuracy"] > best_acc:
                best_acc, best_state, stale = entry["tune_accuracy"], copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
        history.append(entry)
        say(f"{description} epoch {epoch + 1}/{epochs}: loss {entry['loss']:.4f}"
            + (f", tune accuracy {entry['tune_accuracy']:.3f}" if "tune_accuracy" in entry else ""))
        if patience is not None and stale >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": len(history), "history": history, "best_tune_accuracy": best_acc if best_state else None}
