"""The prune stage: dense model -> calibration -> ranges -> 30 candidates + matched baselines.

Reads a RunConfig, writes the run directory described in ARCHITECTURE.md. Every candidate is
finished when its eval.json exists (written last), so a killed run resumes where it
stopped and produces the same files: the calibration scores are cached and every step
after them is deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import zlib
from pathlib import Path

import torch

from mixprune.accuracy import selection_accuracy
from mixprune.config import RunConfig
from mixprune.data import DataSpec, Splits, load_splits
from mixprune.errors import RunDirError
from mixprune.models import ModelSpec, build_model, load_weights, save_weights
from mixprune.progress import Counter, progress_bar, say
from mixprune.runs import RunDir, atomic_write_json, clean_stale_temporaries, package_versions, read_json
from mixprune.training import evaluate, recalibrate_batchnorm, train

from . import masks as masklib
from .finetune import finetune
from .ranges import RuleTable, get_table, layer_ranges
from .roles import Layer, discover_layers, prunable_parameters
from .signals import BASELINE_SCORES, SIGNALS, calibrate, score_all
from .strategies import STRATEGIES, shift_to_sparsity

GLOBAL_RANGE_METHODS = ("mag", "snip", "grasp")  # Phase 1: the paper's three global baselines


@dataclasses.dataclass
class CandidatePlan:
    cid: str
    kind: str  # "mixmatch" | "baseline"
    signal: str  # mixmatch: magnitude|gradient|product; baseline: mag|snip|grasp|uniform
    strategy: str
    ratios: dict | None = None  # per-layer targets (mixmatch, uniform)
    sampled: dict | None = None  # ratios before the shift to --sparsity
    global_target: float | None = None  # global baselines
    baselines: list = dataclasses.field(default_factory=list)  # matched baseline cids


@dataclasses.dataclass
class Workspace:
    """What every candidate step needs, loaded once."""
    config: RunConfig
    run: RunDir
    spec: ModelSpec
    splits: Splits
    model: torch.nn.Module
    layers: list[Layer]
    table: RuleTable
    dense_state: dict = None
    calibration: dict = None
    recal_set: object = None

    @property
    def params(self) -> dict:
        return prunable_parameters(self.model, self.layers)

    @property
    def sizes(self) -> dict[str, int]:
        return {layer.name: layer.params for layer in self.layers}


def baseline_cid(method: str, sparsity: float) -> str:
    return f"base-{method}-s{sparsity * 100:.2f}"


def prepare(config: RunConfig) -> Workspace:
    """Validate every input before anything is written: model, data, checkpoint, rule table."""
    table = get_table(config.model, config.rules)
    splits = load_splits(DataSpec(source=config.data, img_size=config.img_size, calib_fraction=config.calib_fraction))
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
    run = RunDir(config.out)
    return Workspace(config=config, run=run, spec=spec, splits=splits, model=model, layers=layers, table=table)


def open_run_dir(ws: Workspace, resume: bool) -> None:
    run = ws.run
    if run.exists() and not resume:
        raise RunDirError(f"{run.root} already holds a run; pass --resume to continue it or choose another --out")
    if not run.exists() and run.root.is_dir() and any(run.root.iterdir()):
        raise RunDirError(f"{run.root} exists and is not a mixprune run directory; choose another --out")
    clean_stale_temporaries(run.root)
    record = run.load()
    record.update({
        "config": ws.config.to_dict(), "model": ws.spec.to_dict(),
        "data": DataSpec(source=ws.config.data, img_size=ws.config.img_size,
                         calib_fraction=ws.config.calib_fraction).to_dict(),
        "dataset": ws.splits.describe(), "seed": ws.config.seed, "rule_table": ws.table.name,
        "versions": package_versions(),
    })
    record.setdefault("stages", {})
    run.save(record)


def dense_stage(ws: Workspace) -> dict:
    dense = ws.run.dense_dir
    if (dense / "eval.json").is_file():
        load_weights(ws.model, dense / "weights.safetensors")
        return read_json(dense / "eval.json")
    cfg = ws.config
    training = None
    if not cfg.checkpoint and not cfg.pretrained:
        recipe = {**ws.table.training, **({"lr": cfg.train_lr} if cfg.train_lr is not None else {})}
        say(f"training dense {cfg.model} for {cfg.train_epochs} epochs (Adam, {ws.table.name} recipe: "
            + ", ".join(f"{k} {v}" for k, v in recipe.items()) + ")")
        torch.manual_seed(cfg.seed)
        training = train(ws.model, ws.splits.train, epochs=cfg.train_epochs, seed=cfg.seed, tune_set=ws.splits.tune,
                         description="dense training", **recipe)
        training["recipe"] = recipe
    measured = _accuracies(ws, "dense")
    save_weights(ws.model, dense / "weights.safetensors")
    record = {**measured, "accuracy_raw": measured["accuracy"], "tune_accuracy_raw": measured["tune_accuracy"],
              "accuracy_finetuned": None, "tune_accuracy_finetuned": None, **_sample_counts(ws),
              "source": cfg.checkpoint or ("pretrained" if cfg.pretrained else "trained"), "training": training}
    atomic_write_json(dense / "eval.json", record)
    return record


def calibration_stage(ws: Workspace) -> None:
    from safetensors.torch import load_file

    cache = ws.run.calibration_dir / "scores.safetensors"
    names = [layer.name for layer in ws.layers]
    if cache.is_file():
        flat = load_file(str(cache))
    else:
        result = calibrate(ws.model, ws.splits.calibration, names, batch_size=ws.config.batch_size)
        flat = {f"{kind}/{name}": t for kind, per in result.items() for name, t in per.items()}
        save_weights(flat, cache)
    ws.calibration = {kind: {name: flat[f"{kind}/{name}"] for name in names} for kind in ("grad", "hg")}


def ranges_stage(ws: Workspace) -> dict:
    dense_weights = {name: p.detach() for name, p in ws.params.items()}
    runs = {}
    for method in GLOBAL_RANGE_METHODS:
        scores = score_all(BASELINE_SCORES.get(method), dense_weights, ws.calibration)
        for target in ws.config.targets:
            runs[f"{method}@{target:g}"] = masklib.mask_ratios(masklib.global_masks(scores, target))
    ranges = layer_ranges(ws.layers, runs, ws.table)
    record = {"model": ws.spec.name, "rule_table": ws.table.describe(), "targets": list(ws.config.targets),
              "methods": list(GLOBAL_RANGE_METHODS), "layers": ranges,
              "global_runs": {label: {k: round(v, 6) for k, v in ratios.items()} for label, ratios in runs.items()}}
    atomic_write_json(ws.run.ranges_json, record)
    return ranges


def plan_candidates(ws: Workspace, ranges: dict) -> list[CandidatePlan]:
    cfg = ws.config
    frozen = {name for name, r in ranges.items() if r["max"] == 0.0}
    plans, baseline_targets = [], {}
    for signal in cfg.signals:
        for strategy in ws.table.strategies:
            sampled = STRATEGIES.get(strategy)(ws.layers, ranges)
            ratios = sampled if cfg.sparsity is None else shift_to_sparsity(sampled, ws.sizes, cfg.sparsity, frozen)
            sparsity = round(masklib.achieved_sparsity(ratios, ws.sizes), 4)
            matched = [baseline_cid(method, sparsity) for method in cfg.baselines]
            baseline_targets.update({cid: (method, sparsity) for cid, method in zip(matched, cfg.baselines)})
            plans.append(CandidatePlan(cid=f"mm-{signal}-{strategy}", kind="mixmatch", signal=signal,
                                       strategy=strategy, ratios=ratios,
                                       sampled=sampled if cfg.sparsity is not None else None, baselines=matched))
    for cid, (method, sparsity) in sorted(baseline_targets.items()):
        if method == "uniform":
            plans.append(CandidatePlan(cid=cid, kind="baseline", signal=method, strategy="uniform",
                                       ratios={layer.name: sparsity for layer in ws.layers}))
        else:
            plans.append(CandidatePlan(cid=cid, kind="baseline", signal=method, strategy="global",
                                       global_target=sparsity))
    return plans


def _masks_for(ws: Workspace, plan: CandidatePlan, dense_weights: dict, score_cache: dict) -> dict:
    key = (plan.kind, plan.signal)
    if key not in score_cache:
        fn = SIGNALS.get(plan.signal) if plan.kind == "mixmatch" else BASELINE_SCORES.get(plan.signal)
        score_cache[key] = score_all(fn, dense_weights, ws.calibration)
    scores = score_cache[key]
    if plan.global_target is not None:
        return masklib.global_masks(scores, plan.global_target)
    return masklib.layer_masks(scores, plan.ratios)


def _sample_counts(ws: Workspace) -> dict:
    return {"samples": len(ws.splits.val), "tune_samples": len(ws.splits.tune)}


def _accuracies(ws: Workspace, label: str, suffix: str = "") -> dict:
    """Held-out and tune accuracy of the model as it is, under eval.json's keys ending in ``suffix``."""
    return {f"accuracy{suffix}": evaluate(ws.model, ws.splits.val, description=f"{label}: accuracy"),
            f"tune_accuracy{suffix}": evaluate(ws.model, ws.splits.tune, description=f"{label}: tune accuracy")}


def _measure(ws: Workspace, label: str) -> dict:
    """Accuracies before (``*_raw``) and after normalization re-estimation, and whether it ran."""
    raw = _accuracies(ws, label, "_raw")
    if not ws.config.recalibrate or not recalibrate_batchnorm(ws.model, ws.recal_set, description=f"{label}: re-estimate BN"):
        return {"accuracy": raw["accuracy_raw"], "tune_accuracy": raw["tune_accuracy_raw"], **raw, "recalibrated": False}
    return {**_accuracies(ws, f"{label} after BN"), **raw, "recalibrated": True}


def prune_candidate(ws: Workspace, plan: CandidatePlan, dense_weights: dict, score_cache: dict) -> dict:
    out = ws.run.candidate_dir(plan.cid)
    ws.model.load_state_dict(ws.dense_state)
    params = ws.params
    masks = _masks_for(ws, plan, dense_weights, score_cache)
    masklib.apply_masks(params, masks)
    measured, global_sparsity = masklib.measured_sparsity(params)
    measured_accuracy = _measure(ws, plan.cid)
    weights_sha256 = save_weights(ws.model, out / "weights.safetensors")
    targets = plan.ratios if plan.ratios is not None else masklib.mask_ratios(masks)
    strategy = {
        "cid": plan.cid, "kind": plan.kind, "signal": plan.signal, "strategy": plan.strategy,
        "layers": {name: round(targets[name], 6) for name in targets},
        "global_sparsity": round(global_sparsity, 6),
        "measured": {name: round(v, 6) for name, v in measured.items()},
        "rule_table": ws.table.name,
    }
    if plan.sampled is not None:
        strategy["sampled"] = {name: round(v, 6) for name, v in plan.sampled.items()}
        strategy["target_sparsity"] = ws.config.sparsity
    if plan.global_target is not None:
        strategy["global_target"] = plan.global_target
    if plan.baselines:
        strategy["baselines"] = plan.baselines
    atomic_write_json(out / "strategy.json", strategy)
    record = {**measured_accuracy, "accuracy_finetuned": None, "tune_accuracy_finetuned": None,
              **_sample_counts(ws), "finetune": None, "weights_sha256": weights_sha256}
    atomic_write_json(out / "eval.json", record)
    return record


def finetune_selection(ws: Workspace, plans: list[CandidatePlan], evals: dict[str, dict]) -> list[str]:
    """The best ``finetune_top`` Mix-and-Match candidates by tune accuracy, plus their matched baselines."""
    top = sorted((p for p in plans if p.kind == "mixmatch"), key=lambda p: (-evals[p.cid]["tune_accuracy"], p.cid))
    chosen = []
    for plan in top[: ws.config.finetune_top]:
        for cid in [plan.cid, *plan.baselines]:
            if cid not in chosen:
                chosen.append(cid)
    return chosen


def finetune_candidate(ws: Workspace, cid: str) -> dict:
    out = ws.run.candidate_dir(cid)
    record = read_json(out / "eval.json")
    if record["accuracy_finetuned"] is not None:
        return record
    weights = out / "weights.safetensors"
    load_weights(ws.model, weights)
    weights_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    if weights_sha256 == record["weights_sha256"]:
        cfg = ws.config
        torch.manual_seed(cfg.seed + zlib.crc32(cid.encode()))
        history = finetune(ws.model, ws.params, ws.splits.train, ws.splits.tune, epochs=cfg.finetune_epochs,
                           lr=cfg.finetune_lr, patience=cfg.finetune_patience, batch_size=cfg.batch_size,
                           seed=cfg.seed, description=f"fine-tune {cid}")
        weights_sha256 = save_weights(ws.model, weights)
    else:  # killed after the fine-tuned weights landed but before eval.json: just measure them
        history = {"resumed": True}
    finetuned = _accuracies(ws, cid, "_finetuned")
    record.update(**finetuned, finetune=history, weights_sha256=weights_sha256)
    atomic_write_json(out / "eval.json", record)
    return record


def run_prune(config: RunConfig, resume: bool = False) -> dict:
    """The whole prune stage; returns a summary with timings per phase."""
    timings = {}
    start = time.perf_counter()
    ws = prepare(config)
    open_run_dir(ws, resume)
    splits = ws.splits
    say(f"data: {len(splits.train)} training images, {len(splits.tune)} tune images (every choice; one image = "
        f"{100 / len(splits.tune):.2f} accuracy points), {len(splits.val)} held-out images (reported)")
    ws.run.set_stage("prune", "running")

    def lap(name):
        nonlocal start
        now = time.perf_counter()
        timings[name] = round(now - start, 2)
        start = now

    lap("prepare")
    dense = dense_stage(ws)
    ws.dense_state = {k: v.clone() for k, v in ws.model.state_dict().items()}
    lap("dense")
    calibration_stage(ws)
    lap("calibration")
    ranges = ranges_stage(ws)
    plans = plan_candidates(ws, ranges)
    lap("ranges")
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(ws.splits.train), generator=generator)[: config.recal_samples].tolist()
    ws.recal_set = torch.utils.data.Subset(ws.splits.train, sorted(order))
    dense_weights = {name: p.detach().clone() for name, p in ws.params.items()}
    evals, score_cache = {}, {}
    done = set(ws.run.candidate_ids())
    with progress_bar() as progress:
        counter = Counter(progress, "candidates", total=len(plans))
        for plan in plans:
            if plan.cid in done:
                evals[plan.cid] = read_json(ws.run.candidate_dir(plan.cid) / "eval.json")
            else:
                evals[plan.cid] = prune_candidate(ws, plan, dense_weights, score_cache)
            counter.advance(plan.cid)
    say(f"pruned {len(plans)} candidates ({len(done)} resumed)")
    lap("candidates")
    finetuned = []
    if config.finetune_epochs > 0 and config.finetune_top > 0:
        finetuned = finetune_selection(ws, plans, evals)
        for cid in finetuned:
            evals[cid] = finetune_candidate(ws, cid)
    lap("finetune")
    summary = {
        "dense_accuracy": dense["accuracy"], "candidates": len(plans),
        "mixmatch": sum(p.kind == "mixmatch" for p in plans), "baselines": sum(p.kind == "baseline" for p in plans),
        "finetuned": finetuned, "resumed": len(done), "timings_s": timings,
        "best": min((p for p in plans if p.kind == "mixmatch"),
                    key=lambda p: (-selection_accuracy(evals[p.cid]), p.cid)).cid,
    }
    ws.run.set_stage("prune", "done", summary=summary)
    return summary
