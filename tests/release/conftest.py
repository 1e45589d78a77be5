"""One `mixprune run --quick` shared by the ranking, release and run tests; copies for tests that change it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import cli


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
