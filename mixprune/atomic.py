"""Atomic writes: a temporary file beside the target, renamed into place only on success.

A killed process never leaves a half-written artifact behind; the file gets the mode a
plain ``open`` would give it (mkstemp's owner-only mode is not kept). Standard library only,
so the compact container's command line and the device side can use it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
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


def clean_stale_temporaries(folder: Path) -> None:
    """Remove temporaries a killed process left behind (they never became artifacts)."""
    if folder.is_dir():
        for tmp in folder.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
