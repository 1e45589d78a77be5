"""Structured Mix-and-Match in the prune stage (--mode structured or both): cut candidates.

Phase 1 (pruning/structured.py): the group importances score every channel group of the
dense model once (one gradient pass over the calibration set feeds the gradient and Taylor
importances); global structured runs at ``macs_targets`` give each layer a channel-ratio
range, written to ranges.json's ``structured`` block. Phase 2: the rule table's strategies
inside those ranges, per signal, shifted to ``macs_reduction`` when given, and the matched
baselines at the MACs they reach. Phase 3: each plan cuts a copy of the dense model,
normalization statistics are re-estimated, both splits evaluated and the candidate stored
as its cut record + weights (runs.CutDir). Phases 1 and 2 are deterministic and cheap (cuts of
a weightless copy, pruning/cut.Blueprint), so a resumed run plans again and skips what is done.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
from typing import Callable

import torch

from mixprune.candidates import STRUCTURED, CandidateId
from mixprune.models.cuts import changed_tensors
from mixprune.errors import CutError
from mixprune.executors import Executor, TaskFailure, run_tasks
from mixprune.models import numpy_state
from mixprune.progress import say
from mixprune.runs import CutWeights

from .cut import IMPORTANCES, Blueprint, GroupScores, cut_model, score_groups
from .inputs import Inputs, measure, recalibration_set
from .plans import CutBaselinePlan, Made, StrategyPlan, strategy_record
from .roles import Layer, discover_layers
from .signals import accumulate_gradients
from .strategies import STRATEGIES, rounded
from .structured import (baseline_ratios, cut_ratios, cuttable_layers, describe_cut, macs_reduction, shift_to_macs,
                         structured_ranges, within_caps)
from .tasks import StageWork, forget_work, made_once, serve_here, store_result, worker_inputs

Measure = Callable[[torch.nn.Module, str], dict]  # (model, label) -> eval.json's accuracies
StructuredPlan = StrategyPlan | CutBaselinePlan


@dataclasses.dataclass
class Structured:
    """Everything phase 1 made: the dense model's weightless copy, its group scores and layer ranges."""
    blueprint: Blueprint
    example: torch.Tensor
    scores: dict[str, GroupScores]
    layers: list[Layer]
    ranges: dict


def phase1(inputs: Inputs) -> Structured:
    """Group scores and ranges of the dense model (``inputs.model``, left as it is); ranges.json's
    ``structured`` block is written once and read back on resume. Raises CutError (one line) for a
    model Torch-Pruning cannot cut."""
    cfg, run, model = inputs.config, inputs.run, inputs.model
    label = inputs.spec.name
    example = torch.zeros(1, *inputs.spec.input_shape[1:])
    accumulate_gradients(model, inputs.splits.calibration, batch_size=cfg.batch_size)
    try:
        scores = {name: score_groups(model, example, name, round_to=cfg.round_to, label=label)
                  for name in IMPORTANCES.names()}
    finally:
        model.zero_grad(set_to_none=True)
    blueprint = Blueprint(model, example, label)
    layers = cuttable_layers(model)
    record = run.read_ranges() if run.ranges_json.is_file() else {}
    if "structured" in record:
        return Structured(blueprint, example, scores, layers, record["structured"]["layers"])
    say(f"structured phase 1: {len(scores) * len(cfg.macs_targets)} global channel runs of {label} "
        f"(MAC reductions {', '.join(f'{t:g}' for t in cfg.macs_targets)})")
    ranges, runs, achieved = structured_ranges(blueprint, scores, layers, inputs.table, targets=cfg.macs_targets,
                                               round_to=cfg.round_to)
    block = {"importances": list(scores), "macs_targets": list(cfg.macs_targets), "round_to": cfg.round_to,
             "layers": ranges, "global_runs": {k: rounded(v) for k, v in runs.items()}, "achieved": achieved}
    record.update({"model": inputs.spec.name, "rule_table": inputs.table.describe(), "structured": block})
    record.setdefault("layers", ranges)  # a structured-only run: its prunable layers are the cuttable ones
    run.write_ranges(record)
    return Structured(blueprint, example, scores, layers, ranges)


def plan_structured(inputs: Inputs, phase: Structured) -> tuple[list[StructuredPlan], dict[str, str]]:
    """Phase 2: the plans, and {cid: reason} of strategies that cannot be cut to their target."""
    cfg, blueprint = inputs.config, phase.blueprint
    per_strategy, failures = {}, {}  # the ranges are shared by the signals: each strategy is shifted once
    for strategy in inputs.table.strategies:
        sampled = within_caps(blueprint, STRATEGIES.get(strategy)(phase.layers, phase.ranges), cfg.round_to)
        try:
            ratios = sampled if cfg.macs_reduction is None else shift_to_macs(
                blueprint, sampled, cfg.macs_reduction, round_to=cfg.round_to)
        except CutError as exc:
            failures.update({str(CandidateId.mixmatch(STRUCTURED, s, strategy)): str(exc) for s in cfg.signals})
            continue
        reached = cfg.macs_reduction if cfg.macs_reduction is not None else \
            round(macs_reduction(blueprint, ratios, cfg.round_to), 4)
        per_strategy[strategy] = (sampled, ratios, reached)
    plans, matched = [], {}
    for signal in cfg.signals:
        for strategy, (sampled, ratios, reached) in per_strategy.items():
            ids = []
            for method in cfg.structured_baselines:
                cid = str(CandidateId.baseline(STRUCTURED, method, reached))
                ids.append(cid)
                matched.setdefault(cid, (method, reached))
            plans.append(StrategyPlan(STRUCTURED, signal, strategy, ratios=ratios, sampled=sampled,
                                      target=cfg.macs_reduction, baselines=tuple(ids)))
    for cid in sorted(matched):
        method, reached = matched[cid]
        try:
            ratios = baseline_ratios(blueprint, method, reached, phase.scores, round_to=cfg.round_to)
        except CutError as exc:
            failures[cid] = str(exc)
            continue
        plans.append(CutBaselinePlan(method=method, target=reached, ratios=ratios))
    return plans, failures


def _param_counts(model) -> dict[str, int]:
    return {layer.name: layer.params for layer in discover_layers(model)}


@dataclasses.dataclass
class Cutter:
    """Phase 3 for one structured plan at a time: cut the dense model, re-estimate BN, evaluate."""
    inputs: Inputs
    phase: Structured
    measure: Measure

    def evaluate(self, plan: StructuredPlan) -> Made:
        """The cut, its changed tensors and records (nothing is written here)."""
        inputs, cfg = self.inputs, self.inputs.config
        dense = inputs.model
        cut, record = cut_model(dense, self.phase.example, cut_ratios(plan.ratios), self.phase.scores[plan.importance],
                                round_to=cfg.round_to, label=plan.cid)
        described = describe_cut(self.phase.blueprint, cut, self.phase.example)
        replayed = {name: value.copy() for name, value in numpy_state(cut).items()}  # measure re-estimates in place
        accuracy = self.measure(cut, plan.cid)
        before, after = _param_counts(dense), _param_counts(cut)
        prunable = [layer.name for layer in inputs.layers]
        removed = 1 - sum(after[n] for n in prunable) / sum(before[n] for n in prunable)  # of the dense model's
        strategy = strategy_record(plan, plan.ratios, removed, {n: 1 - after[n] / before[n] for n in prunable},
                                   inputs.table.name, round_to=cfg.round_to, **described)
        weights = CutWeights(record.to_dict(), changed_tensors(numpy_state(cut), replayed))
        return Made(weights, strategy, inputs.eval_record(accuracy, finetune=None))


@dataclasses.dataclass(frozen=True)
class CutWork(StageWork):
    scores: dict[str, GroupScores]


def _worker_cutter(work: CutWork) -> Cutter:
    inputs = worker_inputs(work)
    example = torch.zeros(1, *work.spec.input_shape[1:])
    phase = Structured(Blueprint(inputs.model, example, work.spec.name), example, work.scores,
                       cuttable_layers(inputs.model), {})
    return Cutter(inputs, phase, functools.partial(measure, inputs, recalibration_set(inputs)))


def cut_candidate(work: CutWork, plan: StructuredPlan) -> Made | TaskFailure:
    """One structured candidate task (an executor runs it here or on a Ray worker); a plan
    Torch-Pruning cannot cut is a TaskFailure."""
    try:
        return made_once(work, _worker_cutter).evaluate(plan)
    except CutError as exc:
        return TaskFailure(plan.cid, str(exc))


def prune_structured(inputs: Inputs, measure: Measure, done: set[str],
                     executor: Executor) -> tuple[list[StructuredPlan], dict[str, dict], dict]:
    """Phases 1-3 on ``inputs.model`` (the dense model, left as it is): (plans, {cid: eval record},
    {cid: reason} of plans that could not be cut). Raises CutError when the model cannot be cut at all,
    or no plan could be."""
    run = inputs.run
    phase = phase1(inputs)
    plans, failures = plan_structured(inputs, phase)
    for cid, reason in failures.items():
        say(f"[yellow]warning: {reason}; {cid} is left out[/yellow]")
    evals = {plan.cid: run.candidate(plan.cid).read_eval() for plan in plans if plan.cid in done}
    todo = [plan for plan in plans if plan.cid not in done]
    if todo:
        work = CutWork(key=secrets.token_hex(8), config=inputs.config, spec=inputs.spec, splits=inputs.splits,
                       dense_state=numpy_state(inputs.model), scores=phase.scores)
        serve_here(work, Cutter(inputs, phase, measure))  # in this process the driver's model serves the tasks
        failures.update(run_tasks(
            executor, cut_candidate, work, todo,
            title="structured candidates" + (f" ({len(evals)} finished before)" if evals else ""),
            name=lambda p: p.cid, store=lambda plan, made: evals.__setitem__(plan.cid, store_result(run, made)),
            every=10))
        forget_work()
    made = [plan for plan in plans if plan.cid in evals]
    if not made:
        reasons = list(dict.fromkeys(failures.values()))
        more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
        raise CutError(f"no structured candidate of {inputs.spec.name} could be cut: {reasons[0]}{more}")
    return made, evals, failures
