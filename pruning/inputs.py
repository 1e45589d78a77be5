"""What the prune stage works from, checked before anything is written (``Inputs``: config, data,
model, its prunable layers, the rule table), and how a pruned model is measured: the same in the
driver and in every task, of either family."""

from __future__ import annotations

import dataclasses

import torch

from mixprune.accuracy import eval_record
from mixprune.config import DEFAULT_ROUND_TO, RunConfig
from mixprune.data import DataSpec, Splits, load_splits
from mixprune.errors import RunDirError
from mixprune.models import ModelSpec, build_model, load_weights
from mixprune.runs import RunDir
from mixprune.training import recalibrate_batchnorm, split_accuracies

from .ranges import RuleTable, get_table
from .roles import Layer, discover_layers, prunable_parameters
from .strategies import STRATEGIES


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything checked before anything is written: config, data, model, its layers, the rule table."""
    config: RunConfig
    run: RunDir
    spec: ModelSpec
    splits: Splits
    model: torch.nn.Module
    layers: list[Layer]
    table: RuleTable

    @property
    def params(self) -> dict:
        return prunable_parameters(self.model, self.layers)

    @property
    def sizes(self) -> dict[str, int]:
        return {layer.name: layer.params for layer in self.layers}

    def sample_counts(self) -> dict:
        return {"samples": len(self.splits.val), "tune_samples": len(self.splits.tune)}

    def accuracies(self, model: torch.nn.Module, label: str, suffix: str = "") -> dict:
        return split_accuracies(model, self.splits, label, suffix)

    def eval_record(self, measured: dict, **more) -> dict:
        """eval.json of a model measured on this run's splits, not fine-tuned (yet)."""
        return eval_record(measured, **self.sample_counts(), **more)


def data_spec(config: RunConfig) -> DataSpec:
    return DataSpec(source=config.data, img_size=config.img_size, calib_fraction=config.calib_fraction)


def prepare(config: RunConfig) -> Inputs:
    """Validate every input before anything is written: model, data, checkpoint, rule table."""
    table = get_table(config.model, config.rules)
    if config.round_to is None:  # recorded as used, so a resumed run cuts the same
        config = dataclasses.replace(config, round_to=DEFAULT_ROUND_TO)
    splits = load_splits(data_spec(config))
    spec = ModelSpec(name=config.model, num_classes=splits.num_classes, in_chans=splits.in_chans,
                     img_size=config.img_size, kwargs=dict(config.model_args))
    torch.manual_seed(config.seed)
    model = build_model(spec, pretrained=config.pretrained, pretrained_file=config.pretrained_file)
    if config.checkpoint:
        load_weights(model, config.checkpoint)
    layers = discover_layers(model)
    if not layers:
        raise RunDirError(f"model '{config.model}' has no prunable conv or linear weights")
    for strategy in table.strategies:
        STRATEGIES.get(strategy)
    return Inputs(config=config, run=RunDir(config.out), spec=spec, splits=splits, model=model, layers=layers,
                  table=table)


def recalibration_set(inputs: Inputs):
    """The fixed subset of training images that re-estimates normalization statistics."""
    generator = torch.Generator().manual_seed(inputs.config.seed)
    order = torch.randperm(len(inputs.splits.train), generator=generator)[: inputs.config.recal_samples].tolist()
    return torch.utils.data.Subset(inputs.splits.train, sorted(order))


def measure(inputs: Inputs, recal_set, model: torch.nn.Module, label: str) -> dict:
    """Accuracies of a pruned ``model`` before (``*_raw``) and after normalization re-estimation (in place),
    and whether it ran."""
    raw = inputs.accuracies(model, label, "_raw")
    if not inputs.config.recalibrate or not recalibrate_batchnorm(model, recal_set,
                                                                  description=f"{label}: re-estimate BN"):
        return {"accuracy": raw["accuracy_raw"], "tune_accuracy": raw["tune_accuracy_raw"], **raw,
                "recalibrated": False}
    return {**inputs.accuracies(model, f"{label} after BN"), **raw, "recalibrated": True}
