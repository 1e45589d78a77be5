"""Harness fidelity: does the agent measure what a bare onnxruntime loop measures?

For three timm CNNs of different size (random weights, exported to ONNX with torch here;
nothing in devices/ or benchmarks/ imports torch), and for 1 and 2 intra-op threads, each
repetition measures every model twice, interleaved and in alternating order:

  agent: `LocalRunner` -> a fresh `python devices/agent.py` process (what `mixprune bench` does)
  bare:  an in-process InferenceSession with the same options, warm-up, then a
         perf_counter_ns loop around session.run

and compares the p50s side by side (ratio agent / bare per repetition, then the median of
the ratios). Agent start-up (process + imports) and cold start (session + first run) are
reported separately from the steady-state latency.

    python experiments/harness/run_harness.py [--reps 21] [--warmup 5] [--threads 1,2]

Many short interleaved pairs rather than a few long ones: on a shared machine a burst of
someone else's work then spoils a few pairs, which the median of the ratios ignores.

Writes experiments/harness/results.json (atomically) and prints a summary table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mixprune.benchmarks.bench import agent_config
from mixprune.devices.profiles import load_profile
from mixprune.runs import atomic_write_json

HERE = Path(__file__).resolve().parent
MODELS = {  # name -> (input size, timed runs): ~40x apart in latency, ~0.3-1.5 s of timed runs each
    "resnet18": (160, 50),
    "mobilenetv3_small_100": (224, 200),
    "test_efficientnet": (96, 500),
}


def export_models(folder: Path) -> dict[str, Path]:
    """timm models with random weights -> ONNX (opset 17), once; torch is needed only here."""
    paths = {name: folder / f"{name}.onnx" for name in MODELS}
    if all(p.is_file() for p in paths.values()):
        return paths
    import torch

    from mixprune.compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    for name, (size, _) in MODELS.items():
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(paths[name]), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"])
    return paths


def bare_loop(path: Path, threads: int, spinning: bool, runs: int, warmup: int) -> dict:
    """The reference: the plainest way to time a model with onnxruntime, in this process."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    t0 = time.perf_counter_ns()
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter_ns()
    inp = session.get_inputs()[0]
    feeds = {inp.name: np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)}
    t2 = time.perf_counter_ns()
    session.run(None, feeds)
    t3 = time.perf_counter_ns()
    for _ in range(warmup):
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feeds)
        samples.append(time.perf_counter_ns() - start)
    return {"p50": float(np.percentile(samples, 50)) / 1e6, "cold_start_ms": (t1 - t0 + t3 - t2) / 1e6}


def spread(values: list[float]) -> float:
    """Run-to-run spread: (max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "mixprune-harness-models")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    args.models_dir.mkdir(parents=True, exist_ok=True)
    paths = export_models(args.models_dir)
    profile = load_profile("host")
    names = list(MODELS)

    load_before = os.getloadavg()
    results = {}
    for threads in (int(t) for t in args.threads.split(",")):
        reps = {name: [] for name in names}
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]  # rotate the model order
            for name in order:
                runs = MODELS[name][1]
                config = agent_config(profile, runs=runs, warmup=args.warmup, threads=threads)
                sides = ("agent", "bare") if rep % 2 == 0 else ("bare", "agent")  # alternate who goes first
                row = {}
                for side in sides:
                    if side == "agent":
                        r = profile.runner.run(paths[name], config)
                        row["agent"] = {"p50": r["latency_ms"]["p50"], "cold_start_ms": r["cold_start_ms"],
                                        "import_ms": r["agent_import_ms"], "process_ms": r["runner_wall_ms"],
                                        "peak_rss_mb": r["peak_rss_mb"]}
                    else:
                        row["bare"] = bare_loop(paths[name], threads, profile.allow_spinning, runs, args.warmup)
                row["ratio"] = row["agent"]["p50"] / row["bare"]["p50"]
                reps[name].append(row)
                print(f"threads={threads} rep={rep} {name:<22} agent p50 {row['agent']['p50']:8.3f} ms  "
                      f"bare p50 {row['bare']['p50']:8.3f} ms  ratio {row['ratio']:.3f}", file=sys.stderr, flush=True)
        summary = {}
        for name in names:
            rows = reps[name]
            agent_p50 = [r["agent"]["p50"] for r in rows]
            bare_p50 = [r["bare"]["p50"] for r in rows]
            ratios = [r["ratio"] for r in rows]
            summary[name] = {
                "agent_p50_ms_median": statistics.median(agent_p50),
                "bare_p50_ms_median": statistics.median(bare_p50),
                "ratio_median": statistics.median(ratios),
                "ratio_q25": float(np.percentile(ratios, 25)),
                "ratio_q75": float(np.percentile(ratios, 75)),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "agent_p50_spread": spread(agent_p50),
                "bare_p50_spread": spread(bare_p50),
                "agent_import_ms_median": statistics.median(r["agent"]["import_ms"] for r in rows),
                "agent_process_ms_median": statistics.median(r["agent"]["process_ms"] for r in rows),
                "agent_cold_start_ms_median": statistics.median(r["agent"]["cold_start_ms"] for r in rows),
                "bare_cold_start_ms_median": statistics.median(r["bare"]["cold_start_ms"] for r in rows),
                "within_3_percent": abs(statistics.median(ratios) - 1) <= 0.03,
                "repetitions": rows,
            }
        results[f"threads_{threads}"] = summary

    record = {
        "what": "agent p50 (fresh process per measurement) vs a bare in-process session.run loop, same options, "
                "interleaved; ratio = agent / bare",
        "machine": {"cpu": platform.processor() or platform.machine(), "usable_cores": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "onnxruntime": ort.__version__,
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "note": "shared 2-core machine, other engineers' jobs running"},
        "settings": {"reps": args.reps, "warmup": args.warmup,
                     "allow_spinning": profile.allow_spinning, "models": MODELS},
        "results": results,
    }
    atomic_write_json(args.out, record)
    print(f"{'threads':<8} {'model':<22} {'agent p50':>10} {'bare p50':>10} {'ratio':>6} {'[q25,q75]':>14} "
          f"{'spread a/b':>12} {'import':>7} {'process':>8} {'cold a/b':>14}")
    for key, summary in results.items():
        for name, s in summary.items():
            print(f"{key[8:]:<8} {name:<22} {s['agent_p50_ms_median']:>10.3f} {s['bare_p50_ms_median']:>10.3f} "
                  f"{s['ratio_median']:>6.3f} [{s['ratio_q25']:.3f},{s['ratio_q75']:.3f}] "
                  f"{s['agent_p50_spread']:>5.1%}/{s['bare_p50_spread']:<5.1%} {s['agent_import_ms_median']:>6.0f} "
                  f"{s['agent_process_ms_median']:>8.0f} {s['agent_cold_start_ms_median']:>6.1f}/"
                  f"{s['bare_cold_start_ms_median']:<6.1f}")


if __name__ == "__main__":
    main()
