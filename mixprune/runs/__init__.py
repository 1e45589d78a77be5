"""The run directory: every path in it, every record read from it, stage status and resume.

Stages talk only through these files, so any stage can be re-run, resumed or run on
another machine. This module is the one place that knows the layout (ARCHITECTURE.md,
"The run directory"): stages, ranking, release and experiments ask a ``RunDir`` and its
``DenseDir`` / ``CandidateDir`` for paths and records, and write through them, atomically.
It imports neither torch nor onnx; weights are numpy arrays here.
"""

from __future__ import annotations

from mixprune.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from mixprune.candidates import DENSE

from .files import (BENCH_DIR, COMPACT_FILE, CUT_FILE, EVAL_FILE, EXPORT_FILE, EXPORT_STAGE, MASKS_FILE, ONNX_FILE,
                    PRUNE_STAGE, RUN_STAGE, STATE_FILE, STRATEGY_FILE, VALUES_FILE, WEIGHTS_FILE, bench_stage)
from .io import now_iso, package_versions, read_json
from .models import (CandidateDir, CutDir, CutWeights, DenseDir, FullStateDir, ModelDir, ModelRecords, TorchModelDir,
                     VariantDir)
from .rundir import RunDir

__all__ = ["RunDir", "ModelDir", "TorchModelDir", "FullStateDir", "DenseDir", "CandidateDir", "CutDir", "CutWeights", "VariantDir",
           "ModelRecords", "DENSE", "BENCH_DIR", "COMPACT_FILE", "CUT_FILE", "EVAL_FILE", "EXPORT_FILE", "MASKS_FILE",
           "ONNX_FILE", "STATE_FILE", "STRATEGY_FILE", "VALUES_FILE", "WEIGHTS_FILE", "PRUNE_STAGE", "EXPORT_STAGE",
           "RUN_STAGE", "bench_stage", "atomic_path", "atomic_write_bytes", "atomic_write_json", "read_json",
           "now_iso", "package_versions"]
