"""`mixprune run`: prune -> export -> bench on every device -> rank + report -> release.

Every stage writes the run directory and marks itself done in run.json, so ``--resume``
continues a killed run: the prune stage resumes candidate by candidate, exports whose
weights did not change are reused, a device whose benchmark finished is not measured again
(an unfinished one is measured again in full: latencies are compared only within one
benchmark run), and ranking and release are cheap and deterministic.

To fit the time budget, `run` exports and benchmarks only the ``export_top`` best
candidates of each family (unstructured, structured) that pass the accuracy constraint
(``max_drop``); the others stay in the ranking with their reason. "Best" uses what is known
before export: tune accuracy for the latency and memory objectives (unstructured candidates
all run at the dense model's speed on onnxruntime's CPU provider, and structured ones cut to
one --macs-reduction at about the same speed, so accuracy decides within a family), global
sparsity for the size objective. `mixprune export` / `bench` on the directory still do every candidate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from .accuracy import SELECTION_SPLIT, accuracy_of
from .candidates import Axes
from .config import RunConfig
from .errors import ExportError
from .progress import say
from .release.ranking import rank_run, require_choice
from .release.report import write_report
from .runs import DENSE, EXPORT_STAGE, PRUNE_STAGE, RUN_STAGE, RunDir, bench_stage


def default_out(config: RunConfig) -> str:
    data = Path(config.data).name if config.data != "digits" else "digits"
    return str(Path("runs") / f"{config.model}-{data}")


def select_for_export(run: RunDir, config: RunConfig) -> tuple[list[str], dict[str, str]]:
    """The candidates `run` exports (the ``export_top`` best of each family), and a note for each one
    within --max-drop it leaves out."""
    dense, _ = accuracy_of(run.dense.read_eval(), SELECTION_SPLIT)
    families: dict[str, list] = {}
    for cid, folder in run.torch_models().items():
        if cid == DENSE:
            continue
        accuracy, _ = accuracy_of(folder.read_eval(), SELECTION_SPLIT)
        if (dense - accuracy) * 100 <= config.max_drop + 1e-9:
            strategy = folder.read_strategy()
            families.setdefault(Axes.of(strategy).family, []).append(
                (cid, accuracy, strategy["global_sparsity"]))
    proxy = "global sparsity" if config.objective == "size" else "tune accuracy"
    chosen, left = [], []
    for family in sorted(families):
        passing = families[family]
        passing.sort(key=(lambda c: (-c[2], -c[1], c[0])) if config.objective == "size" else (lambda c: (-c[1], c[0])))
        chosen += [c[0] for c in passing[: config.export_top]]
        left += [c[0] for c in passing[config.export_top:]]
    note = (f"not exported by `mixprune run` (of each family, unstructured and structured, it exports the "
            f"{config.export_top} best by {proxy} within --max-drop, --export-top); run "
            f"`mixprune export {run.root} --candidate CID`, bench, then `mixprune rank`")
    return chosen, {cid: note.replace("CID", cid) for cid in left}


def rank_and_report(run_dir, *, max_drop: float, devices=(), objective: str = "latency",
                    export_notes: dict | None = None) -> dict:
    """ranking.json, then report.html and pareto.png drawn from it; raises when nothing was chosen."""
    ranking = rank_run(run_dir, max_drop=max_drop, devices=devices, objective=objective, export_notes=export_notes)
    write_report(run_dir)
    require_choice(ranking, run_dir)
    return ranking


def with_device_rounding(config: RunConfig, profiles: list) -> RunConfig:
    """``config`` with the channel rounding of structured cuts that suits every device profile of the
    run (the least common multiple of their ``channel_multiple``), unless --round-to set one."""
    stating = [p for p in profiles if p.channel_multiple]
    if config.round_to is not None or not stating:
        return config
    config = dataclasses.replace(config, round_to=math.lcm(*(p.channel_multiple for p in stating)))
    say(f"structured cuts keep channel counts multiples of {config.round_to} "
        f"(channel_multiple of {', '.join(p.name for p in stating)})")
    return config


def run_pipeline(config: RunConfig, resume: bool = False, force: bool = False) -> dict:
    """Every stage; returns {ranking, bundle, timings_s, out}."""
    from .benchmarks.bench import agent_config, bench_run_dir
    from .devices.profiles import load_profile
    from .exporter.stage import ExportOptions, export_run
    from .pruning.stage import run_prune
    from .release.bundle import write_bundle

    root = Path(config.out)
    profiles = [load_profile(name) for name in config.devices]  # bad device names fail before any work
    config = with_device_rounding(config, profiles)
    run = RunDir(root)
    run.claim(resume=resume, force=force)
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 2)
        return result

    with config.open_executor(tuple(p.name for p in profiles)) as executor:  # once for every stage
        if run.stage_status(PRUNE_STAGE) == "done":
            say("prune: done before, kept")
        else:
            summary = timed(PRUNE_STAGE, run_prune, config, resume=run.exists(), executor=executor)
            timings.update({f"prune.{k}": v for k, v in summary["timings_s"].items()})
        selected, notes = select_for_export(run, config)
        say(f"exporting the dense model and {len(selected)} candidate(s) within {config.max_drop:g} points of it")
        failures = timed(EXPORT_STAGE, export_run, root, [DENSE, *selected],
                         ExportOptions(storage=config.storage, quantize=config.quantize), executor).failures
        if DENSE in failures:
            raise ExportError(f"the dense model cannot be exported, so no candidate can be measured against it: "
                              f"{failures[DENSE]}")
        notes.update({cid: f"export failed: {why}" for cid, why in failures.items()})
        for profile in profiles:
            stage = bench_stage(profile.name)
            if run.stage_status(stage) == "done" and resume:
                say(f"bench on {profile.name}: done before, kept")
                continue
            bench_config = agent_config(profile, runs=config.bench_runs, warmup=config.bench_warmup)
            timed(stage, bench_run_dir, root, profile, bench_config, executor)  # it records its own status
    ranking = timed("rank", rank_and_report, root, max_drop=config.max_drop, devices=config.devices,
                    objective=config.objective, export_notes=notes)
    bundle = timed("release", write_bundle, root, "best", force=True)
    run.set_stage(RUN_STAGE, "done", timings_s=timings, chosen=ranking["chosen"], bundle=str(bundle["path"]))
    return {"ranking": ranking, "bundle": bundle, "timings_s": timings, "out": root}
