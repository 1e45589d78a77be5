"""Fine-tuning of pruned models: Adam with early stopping, masks re-applied after every step."""

from __future__ import annotations

from mixprune.training import train

from .masks import apply_masks


def finetune(model, params: dict, masks: dict, train_set, tune_set, *, epochs: int, lr: float, patience: int,
             batch_size: int, seed: int, description: str) -> dict:
    """Train ``model`` in place; every weight outside its keep-mask (``masks``) is still zero afterwards."""
    return train(
        model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        after_step=lambda: apply_masks(params, masks), tune_set=tune_set, patience=patience,
        description=description,
    )
