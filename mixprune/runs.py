"""The run directory: layout, atomic writes, stage status and resume.

Stages talk only through these files, so any stage can be re-run, resumed or run on
another machine. Every artifact is written to a temporary name in the same folder and
renamed into place, so a killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

from .errors import RunDirError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; artifacts get the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


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


def clean_stale_temporaries(folder: Path) -> None:
    """Remove temporaries a killed process left behind (they never became artifacts)."""
    if folder.is_dir():
        for tmp in folder.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


class RunDir:
    """Paths and records of one run directory (``runs/<name>/``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # layout -------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def dense_dir(self) -> Path:
        return self.root / "dense"

    @property
    def ranges_json(self) -> Path:
        return self.root / "ranges.json"

    @property
    def candidates_dir(self) -> Path:
        return self.root / "candidates"

    @property
    def calibration_dir(self) -> Path:
        return self.root / "calibration"

    def candidate_dir(self, cid: str) -> Path:
        return self.candidates_dir / cid

    def candidate_ids(self) -> list[str]:
        """Candidates whose pruning finished (eval.json is written last)."""
        if not self.candidates_dir.is_dir():
            return []
        return sorted(p.name for p in self.candidates_dir.iterdir() if (p / "eval.json").is_file())

    def model_dirs(self) -> dict[str, Path]:
        """The dense model and every finished candidate, by id ("dense" for the dense one)."""
        dirs = {"dense": self.dense_dir} if (self.dense_dir / "weights.safetensors").is_file() else {}
        dirs.update({cid: self.candidate_dir(cid) for cid in self.candidate_ids()})
        return dirs

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
