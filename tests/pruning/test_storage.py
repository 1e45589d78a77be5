"""Candidates stored as dense x masks (+ values, + state): bit for bit, and small on disk."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save

from mixprune import masked
from mixprune.models import ModelSpec, build_model, numpy_state
from mixprune.pruning.roles import prunable_names
from mixprune.runs import RunDir

from tests.helpers import load_candidates, prune


def _bytes(state: dict) -> dict:
    return {name: (array.dtype.str, array.shape, array.tobytes()) for name, array in state.items()}


def _dense_and_run(tmp_path, dense: dict) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.dense.save_weights(dense)
    return run


def test_split_and_join_edge_cases(tmp_path):
    rng = np.random.default_rng(0)
    dense = {"w": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
             "all_kept": rng.standard_normal((5, 6)).astype(np.float32),
             "all_pruned": rng.standard_normal((3, 3)).astype(np.float32),
             "bias": rng.standard_normal(8).astype(np.float32),
             "steps": np.array(7, dtype=np.int64)}
    full = dict(dense)
    w = dense["w"].copy()
    w[np.abs(w) < 0.8] = 0.0
    full.update(w=w, all_pruned=np.zeros((3, 3), np.float32), steps=np.array(9, dtype=np.int64))
    pruned = ["w", "all_kept", "all_pruned"]
    run = _dense_and_run(tmp_path, dense)
    folder = run.candidate("mm-magnitude-c")
    folder.save_pruned(full, pruned)
    assert not folder.values_file.exists()  # kept values are the dense ones
    assert set(load_file(str(folder.state_file))) == {"steps"}  # 0-d kept as 0-d, unchanged bias not stored
    assert _bytes(folder.load_state()) == _bytes(full)

    # fine-tuned: new kept values, a kept weight that became exactly 0, one -0.0, a changed bias
    tuned = {k: v.copy() for k, v in full.items()}
    tuned["w"][tuned["w"] != 0] *= 1.5
    kept = np.flatnonzero(tuned["w"])
    tuned["w"].reshape(-1)[kept[0]] = 0.0
    tuned["all_kept"][0, 0] = -0.0
    tuned["bias"] += 1
    digest = folder.save_pruned(tuned, pruned)
    assert folder.values_file.exists() and set(load_file(str(folder.state_file))) == {"steps", "bias"}
    back = folder.load_state()
    assert back["all_kept"][0, 0] == 0 and not np.signbit(back["all_kept"][0, 0])  # -0.0 is a zero: +0.0
    tuned["all_kept"][0, 0] = 0.0
    assert _bytes(back) == _bytes(tuned)
    assert digest == folder.weights_digest() and folder.keep_masks()["w"].sum() == len(kept) - 1


def test_a_half_written_candidate_is_detected(tmp_path):
    rng = np.random.default_rng(1)
    dense = {"w": rng.standard_normal((6, 6)).astype(np.float32)}
    run = _dense_and_run(tmp_path, dense)
    folder = run.candidate("mm-magnitude-c")
    half = {"w": np.where(np.abs(dense["w"]) > 0.5, dense["w"], 0).astype(np.float32)}
    folder.save_pruned(half, ["w"])
    masks = folder.masks_file.read_bytes()
    folder.save_pruned({"w": np.where(np.abs(dense["w"]) > 1.0, dense["w"], 0).astype(np.float32)}, ["w"])
    folder.masks_file.write_bytes(masks)  # killed after masks, before state: they no longer belong together
    with pytest.raises(Exception, match="does not belong with"):
        folder.load_state()


_WRITE_ONE = """
import sys, numpy as np
from mixprune.runs import RunDir
run = RunDir(sys.argv[1])
dense = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) - 5, "b": np.ones(3, np.float32)}
run.dense.save_weights(dense)
tuned = {"w": np.where(dense["w"] > 0, dense["w"] * 2, 0).astype(np.float32), "b": dense["b"] * 3}
print(run.candidate("mm-magnitude-c").save_pruned(tuned, ["w"]))
"""


def test_the_weights_digest_is_the_same_in_every_process(tmp_path):
    """What resume and the export's up-to-date check compare: the same weights, the same digest."""
    digests = [subprocess.run([sys.executable, "-c", _WRITE_ONE, str(tmp_path / str(i))], capture_output=True,
                              text=True, check=True).stdout for i in range(3)]
    assert len(set(digests)) == 1 and len(digests[0].strip()) == 64


def test_an_unexported_resnet18_candidate_costs_at_most_2_mb(tmp_path):
    """The issue's target, on the full resnet18 (11 M weights): 90% pruned, BN statistics re-estimated."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 10, 1, 32))
    dense = numpy_state(model)
    run = _dense_and_run(tmp_path, dense)
    names = prunable_names(model)
    full = {k: v.copy() for k, v in dense.items()}
    for name in names:
        w = full[name]
        w[np.abs(w) < np.quantile(np.abs(w), 0.9)] = 0.0
    for name in full:
        if name.endswith(("running_mean", "running_var")):
            full[name] = full[name] + 0.01
    folder = run.candidate("mm-magnitude-c")
    folder.save_pruned(full, names)
    size = sum(p.stat().st_size for p in folder.path.iterdir())
    assert size <= 2 * 2**20, size
    assert run.dense.weights_file.stat().st_size > 40 * 2**20  # what each candidate cost before


def test_materialized_candidates_equal_the_weights_the_stage_computed(tmp_path, monkeypatch):
    """What the stage holds in memory (what weights.safetensors held, written with safetensors.torch) is
    what masks, values and state give back, byte for byte, fine-tuned or not."""
    from mixprune.models.stored import MaskedModel
    from mixprune.pruning.stage import Pruner

    written = {}
    real_weights, real_evaluate = MaskedModel.weights, Pruner.evaluate

    def capture_finetuned(self, model, dense_state):  # a fine-tuning task's model, before its stored form
        written[self.cid] = save({k: v.clone() for k, v in model.state_dict().items()})
        return real_weights(self, model, dense_state)

    def capture_evaluated(self, plan):  # a candidate task leaves its weights in the model
        result = real_evaluate(self, plan)
        written[plan.cid] = save({k: v.clone() for k, v in self.inputs.model.state_dict().items()})
        return result

    monkeypatch.setattr(MaskedModel, "weights", capture_finetuned)
    monkeypatch.setattr(Pruner, "evaluate", capture_evaluated)
    run = prune(tmp_path / "run", "--model", "test_resnet", "--img-size", "16", "--train-epochs", "1",
                "--signals", "magnitude", "--baselines", "mag", "--finetune-epochs", "1", "--finetune-top", "1")
    candidates = load_candidates(run)
    finetuned = [cid for cid, c in candidates.items() if c["eval"]["accuracy_finetuned"] is not None]
    assert finetuned and len(finetuned) < len(candidates)
    for cid, candidate in candidates.items():
        assert save(candidate["weights"]) == written[cid], cid
    assert all(RunDir(run).candidate(cid).values_file.is_file() for cid in finetuned)
    assert not any((run / "candidates" / cid / "weights.safetensors").exists() for cid in candidates)


def test_split_stores_no_values_for_dense_kept_values_and_refuses_other_tensors():
    dense = {"w": np.ones((2, 3), np.float32)}
    stored = masked.split({"w": np.array([[1, 0, 1], [0, 0, 1]], np.float32)}, dense, ["w"])
    assert stored.values is None
    assert masked.join(dense, stored)["w"].tolist() == [[1, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="differ from the dense"):
        masked.split({"w": dense["w"], "extra": dense["w"]}, dense, ["w"])
