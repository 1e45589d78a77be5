"""One run directory: its paths, the models in it, run.json (stage status) and claiming a folder for a run."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from mixprune.atomic import atomic_write_json, clean_stale_temporaries
from mixprune.candidates import DENSE, STRUCTURED, VARIANT_MARK, CandidateId
from mixprune.errors import RunDirError

from .files import (CANDIDATES_DIR, EVAL_FILE, PARETO_FILE, RANGES_FILE, RANKING_FILE, RELEASE_DIR, REPORT_FILE,
                    RUN_FILE, SCORES_FILE)
from .io import now_iso, read_json, read_tensors, write_tensors
from .models import CandidateDir, CutDir, DenseDir, ModelDir, TorchModelDir, VariantDir


class RunDir:
    """Paths and records of one run directory (``runs/<name>/``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._dense_state = None

    # layout -------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / RUN_FILE

    @property
    def ranges_json(self) -> Path:
        return self.root / RANGES_FILE

    @property
    def ranking_json(self) -> Path:
        return self.root / RANKING_FILE

    @property
    def report_html(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def pareto_png(self) -> Path:
        return self.root / PARETO_FILE

    @property
    def scores_file(self) -> Path:
        return self.root / SCORES_FILE

    @property
    def candidates_dir(self) -> Path:
        return self.root / CANDIDATES_DIR

    def bundle_path(self, model: str, cid: str) -> Path:
        return self.root / RELEASE_DIR / f"{model}-{cid}.tar.gz"

    @property
    def dense(self) -> DenseDir:
        return DenseDir(self, DENSE, self.root / DENSE)

    def candidate(self, cid: str) -> CandidateDir | CutDir | VariantDir:
        try:
            parsed = CandidateId.parse(cid)
        except ValueError as exc:
            raise RunDirError(f"{self.candidates_dir / cid}: {exc}") from None
        kind = VariantDir if parsed.is_variant else CutDir if parsed.family == STRUCTURED else CandidateDir
        return kind(self, cid, self.candidates_dir / cid)

    def variant(self, parent: str, suffix: str) -> VariantDir:
        """The variant ``<parent>+<suffix>`` of a model (``suffix`` without the mark)."""
        return self.candidate(str(CandidateId.parse(parent).with_variant(suffix.removeprefix(VARIANT_MARK))))

    def model(self, mid: str) -> ModelDir:
        return self.dense if mid == DENSE else self.candidate(mid)

    def candidate_ids(self) -> list[str]:
        """Candidates whose pruning finished (eval.json is written last)."""
        if not self.candidates_dir.is_dir():
            return []
        return sorted(p.name for p in self.candidates_dir.iterdir() if (p / EVAL_FILE).is_file())

    def models(self) -> dict[str, ModelDir]:
        """The dense model (once its weights exist) and every finished candidate and variant, by id."""
        found: dict[str, ModelDir] = {DENSE: self.dense} if self.dense.has_weights() else {}
        found.update({cid: self.candidate(cid) for cid in self.candidate_ids()})
        return found

    def torch_models(self) -> dict[str, TorchModelDir]:
        """The models with torch weights (dense, pruned candidates): what the export stage exports."""
        return {mid: folder for mid, folder in self.models().items() if isinstance(folder, TorchModelDir)}

    def dense_state(self) -> dict:
        """The dense state dict (numpy), read once per RunDir: every candidate is stored against it."""
        if self._dense_state is None:
            self._dense_state = self.dense.load_state()
        return self._dense_state

    # run.json -----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.run_json.is_file()

    def require(self) -> dict:
        if not self.root.is_dir():
            raise RunDirError(f"run directory {self.root} does not exist; create it with `mixprune prune ... --out {self.root}`")
        return read_json(self.run_json, stage_hint="prune")

    def load(self) -> dict:
        return read_json(self.run_json) if self.exists() else {}

    def save(self, record: dict) -> None:
        atomic_write_json(self.run_json, record)

    def set_stage(self, stage: str, status: str, **extra) -> None:
        record = self.load()
        stages = record.setdefault("stages", {})
        entry = stages.setdefault(stage, {})
        entry["status"] = status
        entry[f"{status}_at"] = now_iso()
        entry.update(extra)
        self.save(record)

    def stage_status(self, stage: str) -> str | None:
        return self.load().get("stages", {}).get(stage, {}).get("status")

    def claim(self, *, resume: bool, force: bool | None = None) -> None:
        """Check that the folder may hold this run, before anything is written.

        An absent or empty folder is fine; a run is continued with ``resume`` or deleted with
        ``force`` (None: the command has no --force); anything else is refused.
        """
        if self.root.exists() and any(self.root.iterdir()):
            if not self.exists():
                raise RunDirError(f"{self.root} exists and is not a mixprune run directory; choose another --out")
            if force:
                shutil.rmtree(self.root)
            elif not resume:
                again = ", --force to start over," if force is not None else ""
                raise RunDirError(f"{self.root} already holds a run; pass --resume to continue it{again} "
                                  f"or choose another --out")
        clean_stale_temporaries(self.root)

    # other records ----------------------------------------------------------------------
    def load_scores(self) -> dict:
        return read_tensors(self.scores_file)[0]

    def save_scores(self, scores: dict) -> None:
        write_tensors(self.scores_file, scores)

    def drop_scores(self) -> None:
        """Remove the calibration cache once no candidate needs it (it is as large as two dense models)."""
        self.scores_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.scores_file.parent.rmdir()

    def read_ranges(self) -> dict:
        return read_json(self.ranges_json, stage_hint="prune")

    def write_ranges(self, record: dict) -> None:
        atomic_write_json(self.ranges_json, record)

    def prunable_names(self) -> list[str]:
        """The prunable weights of the run's model, as the prune stage found them (ranges.json)."""
        return list(self.read_ranges()["layers"])

    def read_ranking(self) -> dict | None:
        return read_json(self.ranking_json) if self.ranking_json.is_file() else None

    def write_ranking(self, record: dict) -> None:
        atomic_write_json(self.ranking_json, record)
