"""The prune stage: dense model -> calibration -> ranges -> 30 candidates + matched baselines.

Reads a RunConfig, writes the run directory (mixprune.runs). Every candidate is finished
when its eval.json exists (written last), so a killed run resumes where it stopped and
produces the same files: the calibration scores are cached until every candidate is
written (then only the masks need them no more, and they are the largest file of a run),
ranges.json is read back, and every step after them is deterministic. Each step returns
what it made; every candidate is a plan (pruning/plans.py: its id, axes and record) that a task
makes and the driver stores, whichever its family (structured: pruning/structured_stage.py).
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import time

import numpy as np
import torch

from mixprune import masked
from mixprune.accuracy import selection_accuracy
from mixprune.candidates import FAMILIES, MIXMATCH, STRUCTURED, UNSTRUCTURED, Axes
from mixprune.config import MODE_FAMILIES, RunConfig
from mixprune.errors import CutError
from mixprune.executors import Executor, run_tasks
from mixprune.models import load_state, numpy_state
from mixprune.models.stored import build_stored, stored_model_of
from mixprune.progress import say
from mixprune.runs import PRUNE_STAGE, package_versions
from mixprune.training import train

from . import masks as masklib
from .finetune import finetune_task
from .inputs import Inputs, data_spec, measure, prepare, recalibration_set
from .plans import BaselinePlan, Made, Plan, StrategyPlan, strategy_record
from .ranges import layer_ranges
from .scores import BASELINES, ScoreFn, global_methods
from .signals import calibrate, score_all
from .strategies import STRATEGIES, rounded, shift_to_sparsity
from .structured_stage import prune_structured
from .tasks import StageWork, forget_work, made_once, serve_here, store_result, worker_inputs


def open_run_dir(inputs: Inputs, resume: bool) -> None:
    run = inputs.run
    run.claim(resume=resume)
    record = run.load()
    record.update({
        "config": inputs.config.to_dict(), "model": inputs.spec.to_dict(), "data": data_spec(inputs.config).to_dict(),
        "dataset": inputs.splits.describe(), "seed": inputs.config.seed, "rule_table": inputs.table.name,
        "versions": package_versions(),
    })
    record.setdefault("stages", {})
    run.save(record)


def dense_stage(inputs: Inputs) -> dict:
    """The dense model, trained unless a checkpoint or pretrained weights were given; returns its eval record."""
    dense = inputs.run.dense
    if dense.is_finished():
        load_state(inputs.model, dense.load_state(), str(dense.weights_file))
        return dense.read_eval()
    cfg = inputs.config
    training = None
    if not cfg.checkpoint and not cfg.pretrained:
        recipe = {**inputs.table.training, **({"lr": cfg.train_lr} if cfg.train_lr is not None else {})}
        say(f"training dense {cfg.model} for {cfg.train_epochs} epochs (Adam, {inputs.table.name} recipe: "
            + ", ".join(f"{k} {v}" for k, v in recipe.items()) + ")")
        torch.manual_seed(cfg.seed)
        training = train(inputs.model, inputs.splits.train, epochs=cfg.train_epochs, seed=cfg.seed,
                         tune_set=inputs.splits.tune, description="dense training", **recipe)
        training["recipe"] = recipe
    measured = inputs.accuracies(inputs.model, "dense")
    dense.save_weights(numpy_state(inputs.model))
    record = inputs.eval_record({**measured, "accuracy_raw": measured["accuracy"],
                                 "tune_accuracy_raw": measured["tune_accuracy"]},
                                source=cfg.checkpoint or ("pretrained" if cfg.pretrained else "trained"),
                                training=training)
    dense.write_eval(record)
    return record


def calibration_stage(inputs: Inputs) -> dict:
    """{"grad": {name: g}, "hg": {name: Hg}} of every prunable weight, computed once and cached."""
    run, names = inputs.run, [layer.name for layer in inputs.layers]
    if run.scores_file.is_file():
        flat = {key: torch.from_numpy(array) for key, array in run.load_scores().items()}
    else:
        result = calibrate(inputs.model, inputs.splits.calibration, names, batch_size=inputs.config.batch_size)
        flat = {f"{kind}/{name}": t for kind, per in result.items() for name, t in per.items()}
        run.save_scores(numpy_state(flat))
    return {kind: {name: flat[f"{kind}/{name}"] for name in names} for kind in ("grad", "hg")}


def ranges_stage(inputs: Inputs, dense_weights: dict, calibration: dict) -> dict:
    """Phase 1: every layer's [min, max] range from the global baselines at the target sparsities."""
    runs = {}
    methods = global_methods()
    for method in methods:
        scores = score_all(BASELINES.get(method).score, dense_weights, calibration)
        for target in inputs.config.targets:
            runs[f"{method}@{target:g}"] = masklib.mask_ratios(masklib.global_masks(scores, target))
    ranges = layer_ranges(inputs.layers, runs, inputs.table)
    inputs.run.write_ranges({
        "model": inputs.spec.name, "rule_table": inputs.table.describe(), "targets": list(inputs.config.targets),
        "methods": list(methods), "layers": ranges,
        "global_runs": {label: rounded(ratios) for label, ratios in runs.items()}})
    return ranges


def plan_candidates(inputs: Inputs, ranges: dict) -> list[Plan]:
    """Phase 2: ten strategies per signal, and the baselines matched to their achieved sparsities."""
    cfg = inputs.config
    frozen = {name for name, r in ranges.items() if r["max"] == 0.0}
    plans, matched = [], {}
    for signal in cfg.signals:
        for strategy in inputs.table.strategies:
            sampled = STRATEGIES.get(strategy)(inputs.layers, ranges)
            ratios = sampled if cfg.sparsity is None else shift_to_sparsity(sampled, inputs.sizes, cfg.sparsity, frozen)
            sparsity = round(masklib.achieved_sparsity(ratios, inputs.sizes), 4)
            baselines = [BaselinePlan(method=method, target=sparsity) for method in cfg.baselines]
            matched.update({plan.cid: plan for plan in baselines})
            plans.append(StrategyPlan(UNSTRUCTURED, signal, strategy, ratios=ratios, sampled=sampled,
                                      target=cfg.sparsity, baselines=tuple(plan.cid for plan in baselines)))
    return plans + [matched[cid] for cid in sorted(matched)]


@dataclasses.dataclass
class Pruner:
    """Phase 3 for one plan at a time: mask the dense model, re-estimate normalization, evaluate."""
    inputs: Inputs
    dense_state: dict  # torch tensors, restored before every candidate
    dense_weights: dict  # the prunable ones
    calibration: dict
    recal_set: object
    _scores: dict = dataclasses.field(default_factory=dict)  # per score function, computed once

    def scores(self, fn: ScoreFn) -> dict:
        if fn not in self._scores:
            self._scores[fn] = score_all(fn, self.dense_weights, self.calibration)
        return self._scores[fn]

    def evaluate(self, plan: Plan) -> Made:
        """The candidate's stored weights and records (nothing is written here)."""
        inputs = self.inputs
        inputs.model.load_state_dict(self.dense_state)
        params = inputs.params
        masks = plan.masks(self.scores(plan.score))
        masklib.apply_masks(params, masks)
        measured, global_sparsity = masklib.measured_sparsity(params)
        accuracy = measure(inputs, self.recal_set, inputs.model, plan.cid)
        stored = masked.split(numpy_state(inputs.model), numpy_state(self.dense_state), list(masks))
        strategy = strategy_record(plan, masklib.mask_ratios(masks), global_sparsity, measured, inputs.table.name)
        return Made(stored, strategy, inputs.eval_record(accuracy, finetune=None))


@dataclasses.dataclass(frozen=True)
class CandidateWork(StageWork):
    calibration: dict  # {"grad" | "hg": {name: numpy array}}


def _worker_pruner(work: CandidateWork) -> Pruner:
    inputs = worker_inputs(work)
    dense_state = {name: value.detach().clone() for name, value in inputs.model.state_dict().items()}
    calibration = {kind: {name: torch.from_numpy(np.array(v)) for name, v in per.items()}
                   for kind, per in work.calibration.items()}
    dense_weights = {name: p.detach().clone() for name, p in inputs.params.items()}
    return Pruner(inputs, dense_state, dense_weights, calibration, recalibration_set(inputs))


def evaluate_candidate(work: CandidateWork, plan: Plan) -> Made:
    """One candidate task (an executor runs it here or on a Ray worker)."""
    return made_once(work, _worker_pruner).evaluate(plan)


def finetune_selection(config: RunConfig, plans: list, evals: dict[str, dict]) -> list[str]:
    """Per family, the best ``finetune_top`` Mix-and-Match candidates by tune accuracy, plus their
    matched baselines."""
    chosen = []
    for family in FAMILIES:
        top = sorted((p for p in plans if p.axes == Axes(MIXMATCH, family)),
                     key=lambda p: (-evals[p.cid]["tune_accuracy"], p.cid))
        for plan in top[: config.finetune_top]:
            chosen.extend(cid for cid in [plan.cid, *plan.baselines] if cid in evals and cid not in chosen)
    return chosen


def finetune_candidates(inputs: Inputs, cids: list[str], executor: Executor) -> dict[str, dict]:
    """Fine-tune ``cids`` on ``executor`` (a masked candidate under its masks); returns their updated
    eval records. The driver reads each candidate into its job and writes what comes back."""
    run, evals, jobs = inputs.run, {}, []
    for cid in cids:
        folder = run.candidate(cid)
        record = folder.read_eval()
        if record["accuracy_finetuned"] is not None:
            evals[cid] = record
        elif folder.weights_digest() != record["weights_sha256"]:
            # killed after the fine-tuned weights landed but before eval.json: just measure them
            model = build_stored(inputs.spec, folder)
            evals[cid] = _finetuned(folder, record, inputs.accuracies(model, cid, "_finetuned"), {"resumed": True},
                                    folder.weights_digest())
        else:
            jobs.append(stored_model_of(folder))
    def store(job, result) -> None:
        folder = run.candidate(job.cid)
        evals[job.cid] = _finetuned(folder, folder.read_eval(), result.accuracies, result.history,
                                    job.store(folder, result.weights))

    if jobs:
        work = StageWork(key=secrets.token_hex(8), config=inputs.config, spec=inputs.spec, splits=inputs.splits,
                         dense_state=run.dense_state())
        run_tasks(executor, finetune_task, work, jobs, title="fine-tuning", name=lambda job: job.cid, store=store,
                  every=10)
    return {cid: evals[cid] for cid in cids}


def _finetuned(folder, record: dict, accuracies: dict, history: dict, digest: str) -> dict:
    record = {**record, **accuracies, "finetune": history, "weights_sha256": digest}
    folder.write_eval(record)
    return record


def prune_unstructured(inputs: Inputs, dense_state: dict, done: set[str], recal_set, lap,
                       executor: Executor) -> tuple[list[Plan], dict]:
    """Phases 1-3 of unstructured Mix-and-Match, phase 3 on ``executor``: (plans, {cid: eval record});
    ``inputs.model`` ends as the last candidate evaluated here left it."""
    run = inputs.run
    dense_weights = {name: p.detach().clone() for name, p in inputs.params.items()}
    calibration = None
    if run.ranges_json.is_file():  # a resumed run keeps the ranges its finished candidates were made from
        ranges = run.read_ranges()["layers"]
    else:
        calibration = calibration_stage(inputs)
        ranges = ranges_stage(inputs, dense_weights, calibration)
    plans = plan_candidates(inputs, ranges)
    todo = [plan for plan in plans if plan.cid not in done]
    if todo and calibration is None:
        calibration = calibration_stage(inputs)
    lap("calibration and ranges")
    evals = {plan.cid: run.candidate(plan.cid).read_eval() for plan in plans if plan.cid in done}
    if todo:
        work = CandidateWork(key=secrets.token_hex(8), config=inputs.config, spec=inputs.spec, splits=inputs.splits,
                             dense_state=numpy_state(dense_state),
                             calibration={kind: numpy_state(per) for kind, per in calibration.items()})
        # in this process the driver's model, scores and data serve the tasks
        serve_here(work, Pruner(inputs, dense_state=dense_state, dense_weights=dense_weights,
                                calibration=calibration, recal_set=recal_set))
        run_tasks(executor, evaluate_candidate, work, todo,
                  title="candidates" + (f" ({len(evals)} finished before)" if evals else ""), name=lambda p: p.cid,
                  store=lambda plan, made: evals.__setitem__(plan.cid, store_result(run, made)), every=10)
        forget_work()
    run.drop_scores()
    lap("candidates")
    return plans, evals


def run_prune(config: RunConfig, resume: bool = False, executor: Executor | None = None) -> dict:
    """The whole prune stage on ``executor`` (default: the one ``config`` names, opened and closed
    here); returns a summary with timings per phase."""
    if executor is not None:
        return _run_prune(config, resume, executor)
    with config.open_executor() as executor:
        return _run_prune(config, resume, executor)


def _run_prune(config: RunConfig, resume: bool, executor: Executor) -> dict:
    timings = {}
    start = time.perf_counter()
    inputs = prepare(config)
    open_run_dir(inputs, resume)
    splits, run = inputs.splits, inputs.run
    say(f"data: {len(splits.train)} training images, {len(splits.tune)} tune images (every choice; one image = "
        f"{100 / len(splits.tune):.2f} accuracy points), {len(splits.val)} held-out images (reported)")
    run.set_stage(PRUNE_STAGE, "running")

    def lap(name):
        nonlocal start
        now = time.perf_counter()
        timings[name] = round(now - start, 2)
        start = now

    lap("prepare")
    dense = dense_stage(inputs)
    dense_state = {k: v.clone() for k, v in inputs.model.state_dict().items()}
    lap("dense")
    done = set(run.candidate_ids())
    families = MODE_FAMILIES[config.mode]
    recal_set = recalibration_set(inputs)
    plans, evals, structured = [], {}, {}
    if "unstructured" in families:
        plans, evals = prune_unstructured(inputs, dense_state, done, recal_set, lap, executor)
        inputs.model.load_state_dict(dense_state)
    if "structured" in families:
        try:
            made, made_evals, failures = prune_structured(
                inputs, functools.partial(measure, inputs, recal_set), done, executor)
        except CutError as exc:
            if "unstructured" not in families:
                raise
            say(f"[yellow]structured mode: {exc}; the run goes on with unstructured candidates only[/yellow]")
            structured = {"skipped": str(exc)}
        else:
            plans, evals = plans + made, {**evals, **made_evals}
            structured = {"failures": failures} if failures else {}
        lap("structured")
    say(f"pruned {len(plans)} candidates ({len(done & set(evals))} resumed)")
    finetuned = []
    if config.finetune_epochs > 0 and config.finetune_top > 0:
        finetuned = finetune_selection(config, plans, evals)
        evals.update(finetune_candidates(inputs, finetuned, executor))
    lap("finetune")
    methods = [p for p in plans if p.axes.method == MIXMATCH]
    summary = {
        "dense_accuracy": dense["accuracy"], "mode": config.mode, "candidates": len(plans),
        "mixmatch": sum(p.axes == Axes(MIXMATCH, UNSTRUCTURED) for p in plans),
        "structured": sum(p.axes == Axes(MIXMATCH, STRUCTURED) for p in plans), "baselines": len(plans) - len(methods),
        "finetuned": finetuned, "resumed": len(done & set(evals)), "timings_s": timings,
        "best": min(methods, key=lambda p: (-selection_accuracy(evals[p.cid]), p.cid)).cid,
        **({"structured_mode": structured} if structured else {}),
    }
    run.set_stage(PRUNE_STAGE, "done", summary=summary)
    return summary
