"""Interleaved vs isolated timing: do paired ratios from one agent process agree with
separate agent processes on a quiet machine, and stay put on a loaded one?

Three models, timm resnet18 at 32x32 (random weights, zero_init_last=False, 10 classes),
exported with torch here (opset 17, dynamo=False, a dynamic batch axis as mixprune exports;
timed at batch 1, 1 intra-op thread):

  a  dense fp32
  b  the same with 90% of every conv / linear weight zeroed by magnitude (per tensor):
     the same onnxruntime kernels as a, so the true ratio b/a is 1.0
  c  INT8 of a, ``mixprune.exporter.quantize.quantize(..., RECIPES.get("int8u"), ...)`` calibrated on
     16 random images: other kernels, a real speed difference

Two conditions: "quiet" (nothing started here; before each repetition up to --quiet-wait s
for a 2 s window with the machine < 15% busy; load average and the machine's CPU
utilisation per repetition recorded, other people's jobs included) and "loaded" (two background
processes, each alternating busy-loops and sleeps of 0.5-2 s at random, so 0, 1 or 2
cores are taken at any moment and the speed of the machine drifts; stopped afterwards).

Each repetition of a condition measures, through the real agent (``LocalRunner`` ->
``python devices/agent.py``), in alternating order:

  isolated     three agent processes, one per model (a, b, c; then c, b, a), ratios of
               their p50s
  interleaved  one agent process with a, b, c, paired ratios per round
               (``mixprune.benchmarks.paired.summarize``: median and quartiles over rounds)

    python experiments/harness/interleaved.py [--reps 10] [--runs 200] [--rounds 20] [--warmup 10]
    python experiments/harness/interleaved.py --tables     # the README's tables from interleaved.json

Writes experiments/harness/interleaved.json (atomically) and prints summary tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mixprune.benchmarks.paired import quartiles, summarize
from mixprune.devices.runners.local import LocalRunner
from mixprune.runs import atomic_write_json

HERE = Path(__file__).resolve().parent
SIZE = 32
SPARSITY = 0.9
NAMES = ("a", "b", "c")
LABELS = {"a": "resnet18 dense fp32", "b": "resnet18 90% zeros fp32", "c": "resnet18 INT8 (uint8 act.)"}

# One background load process: busy for U(0.5, 2) s, sleep U(0.5, 2) s, forever; each busy
# period is logged (wall-clock start, planned end) so every measurement can be matched
# with how much load it met. Busy is a pure-Python spin ("spin": takes a core) or numpy
# copies between two 64 MB arrays ("mem": takes a core and streams through the shared
# cache and memory bus, which slows every inference, not just the ones it preempts).
# SIGTERM ends it (Python's default handler).
LOAD_WORKER = r"""
import random, sys, time
import numpy as np
rng = random.Random(int(sys.argv[1]))
mem = sys.argv[3] == "mem"
src = np.ones(8 * 2**20) if mem else None  # 8 Mi float64 = 64 MB
dst = np.empty_like(src) if mem else None
with open(sys.argv[2], "a", buffering=1) as log:
    while True:
        busy, idle = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0)
        start = time.time()
        log.write(f"{start} {start + busy}\n")
        x = 0
        while time.time() - start < busy:
            if mem:
                np.copyto(dst, src)
            else:
                for _ in range(10000):
                    x += 1
        time.sleep(idle)
"""


# --- models -----------------------------------------------------------------------------
def zero_fraction(path: Path) -> float:
    """Fraction of zeros over the ONNX initializers with >= 2 dims (conv / linear weights)."""
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for init in onnx.load(str(path)).graph.initializer:
        if len(init.dims) >= 2:
            w = numpy_helper.to_array(init)
            zeros += int(np.count_nonzero(w == 0))
            total += w.size
    return zeros / total


def export_models(folder: Path) -> dict[str, Path]:
    """a, b, c as ONNX files in ``folder`` (made once; torch is needed only here)."""
    paths = {name: folder / f"resnet18_{SIZE}_{name}.onnx" for name in NAMES}
    if all(p.is_file() for p in paths.values()):
        return paths
    import io

    import torch

    from mixprune.compat import import_timm
    from mixprune.exporter.quantize import RECIPES, quantize

    timm = import_timm()
    torch.manual_seed(0)
    # zero_init_last=False: timm's default zeroes the last BatchNorm of every block, which the
    # export folds into the conv before it (39% of the weights zero in the "dense" model).
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, zero_init_last=False).eval()
    example = (torch.randn(1, 3, SIZE, SIZE),)

    def export(m) -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(m, example, buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})  # as mixprune exports
        return buf.getvalue()

    dense = export(model)
    paths["a"].write_bytes(dense)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                k = int(SPARSITY * w.numel())
                smallest = w.abs().flatten().argsort()[:k]  # magnitude, per tensor
                w.view(-1)[smallest] = 0.0
    paths["b"].write_bytes(export(model))
    images = np.random.default_rng(0).standard_normal((16, 3, SIZE, SIZE)).astype(np.float32)
    paths["c"].write_bytes(quantize(dense, images, RECIPES.get("int8u"), "resnet18"))
    return paths


# --- the machine ------------------------------------------------------------------------
def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def utilisation(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Machine CPU utilisation between two cpu_jiffies() readings (0-1, all cores; ours included)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0


class BackgroundLoad:
    """Two load workers (LOAD_WORKER); ``stop`` terminates them and waits, even on errors."""

    def __init__(self, folder: Path, kind: str, workers: int = 2):
        self.logs = [folder / f"load-{i}.log" for i in range(workers)]
        for log in self.logs:
            log.unlink(missing_ok=True)
        self.procs = [subprocess.Popen([sys.executable, "-c", LOAD_WORKER, str(100 + i), str(log), kind],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                      for i, log in enumerate(self.logs)]
        print(f"background load started: pids {[p.pid for p in self.procs]}", file=sys.stderr, flush=True)

    def stop(self) -> list[int]:
        codes = []
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            codes.append(p.returncode)
        print(f"background load stopped: exit codes {codes}", file=sys.stderr, flush=True)
        return codes

    def busy_periods(self) -> list[list[tuple[float, float]]]:
        periods = []
        for log in self.logs:
            rows = []
            if log.is_file():
                for line in log.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2:
                        rows.append((float(parts[0]), float(parts[1])))
            periods.append(rows)
        return periods


def mean_busy_workers(periods: list[list[tuple[float, float]]], start: float, end: float) -> float:
    """Average number of load workers busy over [start, end] (wall clock)."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(e, end) - max(s, start)) for rows in periods for s, e in rows)
    return covered / (end - start)


# --- the measurement --------------------------------------------------------------------
def timed_call(fn, *args) -> tuple[dict, float, float]:
    start = time.time()
    record = fn(*args)
    return record, start, time.time()


def isolated(runner, paths, config, order) -> dict:
    out = {"order": "".join(order), "p50_ms": {}, "windows": {}}
    for name in order:
        record, start, end = timed_call(runner.run, paths[name], config)
        out["p50_ms"][name] = record["latency_ms"]["p50"]
        out["windows"][name] = [start, end]
    p50 = out["p50_ms"]
    out["ratio"] = {"b/a": p50["b"] / p50["a"], "c/a": p50["c"] / p50["a"]}
    return out


def interleaved(runner, paths, config) -> dict:
    record, start, end = timed_call(runner.interleave, [paths[n] for n in NAMES], config)
    blocks = summarize([(list(NAMES), record)], "a", "interleaved-study")
    return {
        "window": [start, end],
        "p50_ms": {n: m["latency_ms"]["p50"] for n, m in zip(NAMES, record["models"])},
        "round_p50_ms": {n: m["round_p50_ms"] for n, m in zip(NAMES, record["models"])},
        "rounds": record["rounds"], "runs_per_round": record["runs_per_round"],
        "ratio": {f"{n}/a": blocks[n]["ratio_to_reference"]["median"] for n in ("b", "c")},
        "within_run": {f"{n}/a": blocks[n]["ratio_to_reference"] for n in ("b", "c")},
    }


def across(values: list[float]) -> dict:
    """Median, quartiles (statistics.quantiles, inclusive, as paired.py) and range over repetitions."""
    return {**quartiles(values), "min": min(values), "max": max(values), "n": len(values)}


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> dict:
    """Wait (at most ``limit_s``) for a 2 s window with machine CPU utilisation below ``threshold``."""
    start, last = time.time(), None
    while True:
        before = cpu_jiffies()
        time.sleep(2.0)
        last = utilisation(before, cpu_jiffies())
        waited = time.time() - start
        if last < threshold or waited >= limit_s:
            print(f"quiet wait: {waited:.0f} s, CPU utilisation of the last 2 s {last:.0%}", file=sys.stderr,
                  flush=True)
            return {"waited_s": waited, "last_2s_cpu_utilisation": last, "reached": last < threshold}


def run_condition(name, runner, paths, config, reps, load=None, quiet_wait=0.0) -> dict:
    load_before, jiffies_before, t0 = os.getloadavg(), cpu_jiffies(), time.time()
    rows = []
    for rep in range(reps):
        order = list(NAMES) if rep % 2 == 0 else list(reversed(NAMES))
        row = {"rep": rep}
        if quiet_wait > 0:
            row["quiet_wait"] = wait_for_quiet(quiet_wait)
        rep_jiffies = cpu_jiffies()
        steps = ("isolated", "interleaved") if rep % 2 == 0 else ("interleaved", "isolated")
        for step in steps:
            if step == "isolated":
                row["isolated"] = isolated(runner, paths, config, order)
            else:
                row["interleaved"] = interleaved(runner, paths, config)
        row["cpu_utilisation"] = utilisation(rep_jiffies, cpu_jiffies())
        rows.append(row)
        iso, inter = row["isolated"], row["interleaved"]
        print(f"{name:<6} rep {rep:2d}  isolated ({iso['order']}) a {iso['p50_ms']['a']:6.3f} ms  "
              f"b/a {iso['ratio']['b/a']:.3f} c/a {iso['ratio']['c/a']:.3f} | interleaved a "
              f"{inter['p50_ms']['a']:6.3f} ms  b/a {inter['ratio']['b/a']:.3f} c/a {inter['ratio']['c/a']:.3f} | "
              f"CPU {row['cpu_utilisation']:.0%}",
              file=sys.stderr, flush=True)
    t1, jiffies_after, load_after = time.time(), cpu_jiffies(), os.getloadavg()
    if load is not None:
        periods = load.busy_periods()
        for row in rows:
            iso, inter = row["isolated"], row["interleaved"]
            iso["busy_load_workers"] = {n: mean_busy_workers(periods, *w) for n, w in iso["windows"].items()}
            inter["busy_load_workers"] = mean_busy_workers(periods, *inter["window"])
    summary = {}
    for method in ("isolated", "interleaved"):
        block = {r: across([row[method]["ratio"][r] for row in rows]) for r in ("b/a", "c/a")}
        block["p50_a_ms"] = across([row[method]["p50_ms"]["a"] for row in rows])
        if method == "interleaved":
            block["within_run_q1_median"] = {r: statistics.median(row[method]["within_run"][r]["q1"] for row in rows)
                                             for r in ("b/a", "c/a")}
            block["within_run_q3_median"] = {r: statistics.median(row[method]["within_run"][r]["q3"] for row in rows)
                                             for r in ("b/a", "c/a")}
            block["within_run_iqr_max"] = {r: max(row[method]["within_run"][r]["q3"]
                                                  - row[method]["within_run"][r]["q1"] for row in rows)
                                           for r in ("b/a", "c/a")}
        summary[method] = block
    return {
        "load_average_before": load_before, "load_average_after": load_after,
        "cpu_utilisation": utilisation(jiffies_before, jiffies_after),  # waits for quiet included
        "rep_cpu_utilisation": across([row["cpu_utilisation"] for row in rows]),
        "wall_s": t1 - t0,
        "note": "cpu_utilisation: all cores of the machine, busy jiffies / all jiffies from /proc/stat; the "
                "agent itself keeps about one of the 2 cores (~50%) busy, the rest is other people's work "
                "(and, when loaded, the background load)",
        "summary": summary, "repetitions": rows,
    }


def print_tables(conditions: dict) -> None:
    print(f"{'condition':<9} {'method':<12} {'ratio':<5} {'median':>7} {'IQR over reps':>15} {'min-max':>15} "
          f"{'within-run q1-q3 (median)':>26}")
    for cname, cond in conditions.items():
        for method, block in cond["summary"].items():
            for r in ("b/a", "c/a"):
                s = block[r]
                within = ""
                if method == "interleaved":
                    within = f"{block['within_run_q1_median'][r]:.3f}-{block['within_run_q3_median'][r]:.3f}"
                print(f"{cname:<9} {method:<12} {r:<5} {s['median']:>7.3f} {s['q1']:>7.3f}-{s['q3']:<7.3f} "
                      f"{s['min']:>7.3f}-{s['max']:<7.3f} {within:>26}")
        print(f"{cname:<9} load avg {cond['load_average_before'][0]:.2f} -> {cond['load_average_after'][0]:.2f}, "
              f"CPU utilisation per repetition {cond['rep_cpu_utilisation']['min']:.0%}-"
              f"{cond['rep_cpu_utilisation']['max']:.0%} (median {cond['rep_cpu_utilisation']['median']:.0%}), "
              f"{cond['wall_s']:.0f} s")


def markdown_tables(record: dict) -> str:
    """The README's tables, from a record this script wrote."""
    cond = record["conditions"]
    out = ["| condition | method | ratio | median over reps | IQR over reps | min-max over reps | "
           "within-run q1-q3 (median over reps) |", "|---|---|---|---|---|---|---|"]
    for cname, c in cond.items():
        for method, block in c["summary"].items():
            for r in ("b/a", "c/a"):
                s = block[r]
                within = (f"{block['within_run_q1_median'][r]:.3f}-{block['within_run_q3_median'][r]:.3f}"
                          if method == "interleaved" else "-")
                out.append(f"| {cname} | {method} | {r} | **{s['median']:.3f}** | {s['q1']:.3f}-{s['q3']:.3f} | "
                           f"{s['min']:.3f}-{s['max']:.3f} | {within} |")
    out += ["", "| condition | load avg (1 min) before -> after | machine CPU busy per repetition, min-max (median) "
            "| wall s |", "|---|---|---|---|"]
    for cname, c in cond.items():
        u = c["rep_cpu_utilisation"]
        out.append(f"| {cname} | {c['load_average_before'][0]:.2f} -> {c['load_average_after'][0]:.2f} | "
                   f"{u['min']:.0%}-{u['max']:.0%} ({u['median']:.0%}) | {c['wall_s']:.0f} |")
    out += ["", "| condition | method | a p50 ms, median (min-max) | b p50 ms | c p50 ms |", "|---|---|---|---|---|"]
    for cname, c in cond.items():
        for method in ("isolated", "interleaved"):
            cells = []
            for n in NAMES:
                s = across([row[method]["p50_ms"][n] for row in c["repetitions"]])
                cells.append(f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})")
            out.append(f"| {cname} | {method} | " + " | ".join(cells) + " |")
    out += ["", "| condition | rep | isolated order | isolated a p50 ms | isolated b/a | isolated c/a | load workers "
            "busy during a / b / c | interleaved a p50 ms | interleaved b/a | interleaved c/a (within-run q1-q3) | "
            "load workers busy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cname, c in cond.items():
        for row in c["repetitions"]:
            i, n = row["isolated"], row["interleaved"]
            busy = (" / ".join(f"{i['busy_load_workers'][k]:.2f}" for k in NAMES)
                    if "busy_load_workers" in i else "-")
            busy_n = f"{n['busy_load_workers']:.2f}" if "busy_load_workers" in n else "-"
            w = n["within_run"]["c/a"]
            out.append(f"| {cname} | {row['rep']} | {i['order']} | {i['p50_ms']['a']:.3f} | {i['ratio']['b/a']:.3f} | "
                       f"{i['ratio']['c/a']:.3f} | {busy} | {n['p50_ms']['a']:.3f} | {n['ratio']['b/a']:.3f} | "
                       f"{n['ratio']['c/a']:.3f} ({w['q1']:.3f}-{w['q3']:.3f}) | {busy_n} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--conditions", default="quiet,loaded")
    parser.add_argument("--load", choices=("spin", "mem"), default="spin",
                        help="what a background load process does while busy (see LOAD_WORKER)")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each quiet repetition, wait at most this long for an idle machine (s)")
    parser.add_argument("--models-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "mixprune-interleaved-models")
    parser.add_argument("--out", type=Path, default=HERE / "interleaved.json")
    parser.add_argument("--tables", action="store_true",
                        help="measure nothing: print the README's markdown tables from --out")
    args = parser.parse_args()
    if args.tables:
        print(markdown_tables(json.loads(args.out.read_text())))
        return
    started = time.time()
    args.models_dir.mkdir(parents=True, exist_ok=True)
    paths = export_models(args.models_dir)
    zeros = {n: zero_fraction(p) for n, p in paths.items()}
    print(f"models in {args.models_dir}: zero fraction of weights {zeros}", file=sys.stderr, flush=True)

    runner = LocalRunner({"kind": "local", "python": "", "run_timeout_s": 300})
    config = {"runs": args.runs, "rounds": args.rounds, "warmup": args.warmup, "intra_op_threads": 1,
              "shapes": {"input": [1, 3, SIZE, SIZE]}}  # batch 1
    conditions = {}
    for cname in args.conditions.split(","):
        if cname == "quiet":
            conditions[cname] = run_condition(cname, runner, paths, config, args.reps, quiet_wait=args.quiet_wait)
        elif cname == "loaded":
            load = BackgroundLoad(args.models_dir, args.load)
            try:
                time.sleep(2.0)  # let the load get going
                conditions[cname] = run_condition(cname, runner, paths, config, args.reps, load)
            finally:
                exit_codes = load.stop()
            conditions[cname]["load_workers_exit_codes"] = exit_codes
            conditions[cname]["load"] = (f"2 processes, each alternating a busy-loop ({args.load}) of U(0.5, 2) s and "
                                         "a sleep of U(0.5, 2) s; busy_load_workers = mean number busy during an "
                                         "agent call")
        else:
            parser.error(f"unknown condition {cname!r} (quiet, loaded)")

    import onnxruntime as ort

    record = {
        "what": "isolated (one agent process per model, ratio of p50s) vs interleaved (one agent process for "
                "a, b, c; paired per-round ratios, mixprune.benchmarks.paired) on a quiet and a loaded machine",
        "models": {n: {"label": LABELS[n], "file": paths[n].name, "bytes": paths[n].stat().st_size,
                       "weight_zero_fraction": zeros[n]} for n in NAMES},
        "input": [1, 3, SIZE, SIZE],
        "agent_config": config,
        "reps": args.reps,
        "machine": {"cpu": platform.processor() or platform.machine(), "usable_cores": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "onnxruntime": ort.__version__},
        "conditions": conditions,
        "wall_s": time.time() - started,
    }
    atomic_write_json(args.out, record)
    print_tables(conditions)
    print(f"wrote {args.out} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
