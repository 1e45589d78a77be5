"""What the prune stage's candidate tasks share, how a worker process sets itself up for them
once, and the driver's one write of what a task returns (mixprune/executors runs the tasks)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from mixprune.config import RunConfig
from mixprune.data import Splits
from mixprune.models import ModelSpec, build_model, load_state
from mixprune.runs import RunDir

from .inputs import Inputs
from .plans import Made
from .ranges import get_table
from .roles import discover_layers


@dataclasses.dataclass(frozen=True)
class StageWork:
    """What every task of one phase shares: put into the executor's object store once per run."""
    key: str  # names this work in a worker process's cache
    config: RunConfig
    spec: ModelSpec
    splits: Splits
    dense_state: dict  # numpy arrays


def worker_inputs(work: StageWork) -> Inputs:
    """The stage's Inputs in a worker: the dense model rebuilt from the shared weights."""
    model = build_model(work.spec).eval()
    load_state(model, work.dense_state, "the dense weights")
    return Inputs(config=work.config, run=RunDir(work.config.out), spec=work.spec, splits=work.splits,
                  model=model, layers=discover_layers(model), table=get_table(work.config.model, work.config.rules))


_MADE: dict[str, object] = {}  # per process: what the tasks of the current work set up once


def made_once(work: StageWork, make: Callable[[StageWork], object]):
    """What ``make(work)`` returns, made once per process and work (model, scores, data)."""
    if work.key not in _MADE:
        _MADE.clear()
        _MADE[work.key] = make(work)
    return _MADE[work.key]


def serve_here(work: StageWork, made) -> None:
    """In the driver's process, ``made`` (the driver's own model and scores) serves ``work``'s tasks."""
    _MADE.clear()
    _MADE[work.key] = made


def forget_work() -> None:
    """Drop what this process set up for the last work (its model copies and scores)."""
    _MADE.clear()


def store_result(run: RunDir, made: Made) -> dict:
    """The driver's write of what a candidate task made: its weights (the folder's ``store`` returns their
    digest), strategy.json, eval.json last; returns the eval record."""
    folder = run.candidate(made.strategy["cid"])
    digest = folder.store(made.weights)
    folder.write_strategy(made.strategy)
    record = {**made.evaluation, "weights_sha256": digest}
    folder.write_eval(record)
    return record
