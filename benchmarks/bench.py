"""Benchmark an ONNX file, or every exported model of a run directory, on one device profile."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from pathlib import Path

from mixprune.candidates import UNSTRUCTURED, Axes
from mixprune.devices.profiles import Profile
from mixprune.errors import BenchmarkError, RunDirError
from mixprune.executors import Executor, device_resource, given_or_local, run_tasks
from mixprune.progress import say
from mixprune.runs import DENSE, ModelDir, RunDir, bench_stage

from . import paired
from .records import UNSTRUCTURED_NOTE, make_record


def agent_config(profile: Profile, *, runs: int | None = None, warmup: int | None = None,
                 threads: int | None = None, shapes: dict[str, list[int]] | None = None) -> dict:
    """What the agent gets: the profile's settings, with command-line overrides on top."""
    return {
        "runs": profile.runs if runs is None else runs,
        "warmup": profile.warmup if warmup is None else warmup,
        "rounds": profile.rounds,
        "intra_op_threads": profile.intra_op_threads if threads is None else threads,
        "inter_op_threads": profile.inter_op_threads,
        "allow_spinning": profile.allow_spinning,
        "graph_optimization_level": profile.graph_optimization_level,
        "execution_providers": list(profile.execution_providers),
        "shapes": {**profile.shapes, **(shapes or {})},
    }


def check_onnx_file(path: Path) -> None:
    """Fail early, before anything is copied to a device, on a missing or non-ONNX file."""
    if not path.is_file():
        raise BenchmarkError(f"model file {path} does not exist")
    import onnx  # torch-free; only the protobuf parser is needed here

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BenchmarkError(f"{path} is not an ONNX model (it does not parse: {detail})") from exc
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise BenchmarkError(f"{path} is not an ONNX model (no IR version, opset or graph nodes)")


def bench_model(path: str | os.PathLike, profile: Profile, config: dict, executor: Executor | None = None) -> dict:
    """Measure one ONNX file in a fresh agent process on ``profile``'s device (a ``bench_task`` on
    ``executor``, default this process); return its record."""
    path = Path(path)
    check_onnx_file(path)
    with given_or_local(executor) as executor:
        work = BenchWork(profile, {path.stem: (path.name, path.read_bytes())})
        [(_, raw)] = executor.map(bench_task, work, [BenchJob((path.stem,), config)], resources=_device(work))
    return make_record(raw, profile, str(path))


def _unstructured_note(model_dir: ModelDir) -> dict:
    info = model_dir.read_strategy()
    if info is None:
        return {}
    # INT8 variants run integer kernels: the note on zeros and dense kernels is not theirs
    axes = Axes.of(info)
    sparse = (info.get("global_sparsity") or 0) > 0 and axes.family == UNSTRUCTURED and not axes.is_int8
    return {"note": UNSTRUCTURED_NOTE} if sparse else {}


def _export_shapes(model_dir: ModelDir) -> dict[str, list[int]]:
    """mixprune exports a dynamic batch dimension (export record ``inputs``); a run directory is
    benchmarked one image at a time, batch 1, unless --shape or the profile says otherwise."""
    inputs = (model_dir.read_export() or {}).get("inputs", [])
    return {i["name"]: [1, *i["shape"][1:]] for i in inputs
            if i.get("shape") and all(isinstance(d, int) for d in i["shape"][1:])}


@dataclasses.dataclass(frozen=True)
class BenchWork:
    """What every benchmark task of one device shares: the profile and the ONNX files ({model id:
    (file name, bytes)}: a cluster node need not see the run directory), put into the object store once."""
    profile: Profile
    files: dict[str, tuple[str, bytes]]


@dataclasses.dataclass(frozen=True)
class BenchJob:
    """One agent process: one model alone, or a group timed interleaved (the reference first)."""
    ids: tuple[str, ...]
    config: dict


def bench_task(work: BenchWork, job: BenchJob) -> dict:
    """The agent's raw record for ``job`` on ``work.profile``'s device (here or on the Ray node that
    holds the device)."""
    with tempfile.TemporaryDirectory(prefix="mixprune-bench-") as tmp:
        paths = []
        for mid in job.ids:  # under its own name: the agent's messages name the file
            name, data = work.files[mid]
            paths.append(Path(tmp) / mid / name)
            paths[-1].parent.mkdir()
            paths[-1].write_bytes(data)
        runner = work.profile.runner
        return runner.run(paths[0], job.config) if len(paths) == 1 else runner.interleave(paths, job.config)


def _device(work: BenchWork) -> dict[str, float]:
    """What a bench task holds while it runs: the device, so two never time it at once."""
    return {device_resource(work.profile.name): 1}


def _on_device(executor: Executor, work: BenchWork, jobs: list[BenchJob], **loop) -> None:
    """Every job's agent process as a task holding the device, through the one driver loop
    (``loop``: its title, name, store and note)."""
    run_tasks(executor, bench_task, work, jobs, resources=_device(work), **loop)


def bench_run_dir(root: str | os.PathLike, profile: Profile, config: dict, executor: Executor | None = None) -> dict[str, dict]:
    """Measure the dense model and every exported candidate: each alone in a fresh process
    (cold start, peak RSS), then all of them interleaved with the dense model (benchmarks.paired).
    Each agent process is a ``bench_task`` on ``executor`` (default: this process) that holds the
    device (``device_resource``): two never share it at once.

    Writes each model's bench record atomically as its task returns, so an interrupted run
    keeps the finished records and never leaves a partial one; the ``interleaved`` blocks
    are added once every group is measured. ``bench_id`` ties the records of one bench.
    """
    run = RunDir(root)
    run.require()
    dirs = run.models()
    todo = {cid: d for cid, d in dirs.items() if d.onnx_file.is_file()}
    if not todo:
        raise RunDirError(f"{root} has no exported model; run `mixprune export {root}` first")
    skipped = sorted(set(dirs) - set(todo))
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        say(f"{len(skipped)} not exported yet, skipped: {shown}")
    records, bench_id = {}, uuid.uuid4().hex[:12]
    run.set_stage(bench_stage(profile.name), "running", bench_id=bench_id)
    with given_or_local(executor) as executor:
        work = BenchWork(profile, {cid: (d.onnx_file.name, d.onnx_file.read_bytes()) for cid, d in todo.items()})
        def store(job: BenchJob, raw: dict) -> None:
            cid = job.ids[0]
            model_dir = todo[cid]
            records[cid] = make_record(raw, profile, str(model_dir.onnx_file), candidate=cid, bench_id=bench_id,
                                       **_unstructured_note(model_dir))
            model_dir.write_bench(profile.name, records[cid])

        alone = [BenchJob((cid,), _model_config(config, d)) for cid, d in todo.items()]
        _on_device(executor, work, alone, title=f"Benchmarking on {profile.name}, each model alone",
                   name=lambda job: job.ids[0], store=store,
                   note=lambda job, raw: f"p50 {records[job.ids[0]]['latency_ms']['p50']:.3f} ms")
        if len(todo) > 1:
            blocks = _interleaved(todo, work, config, bench_id, executor)
            for cid, model_dir in todo.items():
                records[cid]["interleaved"] = blocks[cid]
                model_dir.write_bench(profile.name, records[cid])
    run.set_stage(bench_stage(profile.name), "done", bench_id=bench_id, models=sorted(todo))
    return {cid: records[cid] for cid in todo}


def _model_config(config: dict, *model_dirs: ModelDir) -> dict:
    """The models of a run directory share their inputs: one set of shapes serves a whole group."""
    exported = {name: shape for d in model_dirs for name, shape in _export_shapes(d).items()}
    return {**config, "shapes": {**exported, **config["shapes"]}}


def _interleaved(todo: dict[str, ModelDir], work: BenchWork, config: dict, bench_id: str,
                 executor: Executor) -> dict:
    """{model id: ``interleaved`` block}: every model timed in one process with the dense model."""
    profile = work.profile
    reference = DENSE if DENSE in todo else next(iter(todo))
    batches = paired.groups(reference, [cid for cid in todo if cid != reference], profile.interleave_models)
    jobs = [BenchJob(tuple(ids), _model_config(config, *(todo[cid] for cid in ids)))
            for ids in batches for _ in range(profile.interleave_processes)]
    measured = []
    _on_device(executor, work, jobs, title=f"Timing on {profile.name}, interleaved with {reference}",
               name=lambda job: ", ".join(job.ids[1:]), store=lambda job, raw: measured.append((list(job.ids), raw)))
    return paired.summarize(measured, reference, bench_id)
