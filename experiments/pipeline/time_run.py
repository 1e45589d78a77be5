"""Wall time of each stage of the default `mixprune run` (target: the whole run in <= 5 minutes).

    python experiments/pipeline/time_run.py [--out DIR] [--results experiments/pipeline/results.json] [-- RUN FLAGS]

Runs `mixprune run` with no flags but --out (a fresh folder) in a subprocess, then reads
the stage times the run recorded in run.json (stages.run.timings_s, and the prune stage's
own phases), the total wall time and CPU time (user + system of the run's processes)
measured here, the machine's load average before and after (the machine may be shared:
wall times mean little without it), and what the run directory holds on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixprune.runs import RunDir


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def disk_usage(run: RunDir) -> dict:
    """Bytes of the run directory: in all, per top-level entry, and per candidate (exported or not)."""
    top = {p.name: (_bytes(p) if p.is_dir() else p.stat().st_size) for p in sorted(run.root.iterdir())}
    candidates = {cid: _bytes(run.candidate(cid).path) for cid in run.candidate_ids()}
    unexported = [b for cid, b in candidates.items() if not run.candidate(cid).is_exported()]
    return {"total_bytes": _bytes(run.root), "by_entry_bytes": top,
            "candidate_unexported_bytes": {"count": len(unexported), "max": max(unexported, default=0),
                                           "mean": round(sum(unexported) / max(len(unexported), 1))},
            "candidate_exported_bytes": {cid: b for cid, b in candidates.items() if run.candidate(cid).is_exported()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run directory (default: a temporary folder, removed afterwards)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("run_flags", nargs="*", help="extra flags for `mixprune run` (after --)")
    args = parser.parse_args()
    scratch = None if args.out else tempfile.mkdtemp(prefix="mixprune-pipeline-")
    out = Path(args.out or Path(scratch) / "run")
    cmd = [sys.executable, "-m", "mixprune.cli", "run", "--out", str(out), *args.run_flags]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: less sensitive to other jobs than wall time
    load_after = os.getloadavg()
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        return proc.returncode
    rundir = RunDir(out)
    run, ranking = rundir.load(), rundir.read_ranking()
    stages = run["stages"]
    result = {
        "command": "mixprune run " + " ".join(cmd[4:]),
        "config": run["config"],
        "wall_s": round(wall, 1),
        "cpu_s": {"user": round(usage.ru_utime, 1), "system": round(usage.ru_stime, 1)},
        "target_s": 300,
        "within_target": wall <= 300,
        "stages_s": {k: v for k, v in stages["run"]["timings_s"].items() if "." not in k},
        "prune_phases_s": stages["prune"]["summary"]["timings_s"],
        "candidates": stages["prune"]["summary"]["candidates"],
        "exported": sorted(stages["export"]["models"]),
        "chosen": ranking["chosen"],
        "chosen_why": ranking["chosen_why"],
        "dense_accuracy": ranking["dense"]["accuracy"],
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_avg_1_5_15_after": [round(x, 2) for x in load_after]},
        "disk": disk_usage(rundir),
        "versions": run["versions"],
    }
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "stages_s", "chosen")}, indent=2))
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
