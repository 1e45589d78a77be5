"""The run directory's file and folder names and run.json's stage keys: the one place that spells them
(ARCHITECTURE.md, "The run directory"); everything else asks a ``RunDir`` for paths."""

from __future__ import annotations

from mixprune.compact import SUFFIX as COMPACT_SUFFIX

RUN_FILE, RANGES_FILE, RANKING_FILE = "run.json", "ranges.json", "ranking.json"
REPORT_FILE, PARETO_FILE = "report.html", "pareto.png"
SCORES_FILE = "calibration/scores.safetensors"
WEIGHTS_FILE = "weights.safetensors"  # the dense model's full state dict
MASKS_FILE, VALUES_FILE, STATE_FILE = "masks.safetensors", "values.safetensors", "state.safetensors"
STRATEGY_FILE, EVAL_FILE, EXPORT_FILE = "strategy.json", "eval.json", "export.json"
ONNX_FILE = "model.onnx"
COMPACT_FILE = ONNX_FILE + COMPACT_SUFFIX
BENCH_DIR = "bench"
CUT_FILE = "cut.json"  # a structured candidate's cut record (mixprune.models.cuts.Cut)
PRUNE_STAGE, EXPORT_STAGE, RUN_STAGE = "prune", "export", "run"  # run.json ``stages`` keys
PARTS_KEY = "mixprune_parts"  # state.safetensors metadata: sha256 of the masks and values it belongs with
CANDIDATES_DIR, RELEASE_DIR = "candidates", "release"


def bench_stage(device: str) -> str:
    """run.json ``stages`` key of the bench on one device."""
    return f"bench:{device}"
