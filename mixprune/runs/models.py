"""One model's folder of a run directory: the dense model, a masked or cut candidate, an INT8 variant.

Each knows its paths and records; those with torch weights know how they are stored
(ARCHITECTURE.md, "The run directory")."""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mixprune.atomic import atomic_write_bytes, atomic_write_json
from mixprune.errors import RunDirError

from .files import (BENCH_DIR, COMPACT_FILE, CUT_FILE, EVAL_FILE, EXPORT_FILE, MASKS_FILE, ONNX_FILE, PARTS_KEY,
                    STATE_FILE, STRATEGY_FILE, VALUES_FILE, WEIGHTS_FILE)
from .io import read_json, read_tensors, sha256_bytes, sha256_file, write_tensors

if TYPE_CHECKING:
    from .rundir import RunDir


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
    """A model with torch weights, which the export stage turns into ONNX (mixprune.models.stored.build_stored):
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
        return read_tensors(self.weights_file)[0]


class DenseDir(FullStateDir):
    """``dense/``: the full state dict in weights.safetensors."""

    def read_strategy(self) -> None:
        return None

    def has_weights(self) -> bool:
        return self.weights_file.is_file()

    def save_weights(self, state: dict) -> str:
        """Write the full state dict; returns its sha256 (the weights digest)."""
        return sha256_bytes(write_tensors(self.weights_file, state))

    def weights_digest(self) -> str:
        return sha256_file(self.weights_file)


class OverDenseDir(TorchModelDir):
    """A candidate stored against the dense weights: state.safetensors, written last, holds what
    differs from them (with the masks or the cut its subclass adds)."""

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE


class CandidateDir(OverDenseDir):
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

    def save_pruned(self, full: dict, pruned: list[str]) -> str:
        """Store the full state dict ``full`` whose ``pruned`` parameters hold the zeros; returns the digest."""
        from mixprune import masked

        return self.store(masked.split(full, self.run.dense_state(), pruned))

    def store(self, stored) -> str:
        """Store a candidate already split into masks, values and state (``masked.MaskedWeights``);
        returns the digest."""
        files = {"masks_sha256": sha256_bytes(write_tensors(self.masks_file, stored.masks))}
        if stored.values is None:
            self.values_file.unlink(missing_ok=True)
        else:
            files["values_sha256"] = sha256_bytes(write_tensors(self.values_file, stored.values))
        # one metadata key: safetensors writes several in a random order, which would change the digest
        parts = {PARTS_KEY: json.dumps(files, sort_keys=True)}
        return sha256_bytes(write_tensors(self.state_file, stored.state, metadata=parts))

    def stored_weights(self):
        """The candidate's masks, values and state as stored (checked to belong together)."""
        from mixprune import masked

        state, metadata = read_tensors(self.state_file)
        files = json.loads(metadata.get(PARTS_KEY, "{}"))
        expected = {"masks": (self.masks_file, files.get("masks_sha256")),
                    "values": (self.values_file, files.get("values_sha256"))}
        parts = {}
        for part, (path, sha) in expected.items():
            if sha is None:
                parts[part] = None
                continue
            if not path.is_file() or sha256_file(path) != sha:
                raise RunDirError(f"{path} does not belong with {self.state_file} (a write was interrupted); "
                                  f"delete {self.path} and re-run `mixprune prune --resume`")
            parts[part] = read_tensors(path)[0]
        if parts["masks"] is None:
            raise RunDirError(f"{self.state_file} names no masks; delete {self.path} and re-run `mixprune prune --resume`")
        return masked.MaskedWeights(masks=parts["masks"], values=parts["values"], state=state)

    def load_state(self) -> dict:
        """The full state dict (numpy arrays by parameter name)."""
        from mixprune import masked

        return masked.join(self.run.dense_state(), self.stored_weights())

    def keep_masks(self) -> dict:
        """{parameter name: boolean keep-mask shaped like the weight} of every pruned parameter."""
        from mixprune import masked

        dense = self.run.dense_state()
        return {name: masked.keep_mask(packed, dense[name].shape)
                for name, packed in self.stored_weights().masks.items()}

    def weights_digest(self) -> str:
        return sha256_file(self.state_file)


@dataclasses.dataclass(frozen=True)
class CutWeights:
    """A structured candidate's weights as stored: its cut record (mixprune.models.cuts.Cut as a dict) and the
    tensors that differ from the dense weights with the cut replayed (numpy arrays by name)."""
    cut: dict
    changed: dict


class CutDir(OverDenseDir):
    """``candidates/st-.../``: a structured candidate, smaller than dense: cut.json (the recorded cut)
    and state.safetensors (written last): the tensors that differ from the dense weights with the cut
    replayed on them (re-estimated normalization statistics; every tensor once fine-tuned), so an
    unexported candidate weighs kilobytes, not a copy of its weights. mixprune.models.cuts.build_cut_model
    joins the two."""

    @property
    def cut_file(self) -> Path:
        return self.path / CUT_FILE

    def store(self, weights: CutWeights) -> str:
        """Write the cut record, then the changed tensors; returns the weights digest."""
        atomic_write_json(self.cut_file, weights.cut)
        return self.weights_digest(write_tensors(self.state_file, weights.changed))

    def read_cut(self) -> dict:
        return read_json(self.cut_file, stage_hint="prune --resume")

    def load_changes(self) -> dict:
        """The tensors stored over the dense weights with the cut replayed (numpy arrays by name)."""
        return read_tensors(self.state_file)[0]

    def weights_digest(self, stored: bytes | None = None) -> str:
        """sha256 of the cut record and the stored tensors: either changing changes the model."""
        data = stored if stored is not None else self.state_file.read_bytes()
        return sha256_bytes(self.cut_file.read_bytes() + data)


class VariantDir(ModelDir):
    """``candidates/<parent>+<kind>/``: a model made from another one's ONNX file (an INT8 variant).

    It has records and an ONNX file like every candidate, and no torch weights.
    """
