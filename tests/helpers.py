"""Helpers shared by the tests: `from tests.helpers import cli, ...` (fixtures stay in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mixprune.cli import main


def cli(*args):
    """`mixprune ARGS` in this process; click's Result (exit_code, output, stdout, stderr, exception)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def load(path) -> dict:
    return json.loads(Path(path).read_text())


# Runs in a fresh interpreter; the request and the answer pass as JSON.
_PROBE = """\
import json, sys
request = json.loads(sys.argv[1])
for name in request["imports"]:
    __import__(name)
if request["command"] is not None:
    from mixprune.cli import main
    try:
        main(request["command"])
    except SystemExit as exc:
        assert exc.code in (0, None), f"mixprune {request['command']} exited with {exc.code}"
loaded = [m for m in request["modules"] if any(n == m or n.startswith(m + ".") for n in sys.modules)]
print("\\n" + json.dumps(sorted(loaded)))
"""


def heavy_imports(modules, command=None, imports=()) -> list[str]:
    """Which of ``modules`` (or their submodules) a fresh interpreter has imported after importing
    ``imports`` and, given a ``command``, running `mixprune COMMAND` (which must exit 0)."""
    request = {"modules": list(modules), "imports": list(imports),
               "command": None if command is None else [str(a) for a in command]}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(request)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the prune stage's output (ARCHITECTURE.md record keys) ------------------------------
def prune(out, *args) -> Path:
    """`mixprune prune --out OUT ARGS`, which must succeed; the run directory."""
    result = cli("prune", "--out", out, *args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Path(out)


def torch_state(arrays: dict) -> dict:
    import torch

    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def load_candidates(run: Path) -> dict[str, dict]:
    """{cid: strategy, eval and full weights (torch, materialized from masks, values and state)}."""
    from mixprune.runs import RunDir

    rundir = RunDir(run)
    return {cid: {"strategy": rundir.candidate(cid).read_strategy(), "eval": rundir.candidate(cid).read_eval(),
                  "weights": torch_state(rundir.candidate(cid).load_state())}
            for cid in rundir.candidate_ids()}


def check_stored_weights(run: Path, cid: str, weights: dict, ranges: dict) -> None:
    """The on-disk contract of a candidate's weights (ARCHITECTURE.md, "The run directory"):
    ``weights`` (its full state dict) is dense x masks, + values where fine-tuned, + state."""
    import numpy as np
    from safetensors.numpy import load_file

    folder = run / "candidates" / cid
    full = {name: t.numpy() for name, t in weights.items()}
    masks = load_file(str(folder / "masks.safetensors"))
    state = load_file(str(folder / "state.safetensors"))
    assert set(masks) == set(ranges) and not set(state) & set(ranges), cid
    for name, packed in masks.items():
        assert packed.dtype == np.uint8 and np.array_equal(packed, np.packbits(full[name].reshape(-1) != 0)), name
    finetuned = json.loads((folder / "eval.json").read_text())["accuracy_finetuned"] is not None
    assert (folder / "values.safetensors").is_file() == finetuned, cid
    if finetuned:
        values = load_file(str(folder / "values.safetensors"))
        for name, kept in values.items():
            flat = full[name].reshape(-1)
            assert kept.tobytes() == flat[flat != 0].tobytes(), name


def check_eval_keys(record: dict) -> None:
    """eval.json: held-out figures (report) and tune figures (every choice), both with their sample counts."""
    for key in ("accuracy", "accuracy_raw", "accuracy_finetuned", "samples",
                "tune_accuracy", "tune_accuracy_finetuned", "tune_samples"):
        assert key in record, key
    assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 <= record["tune_accuracy"] <= 1.0
    assert record["samples"] > 0 and record["tune_samples"] > 0
    assert (record["accuracy_finetuned"] is None) == (record["tune_accuracy_finetuned"] is None)


def check_contract(run: Path, *, within_ranges: bool):
    """What every saved candidate must satisfy (ARCHITECTURE.md record keys and issue 3's checks)."""
    from safetensors.torch import load_file

    from mixprune.runs import RunDir

    ranges = json.loads((run / "ranges.json").read_text())["layers"]
    dense = load_file(str(run / "dense" / "weights.safetensors"))
    check_eval_keys(json.loads((run / "dense" / "eval.json").read_text()))
    candidates = load_candidates(run)
    assert candidates
    for cid, cand in candidates.items():
        strategy, weights, record = cand["strategy"], cand["weights"], cand["eval"]
        assert strategy["cid"] == cid and strategy["kind"] in ("mixmatch", "baseline")
        assert set(strategy["layers"]) == set(ranges)
        zeros = total = 0
        for name, ratio in strategy["layers"].items():
            w = weights[name]
            measured = float((w == 0).sum()) / w.numel()
            assert abs(measured - ratio) <= 0.005, (cid, name, measured, ratio)
            if within_ranges and strategy["kind"] == "mixmatch":
                assert ranges[name]["min"] - 1e-6 <= ratio <= ranges[name]["max"] + 1e-6, (cid, name)
            zeros += int((w == 0).sum())
            total += w.numel()
        assert abs(strategy["global_sparsity"] - zeros / total) < 1e-5
        # nothing outside the prunable weights gained zeros (normalization weights and biases included)
        for name, tensor in weights.items():
            if name not in ranges and tensor.is_floating_point() and "running" not in name:
                assert int((tensor == 0).sum()) <= int((dense[name] == 0).sum()), (cid, name)
        check_eval_keys(record)
        check_stored_weights(run, cid, weights, ranges)
        assert record["weights_sha256"] == RunDir(run).candidate(cid).weights_digest(), cid
    return candidates
