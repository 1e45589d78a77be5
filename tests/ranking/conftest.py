"""One `mixprune run --quick` shared by the ranking, release and run tests; copies for tests that change it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixprune.cli import main


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def heavy_imports(args: list[str], modules: tuple[str, ...]) -> list[str]:
    """Run `mixprune ARGS` in a fresh interpreter; the ``modules`` it imported (it must exit 0)."""
    code = ("import sys; from mixprune.cli import main\n"
            f"try: main({args!r})\nexcept SystemExit as e: assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


def load(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """A finished quick run: test_resnet on digits, pruned, top candidates exported, benched on host, ranked, released."""
    out = tmp_path_factory.mktemp("pipeline") / "quick"
    result = cli("run", "--quick", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture
def run_copy(quick_run, tmp_path) -> Path:
    """A private copy of the quick run, free to modify."""
    return Path(shutil.copytree(quick_run, tmp_path / "copy"))
