"""The run directory: every path in it, every record read from it, stage status and resume.

Stages talk only through these files, so any stage can be re-run, resumed or run on
another machine. This module is the one place that knows the layout (ARCHITECTURE.md,
"The run directory"): stages, ranking, release and experiments ask a ``RunDir`` and its
``DenseDir`` / ``CandidateDir`` for paths and records, and write through them, atomically.
It imports neither torch nor onnx; weights are numpy arrays here.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path

from .atomic import atomic_path, atomic_write_bytes, atomic_write_json, clean_stale_temporaries
from .compact import SUFFIX as COMPACT_SUFFIX
from .errors import RunDirError

__all__ = ["RunDir", "DenseDir", "CandidateDir", "VariantDir", "ModelRecords", "atomic_path", "atomic_write_bytes",
           "atomic_write_json", "read_json", "now_iso", "package_versions"]

DENSE = "dense"  # the dense model's id wherever candidates are listed by id
RUN_FILE, RANGES_FILE, RANKING_FILE = "run.json", "ranges.json", "ranking.json"
REPORT_FILE, PARETO_FILE = "report.html", "pareto.png"
SCORES_FILE = "calibration/scores.safetensors"
WEIGHTS_FILE = "weights.safetensors"  # the dense model's full state dict
MASKS_FILE, VALUES_FILE, STATE_FILE = "masks.safetensors", "values.safetensors", "state.safetensors"
STRATEGY_FILE, EVAL_FILE, EXPORT_FILE = "strategy.json", "eval.json", "export.json"
ONNX_FILE = "model.onnx"
COMPACT_FILE = ONNX_FILE + COMPACT_SUFFIX
BENCH_DIR = "bench"
VARIANT_MARK = "+"  # <parent>+int8: a variant of another model
STRUCTURED_PREFIX = "st-"  # st-<signal>-<strategy>: a structured (channel-cut) candidate
CUT_FILE = "cut.json"  # a structured candidate's cut record (mixprune.cuts.Cut)
_PARTS = "mixprune_parts"  # state.safetensors metadata: sha256 of the masks and values it belongs with


def read_json(path: str | os.PathLike, *, stage_hint: str | None = None):
    path = Path(path)
    if not path.is_file():
        hint = f"; run `mixprune {stage_hint}` first" if stage_hint else ""
        raise RunDirError(f"{path} does not exist{hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is not readable JSON ({exc}); delete it and re-run the stage") from exc


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_tensors(path: Path) -> tuple[dict, dict]:
    """(numpy arrays, metadata) of a safetensors file, with one clear error when it is unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        raise RunDirError(f"{path} does not exist; re-run `mixprune prune --resume` on its run directory")
    try:
        with safe_open(str(path), framework="np") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        raise RunDirError(f"cannot read {path} ({' '.join(str(exc).split())[:120]}); "
                          f"delete the candidate's folder and re-run `mixprune prune --resume`") from exc


def _write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.numpy import save

    data = save({k: tensors[k] for k in sorted(tensors)}, metadata=metadata)
    atomic_write_bytes(path, data)
    return data


@dataclasses.dataclass(frozen=True)
class ModelRecords:
    """Every record of one model, read once: what ranking and release work from."""
    strategy: dict | None  # None for the dense model
    eval: dict
    export: dict | None  # None until exported
    bench: dict[str, dict]  # {device: bench record}


class ModelDir(abc.ABC):
    """What the dense model and every candidate have alike: records, ONNX files, bench records."""

    def __init__(self, run: "RunDir", mid: str, path: Path):
        self.run, self.id, self.path = run, mid, path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path})"

    # paths --------------------------------------------------------------------------
    @property
    def eval_json(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def strategy_json(self) -> Path:
        return self.path / STRATEGY_FILE

    @property
    def export_json(self) -> Path:
        return self.path / EXPORT_FILE

    @property
    def onnx_file(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def compact_file(self) -> Path:
        return self.path / COMPACT_FILE

    @property
    def bench_dir(self) -> Path:
        return self.path / BENCH_DIR

    def bench_json(self, device: str) -> Path:
        return self.bench_dir / f"{device}.json"

    # state ----------------------------------------------------------------------------
    def is_finished(self) -> bool:
        """Pruning (or training) finished: eval.json is written last."""
        return self.eval_json.is_file()

    def is_exported(self) -> bool:
        return self.export_json.is_file() and self.onnx_file.is_file()

    # records --------------------------------------------------------------------------
    def read_eval(self) -> dict:
        return read_json(self.eval_json, stage_hint="prune")

    def read_strategy(self) -> dict | None:
        return read_json(self.strategy_json, stage_hint="prune")

    def write_strategy(self, record: dict) -> None:
        atomic_write_json(self.strategy_json, record)

    def read_export(self) -> dict | None:
        return read_json(self.export_json) if self.export_json.is_file() else None

    def read_bench(self) -> dict[str, dict]:
        return {p.stem: read_json(p) for p in sorted(self.bench_dir.glob("*.json"))}

    def records(self) -> ModelRecords:
        return ModelRecords(strategy=self.read_strategy(), eval=self.read_eval(), export=self.read_export(),
                            bench=self.read_bench())

    def write_eval(self, record: dict) -> None:
        atomic_write_json(self.eval_json, record)

    def write_bench(self, device: str, record: dict) -> None:
        atomic_write_json(self.bench_json(device), record)

    def write_export(self, record: dict, onnx_bytes: bytes, container: bytes) -> None:
        """The ONNX file and its compact container, then export.json, which marks the export finished."""
        atomic_write_bytes(self.onnx_file, onnx_bytes)
        atomic_write_bytes(self.compact_file, container)
        atomic_write_json(self.export_json, record)

    def drop_export(self) -> None:
        """Remove a previous export, so old artifacts are never paired with new weights."""
        for path in (self.export_json, self.onnx_file, self.compact_file):
            path.unlink(missing_ok=True)



class TorchModelDir(ModelDir):
    """A model with torch weights, which the export stage turns into ONNX (mixprune.models.build_stored):
    dense, masked or cut."""

    @abc.abstractmethod
    def weights_digest(self) -> str:
        """sha256 that changes whenever the stored weights change (export.json keeps the one it exported)."""


class FullStateDir(TorchModelDir):
    """A model whose full state dict is weights.safetensors (not stored against dense)."""

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    def load_state(self) -> dict:
        """The full state dict (numpy arrays by parameter name)."""
        return _read_tensors(self.weights_file)[0]


class DenseDir(FullStateDir):
    """``dense/``: the full state dict in weights.safetensors."""

    def read_strategy(self) -> None:
        return None

    def has_weights(self) -> bool:
        return self.weights_file.is_file()

    def save_state(self, state: dict) -> str:
        """Write the full state dict; returns its sha256 (the weights digest)."""
        return _sha256(_write_tensors(self.weights_file, state))

    def weights_digest(self) -> str:
        return _sha256_file(self.weights_file)


class CandidateDir(TorchModelDir):
    """``candidates/<cid>/``: strategy.json, and the weights as masks (+ values) + state over dense.

    state.safetensors is written last and its metadata holds the sha256 of the masks and
    values it belongs with, so a write killed half-way is detected, and its sha256 is the
    candidate's weights digest.
    """

    @property
    def masks_file(self) -> Path:
        return self.path / MASKS_FILE

    @property
    def values_file(self) -> Path:
        return self.path / VALUES_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def save_state(self, full: dict, pruned: list[str]) -> str:
        """Store the full state dict ``full`` whose ``pruned`` parameters hold the zeros; returns the digest."""
        from . import masked

        return self.save_stored(masked.split(full, self.run.dense_state(), pruned))

    def save_stored(self, stored) -> str:
        """Store a candidate already split into masks, values and state (``masked.MaskedWeights``);
        returns the digest."""
        files = {"masks_sha256": _sha256(_write_tensors(self.masks_file, stored.masks))}
        if stored.values is None:
            self.values_file.unlink(missing_ok=True)
        else:
            files["values_sha256"] = _sha256(_write_tensors(self.values_file, stored.values))
        # one metadata key: safetensors writes several in a random order, which would change the digest
        parts = {_PARTS: json.dumps(files, sort_keys=True)}
        return _sha256(_write_tensors(self.state_file, stored.state, metadata=parts))

    def stored_weights(self):
        """The candidate's masks, values and state as stored (checked to belong together)."""
        from . import masked

        state, metadata = _read_tensors(self.state_file)
        files = json.loads(metadata.get(_PARTS, "{}"))
        expected = {"masks": (self.masks_file, files.get("masks_sha256")),
                    "values": (self.values_file, files.get("values_sha256"))}
        parts = {}
        for part, (path, sha) in expected.items():
            if sha is None:
                parts[part] = None
                continue
            if not path.is_file() or _sha256_file(path) != sha:
                raise RunDirError(f"{path} does not belong with {self.state_file} (a write was interrupted); "
                                  f"delete {self.path} and re-run `mixprune prune --resume`")
            parts[part] = _read_tensors(path)[0]
        if parts["masks"] is None:
            raise RunDirError(f"{self.state_file} names no masks; delete {self.path} and re-run `mixprune prune --resume`")
        return masked.MaskedWeights(masks=parts["masks"], values=parts["values"], state=state)

    def load_state(self) -> dict:
        """The full state dict (numpy arrays by parameter name)."""
        from . import masked

        return masked.join(self.run.dense_state(), self.stored_weights())

    def keep_masks(self) -> dict:
        """{parameter name: boolean keep-mask shaped like the weight} of every pruned parameter."""
        from . import masked

        dense = self.run.dense_state()
        return {name: masked.keep_mask(packed, dense[name].shape)
                for name, packed in self.stored_weights().masks.items()}

    def weights_digest(self) -> str:
        return _sha256_file(self.state_file)


class CutDir(TorchModelDir):
    """``candidates/st-.../``: a structured candidate, smaller than dense: cut.json (the recorded cut)
    and state.safetensors (written last): the tensors that differ from the dense weights with the cut
    replayed on them (re-estimated normalization statistics; every tensor once fine-tuned), so an
    unexported candidate weighs kilobytes, not a copy of its weights. mixprune.cuts.build_cut_model
    joins the two."""

    @property
    def cut_file(self) -> Path:
        return self.path / CUT_FILE

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def save_state(self, cut: dict, changed: dict) -> str:
        """Write the cut record, then the changed tensors; returns the weights digest."""
        atomic_write_json(self.cut_file, cut)
        return self.weights_digest(_write_tensors(self.state_file, changed))

    def read_cut(self) -> dict:
        return read_json(self.cut_file, stage_hint="prune --resume")

    def load_changes(self) -> dict:
        """The tensors stored over the dense weights with the cut replayed (numpy arrays by name)."""
        return _read_tensors(self.state_file)[0]

    def weights_digest(self, stored: bytes | None = None) -> str:
        """sha256 of the cut record and the stored tensors: either changing changes the model."""
        data = stored if stored is not None else self.state_file.read_bytes()
        return _sha256(self.cut_file.read_bytes() + data)


class VariantDir(ModelDir):
    """``candidates/<parent>+<kind>/``: a model made from another one's ONNX file (an INT8 variant).

    It has records and an ONNX file like every candidate, and no torch weights.
    """


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
        return self.root / "candidates"

    def bundle_path(self, model: str, cid: str) -> Path:
        return self.root / "release" / f"{model}-{cid}.tar.gz"

    @property
    def dense(self) -> DenseDir:
        return DenseDir(self, DENSE, self.root / DENSE)

    def candidate(self, cid: str) -> CandidateDir | CutDir | VariantDir:
        kind = VariantDir if VARIANT_MARK in cid else CutDir if cid.startswith(STRUCTURED_PREFIX) else CandidateDir
        return kind(self, cid, self.candidates_dir / cid)

    def variant(self, parent: str, suffix: str) -> VariantDir:
        """The variant ``<parent><suffix>`` of a model (``suffix`` starts with VARIANT_MARK)."""
        return self.candidate(parent + suffix)

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
        return _read_tensors(self.scores_file)[0]

    def save_scores(self, scores: dict) -> None:
        _write_tensors(self.scores_file, scores)

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


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a result depends on (read from metadata, nothing imported)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mixprune", "torch", "timm", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
