"""Fine-tuning of pruned models: Adam with early stopping, masks re-applied after every step.

Each candidate to fine-tune is a job an executor runs (mixprune/executors): the driver reads
the candidate's stored weights into the job (mixprune.models.stored: masks + state, or the cut record +
changed tensors), the task rebuilds the model over the shared dense weights, fine-tunes and measures
it, and returns the weights in their stored form; the driver writes them and eval.json.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch

from mixprune.models.stored import PrunedModel
from mixprune.training import split_accuracies, train

from .masks import apply_masks
from .roles import discover_layers, prunable_parameters
from .tasks import StageWork


def finetune(model, params: dict, masks: dict, train_set, tune_set, *, epochs: int, lr: float, patience: int,
             batch_size: int, seed: int, description: str) -> dict:
    """Train ``model`` in place; every weight outside its keep-mask (``masks``) is still zero afterwards."""
    return train(
        model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        after_step=lambda: apply_masks(params, masks), tune_set=tune_set, patience=patience,
        description=description,
    )


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    weights: object  # the job's stored form: MaskedWeights, or a cut model's tensors
    history: dict
    accuracies: dict  # accuracy_finetuned, tune_accuracy_finetuned


def finetune_task(work: StageWork, job: PrunedModel) -> FinetuneResult:
    """Fine-tune one candidate and measure it (an executor runs this here or on a Ray worker)."""
    cfg = work.config
    model, masks = job.build(work.spec, work.dense_state)
    torch.manual_seed(cfg.seed + zlib.crc32(job.cid.encode()))
    history = finetune(model, prunable_parameters(model, discover_layers(model)), masks, work.splits.train,
                       work.splits.tune, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                       patience=cfg.finetune_patience, batch_size=cfg.batch_size, seed=cfg.seed,
                       description=f"fine-tune {job.cid}")
    return FinetuneResult(job.weights(model, work.dense_state), history, split_accuracies(model, work.splits, job.cid, "_finetuned"))
