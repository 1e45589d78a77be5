"""`mixprune run`: the one-command pipeline, its configuration, refusals and kill -9 + --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mixprune.candidates import CandidateId
from mixprune.config import QUICK_DEFAULTS, RUN_DEFAULTS, RunConfig, run_presets

from tests.helpers import cli, load


def test_run_wrote_every_stage_and_printed_where(quick_run):
    stages = load(quick_run / "run.json")["stages"]
    for stage in ("prune", "export", "bench:host", "run"):
        assert stages[stage]["status"] == "done", stage
    ranking = load(quick_run / "ranking.json")
    assert stages["run"]["chosen"] == ranking["chosen"]
    bundle = stages["run"]["bundle"]
    assert bundle.endswith(f"-{ranking['chosen']}.tar.gz") and os.path.isfile(bundle)
    assert cli("verify", bundle).exit_code == 0
    # `run` exported only the dense model and the export_top best candidates within --max-drop,
    # and quantized each of them (--quantize auto: two INT8 variants each)
    exported = sorted(p.parent.name for p in quick_run.glob("*/*/export.json")) + \
        (["dense"] if (quick_run / "dense" / "export.json").exists() else [])
    fp32 = [m for m in exported if not CandidateId.parse(m).is_variant]
    # per family (`run` defaults to --mode both): the export_top best of each
    for family in ("unstructured", "structured"):
        made = [m for m in fp32 if m != "dense" and CandidateId.parse(m).family == family]
        assert len(made) == QUICK_DEFAULTS["export_top"], fp32
    assert len(fp32) == 1 + 2 * QUICK_DEFAULTS["export_top"]
    formats = ranking["devices"][0]["formats"]
    assert set(formats) == {f"{family}{kernels}" for family in ("", "structured ")
                            for kernels in ("fp32", "int8-int8", "int8-uint8")}
    assert formats["structured int8-uint8"]["models"] == QUICK_DEFAULTS["export_top"]
    assert sorted(exported) == sorted(fp32 + [str(CandidateId.parse(m).with_variant(s)) for m in fp32
                                              for s in ("int8", "int8u")])


def test_the_run_directory_stays_lean(quick_run):
    """Candidates hold masks and state, not weights; fine-tuned ones also their values; no calibration cache."""
    dense = (quick_run / "dense" / "weights.safetensors").stat().st_size
    assert not (quick_run / "calibration").exists()
    for folder in (quick_run / "candidates").iterdir():
        assert not (folder / "weights.safetensors").exists(), folder.name
        cid = CandidateId.parse(folder.name)
        if cid.is_variant:  # an INT8 variant: its ONNX file and records, no torch weights
            parent = quick_run / "dense" if cid.method == "dense" else folder.parent / str(cid.parent)
            assert not list(folder.glob("*.safetensors")), folder.name
            assert (folder / "model.onnx").stat().st_size < (parent / "model.onnx").stat().st_size / 2
            continue
        finetuned = load(folder / "eval.json")["accuracy_finetuned"] is not None
        if cid.family == "structured":  # a cut: its record and the tensors that differ from the replayed cut
            stored = (folder / "state.safetensors").stat().st_size
            assert (folder / "cut.json").is_file() and not (folder / "masks.safetensors").exists(), folder.name
            assert finetuned or stored < dense / 50, (folder.name, stored, dense)  # re-estimated BN statistics
            continue
        assert (folder / "values.safetensors").exists() == finetuned, folder.name
        stored = sum((folder / f"{part}.safetensors").stat().st_size for part in ("masks", "state"))
        assert stored < dense / 8, (folder.name, stored, dense)  # 1 bit per weight, plus what BN re-estimated


def test_existing_output_is_refused_without_resume_or_force(quick_run):
    before = (quick_run / "run.json").read_bytes()
    result = cli("run", "--quick", "--out", quick_run)
    assert result.exit_code == 2 and "--resume" in result.output and "--force" in result.output
    assert (quick_run / "run.json").read_bytes() == before
    result = cli("run", "--quick", "--out", quick_run, "--resume", "--force")
    assert result.exit_code == 2 and "contradict" in result.output


def test_bad_flags_fail_before_any_work(tmp_path):
    for args, message in ((["--objective", "speed"], "speed"), (["--devices", "nosuch"], "unknown device"),
                          (["--mode", "channels"], "--mode"), (["--macs-reduction", "1.5"], "--macs-reduction"), (["--executor", "dask"], "--executor"),
                          (["--ray-cpus-per-task", "0"], "--ray-cpus-per-task"),
                          (["--max-drop", "-1"], "--max-drop")):
        result = cli("run", "--quick", "--out", tmp_path / "r", *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not (tmp_path / "r").exists()


def test_toml_holds_flags_and_flags_win(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('quick = true\nmax-drop = 2.5\ndevices = ["host", "rpi4"]\nobjective = "size"\n')
    presets = run_presets(str(toml), {})
    assert presets == (RUN_DEFAULTS, QUICK_DEFAULTS)
    config = RunConfig.build(str(toml), presets, objective="memory")
    assert (config.model, config.max_drop, config.devices, config.objective) == ("test_resnet", 2.5, ("host", "rpi4"), "memory")
    plain = RunConfig.build(None, run_presets(None, {}))  # run without --quick: prune's training, less fine-tuning
    assert (plain.img_size, plain.train_epochs) == (RunConfig.img_size, RunConfig.train_epochs)
    assert (plain.finetune_epochs, plain.recal_samples) == (RUN_DEFAULTS["finetune_epochs"], RUN_DEFAULTS["recal_samples"])


@pytest.mark.slow
def test_kill_during_prune_then_resume_matches_an_uninterrupted_run(quick_run, run_copy, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mixprune.cli", "run", "--quick", "--out", str(out)]
    env = dict(os.environ, MIXPRUNE_QUIET="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.glob("candidates/*/eval.json"))) < 4 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("candidates/*/eval.json")))
    assert 0 < finished < len(list(quick_run.glob("candidates/*"))) and load(out / "run.json")["stages"]["prune"]["status"] == "running"
    result = cli("run", "--quick", "--out", out, "--resume")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert load(out / "run.json")["stages"]["prune"]["summary"]["resumed"] >= finished
    # INT8 and fp32 candidates are chosen between on measured latency, which no two runs share:
    # compare the choice on an objective without timings (compact size), on a copy of the reference
    for folder in (out, run_copy):
        assert cli("rank", folder, "--objective", "size").exit_code == 0
    resumed, reference = load(out / "ranking.json"), load(run_copy / "ranking.json")
    assert resumed["chosen"] == reference["chosen"]

    def metrics(ranking):  # everything but timings, which no two runs share
        return {r["cid"]: (r["accuracy"], r["global_sparsity"], r["bytes"], r["eligible"], r["drop_points"])
                for r in ranking["candidates"]}

    assert metrics(resumed) == metrics(reference)
    # the resumed run's bundle holds the same model as the uninterrupted one
    chosen = reference["chosen"]
    assert (out / "candidates" / chosen / "model.onnx").read_bytes() == \
        (quick_run / "candidates" / chosen / "model.onnx").read_bytes()
    assert not list(out.rglob(".*.tmp"))
