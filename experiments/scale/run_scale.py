"""Scale-out: the default `mixprune run` on this machine, locally and on Ray with 1 and 2 workers,
side by side, stage by stage; Ray's fixed costs; and a model of an ImageNet-size run.

    python experiments/scale/run_scale.py

1. The dense model of the default run (resnet18 on digits, 32x32, 15 epochs) is trained once (a
   prune of one signal, no fine-tuning) and reused with --checkpoint, so every row prunes the same
   weights.
2. Each row is the default `mixprune run --checkpoint ...` in a subprocess (both families: 30
   Mix-and-Match + matched baselines unstructured, 30 + 3 structured at half the MACs; fine-tuning;
   export of dense + the top 2 of each family with INT8 variants; benchmarks on host; rank;
   release): `local` with torch on 1 and on 2 threads, and `--executor ray --ray-address auto`
   against a head started with `ray start --head --num-cpus N --resources '{"device:host": 1}'`
   (N = 1, 2; 1 CPU per task), stopped after. Stage times are the run's own (run.json
   stages.run.timings_s); every row's candidate and export records are checked equal to the
   1-thread local row's, and its choice is recorded.
3. Ray's fixed costs on this machine: `ray start` and `ray stop`, connecting, the round trip of an
   empty task, and putting / getting an object the size of the shared work; and the driver's own
   serial part per model, writing its files (``driver_writes``).
4. Per-unit costs for the model of an ImageNet-size run: resnet50 at 224x224 images per second on
   1 thread (batch 16), inference and training; the model itself (``imagenet_model``).

Writes experiments/scale/results.json (atomically, after every row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIXPRUNE = str(Path(sys.executable).with_name("mixprune"))
RAY = str(Path(sys.executable).with_name("ray"))
MODEL = ["--model", "resnet18", "--data", "digits"]
TRAIN_ONLY = ["prune", *MODEL, "--mode", "unstructured", "--signals", "magnitude", "--baselines", "mag",
              "--finetune-epochs", "0"]
STAGES = ("prune.candidates", "prune.structured", "prune.finetune", "export", "bench:host")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MIXPRUNE_QUIET": "1"}


def timed(command: list[str], threads: int = 1, **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(threads), **kwargs)
    return round(time.perf_counter() - start, 2)


def records(run: Path) -> dict:
    """Every model's records that do not hold timings: strategy, evaluation, export (less its time stamp)."""
    found = {}
    for folder in [run / "dense", *sorted((run / "candidates").iterdir())]:
        found[folder.name] = {name: json.loads((folder / name).read_text())
                              for name in ("strategy.json", "eval.json", "export.json") if (folder / name).is_file()}
        found[folder.name].get("export.json", {}).pop("exported_at", None)
    return found


def run_row(out: Path, extra: list[str], threads: int = 1) -> dict:
    wall = timed([MIXPRUNE, "run", *MODEL, "--out", str(out), *extra], threads)
    stages = json.loads((out / "run.json").read_text())["stages"]
    return {"wall_s": wall, "torch_threads_per_process": threads, "stages_s": stages["run"]["timings_s"],
            "chosen": stages["run"]["chosen"], "candidates": stages["prune"]["summary"]["candidates"],
            "finetuned": len(stages["prune"]["summary"]["finetuned"]), "exported": len(stages["export"]["models"]),
            "load_average_after": list(os.getloadavg())}


def ray_fixed_costs(shared_bytes: int) -> dict:
    """Connect to the running head, time an empty task and an object of the shared work's size."""
    import numpy as np
    import ray

    start = time.perf_counter()
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    connect = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def empty(x):
        return x

    @ray.remote(num_cpus=1)
    def size_of(array):
        return array.nbytes

    ray.get(empty.remote(0))  # a worker exists now
    start = time.perf_counter()
    ray.get([empty.remote(i) for i in range(100)])
    per_task = (time.perf_counter() - start) / 100
    payload = np.zeros(shared_bytes, dtype=np.uint8)
    start = time.perf_counter()
    ref = ray.put(payload)
    put = time.perf_counter() - start
    start = time.perf_counter()
    assert ray.get(size_of.remote(ref)) == shared_bytes
    get = time.perf_counter() - start
    ray.shutdown()
    return {"connect_s": round(connect, 3), "empty_task_round_trip_ms": round(per_task * 1e3, 3),
            "put_shared_work_s": round(put, 3), "task_reading_shared_work_s": round(get, 3),
            "shared_work_bytes": shared_bytes}


def driver_writes(run: Path) -> dict:
    """What the driver alone does per model as a task returns: write its files atomically. Timed by
    writing every file of each candidate folder of ``run`` again (temporary file + rename)."""
    from mixprune.atomic import atomic_write_bytes

    folders = sorted(p for p in (run / "candidates").iterdir() if p.is_dir())
    per_model = []
    with tempfile.TemporaryDirectory(prefix="mixprune-writes-", dir=run) as tmp:
        for folder in folders:
            files = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
            start = time.perf_counter()
            for name, data in files.items():
                atomic_write_bytes(Path(tmp) / folder.name / name, data)
            per_model.append(time.perf_counter() - start)
    return {"models": len(folders), "total_s": round(sum(per_model), 3),
            "mean_ms": round(1e3 * sum(per_model) / len(per_model), 2), "max_ms": round(1e3 * max(per_model), 2)}


def resnet50_units() -> dict:
    """Images per second of timm resnet50 at 224x224 on 1 torch thread: inference and training."""
    import torch

    from mixprune.compat import import_timm

    torch.set_num_threads(1)
    model = import_timm().create_model("resnet50", pretrained=False, num_classes=1000)
    x, y = torch.randn(16, 3, 224, 224), torch.randint(0, 1000, (16,))
    model.eval()
    with torch.no_grad():
        model(x[:2])
        start = time.perf_counter()
        model(x)
        infer = 16 / (time.perf_counter() - start)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    torch.nn.functional.cross_entropy(model(x[:2]), y[:2]).backward()
    start = time.perf_counter()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    train = 16 / (time.perf_counter() - start)
    return {"inference_images_per_s": round(infer, 2), "training_images_per_s": round(train, 2),
            "params": sum(p.numel() for p in model.parameters())}


# An ImageNet-size run: 1.28 M training images, 50 k held-out, a 2 k tune split; the calibration
# pass (gradients and Hessian-gradient) on 10% of train; each candidate re-estimates BatchNorm on
# 512 images and is evaluated on held-out and tune before and after; the top 10 fine-tuned 1 epoch.
IMAGENET = {"train": 1_281_167, "held_out": 50_000, "tune": 2_000, "calibration_fraction": 0.1, "recal": 512,
            "candidates": 150, "finetuned": 10, "finetune_epochs": 1}


def imagenet_model(units: dict, workers=(1, 8, 64)) -> dict:
    """CPU-seconds per unit (1 thread) and the wall time on W one-CPU workers: the calibration pass
    stays in the driver, candidates and fine-tunes are tasks, ceil(tasks / W) rounds of each."""
    data = IMAGENET
    calibration = data["train"] * data["calibration_fraction"] / units["training_images_per_s"]
    candidate = (data["recal"] + 2 * (data["held_out"] + data["tune"])) / units["inference_images_per_s"]
    finetune = data["train"] * data["finetune_epochs"] / units["training_images_per_s"]
    rows = {}
    for w in workers:
        total = calibration + math.ceil(data["candidates"] / w) * candidate + math.ceil(data["finetuned"] / w) * finetune
        rows[str(w)] = {"wall_s": round(total), "days": round(total / 86400, 2)}
    one = rows[str(workers[0])]["wall_s"]
    for row in rows.values():
        row["speedup"] = round(one / row["wall_s"], 2)
    return {"assumptions": data, "unit_s": {"calibration": round(calibration), "candidate": round(candidate),
                                            "finetune": round(finetune)}, "workers": rows}


def ray_row(work: Path, workers: int, checkpoint: str, reference: dict) -> dict:
    devices = json.dumps({"device:host": 1})
    start_s = timed([RAY, "start", "--head", "--num-cpus", str(workers), "--resources", devices,
                     "--include-dashboard", "false", "--disable-usage-stats"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = work / f"ray{workers}"
        row = run_row(out, ["--checkpoint", checkpoint, "--executor", "ray", "--ray-address", "auto"])
        row["same_records_as_local"] = records(out) == reference
        if workers == 1:
            dense_bytes = (out / "dense" / "weights.safetensors").stat().st_size
            row["fixed_costs"] = ray_fixed_costs(3 * dense_bytes)  # dense weights + g + Hg
    finally:
        stop_s = timed([RAY, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    row.update(ray_start_s=start_s, ray_stop_s=stop_s)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--workers", default="1,2", help="Ray CPUs (= workers at 1 CPU per task) per row")
    args = parser.parse_args()
    from mixprune.runs import atomic_write_json, now_iso, package_versions

    result = {"date": now_iso(), "versions": package_versions(), "cpus": os.cpu_count(),
              "load_average_start": list(os.getloadavg()), "rows": {}, "complete": False}
    with tempfile.TemporaryDirectory(prefix="mixprune-scale-") as tmp:
        work = Path(tmp)
        say("dense training")
        result["dense_training_s"] = timed([MIXPRUNE, *TRAIN_ONLY, "--out", str(work / "dense")])
        checkpoint = str(work / "dense" / "dense" / "weights.safetensors")
        say("local, 1 thread")
        result["rows"]["local, 1 thread"] = run_row(work / "local", ["--checkpoint", checkpoint])
        reference = records(work / "local")
        result["driver_writes"] = driver_writes(work / "local")
        atomic_write_json(args.out, result)
        say("local, 2 threads")
        row = result["rows"]["local, 2 threads"] = run_row(work / "local2", ["--checkpoint", checkpoint], threads=2)
        row["same_records_as_local"] = records(work / "local2") == reference
        atomic_write_json(args.out, result)
        for workers in (int(w) for w in args.workers.split(",")):
            name = f"ray, {workers} worker{'s' * (workers > 1)}"
            say(name)
            result["rows"][name] = ray_row(work, workers, checkpoint, reference)
            atomic_write_json(args.out, result)
    say("resnet50 per-unit costs")
    units = result["resnet50_224_one_thread"] = resnet50_units()
    result["imagenet_model"] = imagenet_model(units)
    base = result["rows"]["local, 1 thread"]["stages_s"]
    result["speedup_vs_local_1_thread"] = {
        name: {stage: round(base[stage] / row["stages_s"][stage], 3) for stage in STAGES}
        for name, row in result["rows"].items() if name != "local, 1 thread"}
    result["load_average_end"] = list(os.getloadavg())
    result["complete"] = True
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions",)}, indent=1))


if __name__ == "__main__":
    main()
