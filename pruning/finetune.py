"""Fine-tuning of pruned models: Adam with early stopping, masks re-applied after every step.

Each candidate to fine-tune is a job an executor runs (mixprune/executors): the driver reads
the candidate's stored weights into the job (masks + state, or the cut record + changed
tensors), the task rebuilds the model over the shared dense weights, fine-tunes and measures
it, and returns the weights in their stored form; the driver writes them and eval.json.
"""

from __future__ import annotations

import dataclasses
import zlib

import torch

from mixprune import masked
from mixprune.config import RunConfig
from mixprune.cuts import Cut, build_cut_model
from mixprune.data import Splits
from mixprune.models import ModelSpec, build_model, load_state, numpy_state
from mixprune.runs import CandidateDir, CutDir
from mixprune.training import split_accuracies, train

from .masks import apply_masks
from .roles import discover_layers, prunable_parameters


def finetune(model, params: dict, masks: dict, train_set, tune_set, *, epochs: int, lr: float, patience: int,
             batch_size: int, seed: int, description: str) -> dict:
    """Train ``model`` in place; every weight outside its keep-mask (``masks``) is still zero afterwards."""
    return train(
        model, train_set, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        after_step=lambda: apply_masks(params, masks), tune_set=tune_set, patience=patience,
        description=description,
    )


@dataclasses.dataclass(frozen=True)
class FinetuneWork:
    """What every fine-tuning task shares: put into the executor's object store once."""
    config: RunConfig
    spec: ModelSpec
    splits: Splits
    dense_state: dict  # numpy arrays


@dataclasses.dataclass(frozen=True)
class MaskedJob:
    """A masked candidate, fine-tuned under its masks."""
    cid: str
    stored: masked.MaskedWeights

    def build(self, work: FinetuneWork) -> tuple[torch.nn.Module, dict]:
        model = build_model(work.spec)
        load_state(model, masked.join(work.dense_state, self.stored), f"the weights of {self.cid}")
        shapes = {name: work.dense_state[name].shape for name in self.stored.masks}
        return model, {name: torch.from_numpy(masked.keep_mask(packed, shapes[name]))
                       for name, packed in self.stored.masks.items()}

    def weights(self, model: torch.nn.Module, work: FinetuneWork):
        return masked.split(numpy_state(model), work.dense_state, list(self.stored.masks))

    def store(self, folder: CandidateDir, weights) -> str:
        return folder.save_stored(weights)


@dataclasses.dataclass(frozen=True)
class CutJob:
    """A structured candidate: its channels are gone, so nothing is held at zero."""
    cid: str
    cut: dict
    changed: dict

    def build(self, work: FinetuneWork) -> tuple[torch.nn.Module, dict]:
        return build_cut_model(work.spec, Cut.from_dict(self.cut), work.dense_state, self.changed, self.cid), {}

    def weights(self, model: torch.nn.Module, work: FinetuneWork):
        return numpy_state(model)  # fine-tuning changes every tensor

    def store(self, folder: CutDir, weights) -> str:
        return folder.save_state(self.cut, weights)


Job = MaskedJob | CutJob


def job_of(folder: CandidateDir | CutDir) -> Job:
    if isinstance(folder, CutDir):
        return CutJob(folder.id, folder.read_cut(), folder.load_changes())
    return MaskedJob(folder.id, folder.stored_weights())


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    weights: object  # the job's stored form: MaskedWeights, or a cut model's tensors
    history: dict
    accuracies: dict  # accuracy_finetuned, tune_accuracy_finetuned


def finetune_task(work: FinetuneWork, job: Job) -> FinetuneResult:
    """Fine-tune one candidate and measure it (an executor runs this here or on a Ray worker)."""
    cfg = work.config
    model, masks = job.build(work)
    torch.manual_seed(cfg.seed + zlib.crc32(job.cid.encode()))
    history = finetune(model, prunable_parameters(model, discover_layers(model)), masks, work.splits.train,
                       work.splits.tune, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                       patience=cfg.finetune_patience, batch_size=cfg.batch_size, seed=cfg.seed,
                       description=f"fine-tune {job.cid}")
    return FinetuneResult(job.weights(model, work), history, split_accuracies(model, work.splits, job.cid, "_finetuned"))
