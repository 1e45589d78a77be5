"""Reading and writing the run directory's records: JSON, safetensors, digests, versions, times."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from mixprune.atomic import atomic_write_bytes
from mixprune.errors import RunDirError


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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_tensors(path: Path) -> tuple[dict, dict]:
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


def write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.numpy import save

    data = save({k: tensors[k] for k in sorted(tensors)}, metadata=metadata)
    atomic_write_bytes(path, data)
    return data


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
