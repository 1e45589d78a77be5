"""Wall time of each phase of the default prune on this machine.

    python experiments/prune_timing/run.py

Runs `mixprune prune --model resnet18 --data digits --out DIR --train-epochs 3
--finetune-epochs 0` in a subprocess, reads the per-phase timings the stage records in
run.json, and writes results.json next to this file with the machine's load at the time
(timings on a shared 2-core machine are only comparable within one run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixprune.runs import RunDir, atomic_write_json, package_versions

HERE = Path(__file__).parent
COMMAND = ["prune", "--model", "resnet18", "--data", "digits", "--train-epochs", "3", "--finetune-epochs", "0"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        load_before = os.getloadavg()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mixprune.cli", *COMMAND, "--out", str(out)], check=True,
                       env=dict(os.environ, MIXPRUNE_QUIET="1"))
        wall = time.perf_counter() - start
        stage = RunDir(out).load()["stages"]["prune"]["summary"]
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    record = {
        "command": "mixprune " + " ".join(COMMAND) + " --out DIR",
        "wall_s": round(wall, 1), "phases_s": stage["timings_s"], "candidates": stage["candidates"],
        "mixmatch": stage["mixmatch"], "baselines": stage["baselines"],
        "run_dir_bytes": size, "cpu_count": os.cpu_count(),
        "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
        "versions": package_versions(),
    }
    atomic_write_json(HERE / "results.json", record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
