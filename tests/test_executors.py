"""--executor local|ray: the same run directory either way; Ray only when asked for."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from mixprune.candidates import CandidateId

from tests.helpers import cli, heavy_imports, load

QUICK_PRUNE = ["--model", "test_resnet", "--img-size", "16", "--train-epochs", "1", "--signals", "magnitude",
               "--baselines", "mag", "--mode", "both", "--macs-reduction", "0.5", "--structured-baselines", "mag",
               "--finetune-epochs", "1", "--finetune-top", "1"]


@contextlib.contextmanager
def torch_threads(count: int):
    """Torch on ``count`` threads, as a Ray task with that many CPUs: BatchNorm statistics are summed
    in another order on another thread count, so weights are bit-identical only at the same count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prune_on_one_thread(out: Path, *flags) -> Path:
    """`mixprune prune` with the driver's torch on one thread, as each Ray task (--ray-cpus-per-task 1)."""
    with torch_threads(1):
        result = cli("prune", "--out", out, *QUICK_PRUNE, *flags)
    assert result.exit_code == 0, result.output
    return out


def _records(run: Path) -> dict:
    """Every candidate's strategy.json and eval.json (weights digest included), by cid."""
    return {folder.name: {name: load(folder / name) for name in ("strategy.json", "eval.json")}
            for folder in sorted((run / "candidates").iterdir())}


def test_the_local_executor_imports_no_ray():
    assert heavy_imports(["ray"], imports=["mixprune.cli", "mixprune.pruning.stage", "mixprune.executors"]) == []


def test_ray_missing_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = cli("prune", "--out", tmp_path / "run", *QUICK_PRUNE, "--executor", "ray")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and 'pip install -e ".[ray]"' in errors[0]
    assert not (tmp_path / "run").exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


@pytest.mark.parametrize("address, message", [
    (None, "cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused)"),
    ("nonsense", "--ray-address must be auto or host:port, got 'nonsense'"),
])
def test_a_cluster_that_cannot_be_reached_is_one_line_and_writes_nothing(address, message, tmp_path):
    pytest.importorskip("ray")
    port = _closed_port()
    address = address or f"127.0.0.1:{port}"
    result = cli("prune", "--out", tmp_path / "run", *QUICK_PRUNE, "--executor", "ray", "--ray-address", address)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message.format(port=port) in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    return prune_on_one_thread(tmp_path_factory.mktemp("executors") / "local")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance with 2 CPUs for the module; --executor ray joins it instead of starting one."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             resources={"device:host": 1}, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MIXPRUNE_QUIET": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_same_candidates_as_local(local_run, ray_instance, tmp_path):
    out = prune_on_one_thread(tmp_path / "ray", "--executor", "ray")
    local, remote = _records(local_run), _records(out)
    # 10 Mix-and-Match + 10 matched baselines, 10 structured + 1 structured baseline at their MACs
    assert sorted(local) == sorted(remote) and len(local) == 31
    assert sum(CandidateId.parse(cid).family == "structured" for cid in local) == 11
    finetuned = [cid for cid, r in local.items() if r["eval.json"]["accuracy_finetuned"] is not None]
    assert len(finetuned) == 4  # per family the best Mix-and-Match candidate and its matched baseline
    for cid in local:  # field by field: accuracies, ratios, sparsity and the weights digest
        assert remote[cid] == local[cid], cid
    assert load(out / "run.json")["config"]["executor"] == "ray"


@pytest.mark.slow
def test_a_run_started_locally_resumes_on_ray(local_run, ray_instance, tmp_path):
    """The driver killed: what is missing is made again on the other executor, and the same."""
    out = Path(shutil.copytree(local_run, tmp_path / "copy"))
    missing = sorted((out / "candidates").iterdir())[::3]
    for folder in missing:
        shutil.rmtree(folder)
    kept = {p.name: (p / "eval.json").stat().st_mtime_ns for p in (out / "candidates").iterdir()}
    with torch_threads(1):
        result = cli("prune", "--out", out, "--resume", "--executor", "ray")
    assert result.exit_code == 0, result.output
    assert load(out / "run.json")["stages"]["prune"]["summary"]["resumed"] == len(kept)
    assert _records(out) == _records(local_run)
    assert all((out / "candidates" / cid / "eval.json").stat().st_mtime_ns == t for cid, t in kept.items())
    assert load(out / "run.json")["config"]["executor"] == "ray"


def _kill_a_task_process(run: Path, after: int, timeout_s: float = 300) -> int | None:
    """SIGKILL one Ray worker while it runs a task (Ray titles it ``ray::<function>``, idle ones
    ``ray::IDLE``), once ``after`` candidates are written; its pid, or None if none was seen."""
    import os
    import signal
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len(list(run.glob("candidates/*/eval.json"))) >= after:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if title.startswith(b"ray::_pinned"):
                    os.kill(int(pid), signal.SIGKILL)
                    return int(pid)
        time.sleep(0.05)
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_prune_is_retried_and_the_run_is_the_same(local_run, ray_instance, tmp_path):
    """Ray retries the killed task; every candidate is written once and equals the local run's."""
    import threading

    out = tmp_path / "killed"
    killed = []
    killer = threading.Thread(target=lambda: killed.append(_kill_a_task_process(out, after=3)))
    killer.start()
    try:
        prune_on_one_thread(out, "--executor", "ray")
    finally:
        killer.join()
    assert killed[0] is not None, "no Ray task process was seen running"
    assert _records(out) == _records(local_run)  # the same folders, none lost, none extra
    assert not list(out.rglob(".*.tmp"))  # no write left half done


def _exported(run: Path, models: list[str]) -> dict:
    """Each model's export.json (less its time stamp), and a variant's strategy.json and eval.json."""
    records = {}
    for mid in models:
        folder = run / ("dense" if mid == "dense" else f"candidates/{mid}")
        records[mid] = {name: load(folder / name) for name in ("export.json", "strategy.json", "eval.json")
                        if (folder / name).is_file() and (name == "export.json" or "+" in mid)}
        records[mid]["export.json"].pop("exported_at")
    return records


@pytest.mark.slow
def test_export_quantize_and_bench_on_ray_give_the_same_records(local_run, ray_instance, tmp_path):
    """Export, INT8 and device benchmark tasks: the same files and records as locally (timings aside)."""
    chosen = ["dense", "mm-magnitude-balanced", "st-magnitude-balanced"]
    runs = {}
    for executor in ("local", "ray"):
        out = runs[executor] = Path(shutil.copytree(local_run, tmp_path / executor))
        with torch_threads(1):
            result = cli("export", out, *(f"--candidate={cid}" for cid in chosen), "--quantize", "static",
                         "--executor", executor)
            assert result.exit_code == 0, result.output
            result = cli("bench", out, "--device", "host", "--runs", "3", "--warmup", "1", "--executor", executor)
            assert result.exit_code == 0, result.output
    models = [*chosen, *(f"{cid}+int8u" for cid in chosen)]
    local, remote = _exported(runs["local"], models), _exported(runs["ray"], models)
    assert local == remote
    assert all(r["export.json"]["verified"] for mid, r in local.items() if "+" not in mid)
    for mid in models:  # every model measured alone and interleaved with dense, on host, once
        folder = runs["ray"] / ("dense" if mid == "dense" else f"candidates/{mid}")
        bench = load(folder / "bench" / "host.json")
        assert bench["candidate"] == mid and bench["device"] == "host" and bench["latency_ms"]["p50"] > 0
        assert bench["interleaved"]["reference"] == "dense" and bench["model"] == str(folder / "model.onnx")


def _ranked(run: Path) -> dict:
    """ranking.json less its per-device measures and Pareto fronts (timings, which no two runs share)."""
    ranking = json.loads((run / "ranking.json").read_text().replace(str(run), "RUN"))  # reasons name the folder
    return {"chosen": ranking["chosen"],
            "candidates": {r["cid"]: {k: v for k, v in r.items() if k not in ("devices", "pareto")}
                           for r in ranking["candidates"]}}


@pytest.mark.slow
def test_a_whole_run_on_ray_makes_the_same_models_and_the_same_choice(ray_instance, tmp_path):
    """`mixprune run`: candidates, accuracies, export records, ranking and chosen model as locally.
    The choice is on compact size: a latency choice between near-equal models follows timing noise."""
    runs = {}
    for executor in ("local", "ray"):
        out = runs[executor] = tmp_path / executor
        with torch_threads(1):
            result = cli("run", "--quick", "--objective", "size", "--out", out, "--executor", executor)
        assert result.exit_code == 0, result.output + repr(result.exception)
    local, remote = runs["local"], runs["ray"]
    assert _records(local) == _records(remote)
    models = sorted(p.parent.name for p in local.glob("candidates/*/export.json"))
    assert models == sorted(p.parent.name for p in remote.glob("candidates/*/export.json"))
    assert any(CandidateId.parse(m).is_variant for m in models)
    assert any(CandidateId.parse(m).family == "structured" for m in models)
    assert _exported(local, ["dense", *models]) == _exported(remote, ["dense", *models])
    assert _ranked(local) == _ranked(remote)
    chosen = load(remote / "run.json")["stages"]["run"]["chosen"]
    assert chosen == load(local / "run.json")["stages"]["run"]["chosen"] == _ranked(local)["chosen"]
    folder = "dense" if chosen == "dense" else f"candidates/{chosen}"
    assert (local / folder / "model.onnx").read_bytes() == (remote / folder / "model.onnx").read_bytes()
    assert load(remote / "run.json")["config"]["executor"] == "ray"


def test_a_device_no_ray_node_holds_is_one_line(ray_instance, local_run, tmp_path):
    out = Path(shutil.copytree(local_run, tmp_path / "run"))
    assert cli("export", out, "--candidate", "dense").exit_code == 0
    result = cli("bench", out, "--device", "rpi4", "--executor", "ray")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no node of the Ray cluster holds device:rpi4" in lines[0], result.output
    assert not (out / "dense" / "bench").exists()


def test_a_task_that_fails_for_its_own_reason_is_raised_once_not_retried(ray_instance, tmp_path):
    from mixprune.executors import ExecutorOptions, open_executor

    def fails(log, item):  # defined here, so Ray ships it by value
        with open(log, "a") as f:
            f.write(f"{item}\n")
        raise ValueError(f"candidate {item} cannot be made")

    log = tmp_path / "attempts.txt"
    with open_executor("ray", ExecutorOptions()) as executor, pytest.raises(ValueError, match="candidate 7 cannot"):
        list(executor.map(fails, str(log), [7]))
    assert log.read_text().splitlines() == ["7"]  # a deterministic failure is not tried again


def test_a_worker_killed_mid_task_is_retried_and_nothing_is_lost_or_doubled(ray_instance, tmp_path):
    from mixprune.executors import ExecutorOptions, open_executor

    def dies_once(folder, item):
        import os
        import signal
        from pathlib import Path

        marker = Path(folder) / f"{item}.started"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies mid-task
        return item * 10

    with open_executor("ray", ExecutorOptions()) as executor:
        results = list(executor.map(dies_once, str(tmp_path), [1, 2, 3]))
    assert sorted(results) == [(1, 10), (2, 20), (3, 30)]
