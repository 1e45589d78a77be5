"""Scale-out: the candidate evaluation of the default prune on this machine, local vs Ray with 1
and 2 workers, side by side; Ray's fixed costs; and the per-unit costs a larger run is modelled with.

    OMP_NUM_THREADS=1 python experiments/scale/run_scale.py

1. The dense model of the default run (resnet18 on digits, 32x32, 15 epochs) is trained once by
   `mixprune prune --mode unstructured --finetune-epochs 0` (the `local` row) and then reused with
   --checkpoint, so every row prunes the same weights.
2. Each row runs `mixprune prune --checkpoint ... --mode unstructured --finetune-epochs 0` in a
   subprocess: `local` (torch on 1 thread), and `--executor ray --ray-address auto` against a
   head started with `ray start --head --num-cpus N` (N = 1, 2; 1 CPU per task), stopped after.
   The candidate evaluation time is the stage's own "candidates" phase (60 candidates: mask,
   BN re-estimation on 512 images, held-out and tune accuracy before and after), read from
   run.json; the candidates of every row are checked equal (records and weights digests).
3. Ray's fixed costs on this machine: `ray start` and `ray stop`, connecting, the round trip of an
   empty task, and putting / getting an object the size of the shared work.
4. Per-unit costs for the model of an ImageNet-size run: resnet50 at 224x224 forward images per
   second on 1 thread (batch 16), and one fine-tuning step's images per second.

Writes experiments/scale/results.json (atomically, after every row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MIXPRUNE = str(Path(sys.executable).with_name("mixprune"))
RAY = str(Path(sys.executable).with_name("ray"))
PRUNE = ["prune", "--model", "resnet18", "--data", "digits", "--mode", "unstructured", "--finetune-epochs", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MIXPRUNE_QUIET": "1"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=ENV, **kwargs)
    return round(time.perf_counter() - start, 2)


def records(run: Path) -> dict:
    return {p.name: [json.loads((p / n).read_text()) for n in ("strategy.json", "eval.json")]
            for p in sorted((run / "candidates").iterdir())}


def prune_row(out: Path, extra: list[str]) -> dict:
    wall = timed([MIXPRUNE, *PRUNE, "--out", str(out), *extra])
    summary = json.loads((out / "run.json").read_text())["stages"]["prune"]["summary"]
    return {"wall_s": wall, "phases_s": summary["timings_s"], "candidates": summary["candidates"],
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
        say("local (trains the dense model once)")
        result["rows"]["local, with dense training"] = prune_row(work / "first", [])
        checkpoint = str(work / "first" / "dense" / "weights.safetensors")
        say("local")
        result["rows"]["local"] = prune_row(work / "local", ["--checkpoint", checkpoint])
        reference = records(work / "local")
        atomic_write_json(args.out, result)
        for workers in (int(w) for w in args.workers.split(",")):
            name = f"ray, {workers} worker{'s' * (workers > 1)}"
            say(name)
            start_s = timed([RAY, "start", "--head", "--num-cpus", str(workers), "--include-dashboard", "false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                row = prune_row(work / f"ray{workers}", ["--checkpoint", checkpoint, "--executor", "ray",
                                                         "--ray-address", "auto"])
                row["same_candidates_as_local"] = records(work / f"ray{workers}") == reference
                if workers == 1:
                    dense_bytes = (work / "local" / "dense" / "weights.safetensors").stat().st_size
                    row["fixed_costs"] = ray_fixed_costs(3 * dense_bytes)  # dense weights + g + Hg
            finally:
                stop_s = timed([RAY, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            row.update(ray_start_s=start_s, ray_stop_s=stop_s)
            result["rows"][name] = row
            atomic_write_json(args.out, result)
    say("resnet50 per-unit costs")
    result["resnet50_224_one_thread"] = resnet50_units()
    local = result["rows"]["local"]["phases_s"]["candidates"]
    result["speedup_of_candidate_evaluation_vs_local"] = {
        name: round(local / row["phases_s"]["candidates"], 3) for name, row in result["rows"].items()
        if name.startswith("ray")}
    result["load_average_end"] = list(os.getloadavg())
    result["complete"] = True
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("versions",)}, indent=1))


if __name__ == "__main__":
    main()
