"""Models, checkpoints, data and bad input: one clear line, exit code 2, nothing written."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mixprune.data import DataSpec, load_splits
from mixprune.errors import CheckpointError, DataError
from mixprune.models import ModelSpec, build_model, load_weights

from tests.helpers import cli

TINY = ModelSpec(name="test_resnet", num_classes=10, in_chans=1, img_size=16)


def assert_refused(result, *phrases):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error:"), result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


def test_models_list_and_close_names():
    result = cli("models", "list", "resnet1*")
    assert result.exit_code == 0 and "resnet18" in result.output.split()
    result = cli("prune", "--model", "resnt18", "--out", "never")
    assert_refused(result, "unknown model 'resnt18'", "resnet18")


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_splits(DataSpec(img_size=16)), load_splits(DataSpec(img_size=16))
    assert a.val.indices == b.val.indices and a.calibration.indices == b.calibration.indices
    assert not set(a.train.indices) & set(a.val.indices)
    assert not set(a.tune.indices) & set(a.train.indices)
    assert set(a.calibration.indices) <= set(a.train.indices)
    assert abs(len(a.calibration) - 0.1 * len(a.train)) <= 1
    labels = [int(a.val.dataset.tensors[1][i]) for i in a.val.indices]
    assert set(np.bincount(labels)) <= set(range(33, 40))  # every digit about equally present
    image, _ = a.train[0]
    assert tuple(image.shape) == (1, 16, 16)


def test_checkpoints_in_both_formats_load_and_mismatches_are_named(tmp_path):
    torch.manual_seed(1)
    source = build_model(TINY)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    for path in ("w.safetensors", "w.pt"):
        target = build_model(TINY)
        load_weights(target, tmp_path / path)
        assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    other = build_model(ModelSpec(name="test_resnet", num_classes=5, in_chans=1, img_size=16))
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*fc\.weight"):
        load_weights(other, tmp_path / "w.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_weights(other, tmp_path / "bad.pt")
    out = tmp_path / "run"
    assert_refused(cli("prune", "--model", "resnet18", "--checkpoint", tmp_path / "w.safetensors", "--out", out),
                   "does not fit the model")
    assert not out.exists()


def test_pretrained_loads_a_local_file_through_timms_overlay(tmp_path):
    torch.manual_seed(2)
    source = build_model(ModelSpec(name="test_resnet", num_classes=1000, in_chans=3, img_size=16))
    save_file(source.state_dict(), str(tmp_path / "pretrained.safetensors"))
    # different classes and channels: timm drops the head and adapts the first conv
    model = build_model(TINY, pretrained=True, pretrained_file=str(tmp_path / "pretrained.safetensors"))
    shared = [k for k, v in source.state_dict().items()
              if k in model.state_dict() and model.state_dict()[k].shape == v.shape and "num_batches" not in k]
    assert len(shared) > 10 and all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in shared)
    conv = next(k for k in shared if model.state_dict()[k].dim() == 4)
    assert not torch.equal(model.state_dict()[conv], build_model(TINY).state_dict()[conv])  # really loaded


def _write_image_folder(root, classes=("cat", "dog"), per_class=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for index, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(per_class if part == "train" else 4):
                pixels = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8) + index * 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def test_image_folder_dataset(tmp_path):
    _write_image_folder(tmp_path / "data")
    splits = load_splits(DataSpec(source=str(tmp_path / "data"), img_size=16, calib_fraction=0.25))
    assert splits.class_names == ["cat", "dog"] and splits.num_classes == 2 and splits.in_chans == 3
    assert len(splits.val) == 8 and len(splits.train) + len(splits.tune) == 24 and len(splits.calibration) >= 2
    image, label = splits.val[0]
    assert tuple(image.shape) == (3, 16, 16) and label in (0, 1)
    result = cli("prune", "--model", "test_resnet", "--data", tmp_path / "data", "--img-size", "16",
                    "--train-epochs", "2", "--finetune-epochs", "0", "--signals", "magnitude",
                    "--baselines", "mag", "--calib-fraction", "0.25", "--train-lr", "5e-4", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "run" / "candidates").glob("mm-magnitude-*/eval.json"))) == 10
    training = json.loads((tmp_path / "run" / "dense" / "eval.json").read_text())["training"]
    assert training["recipe"] == {"lr": 5e-4, "batch_size": 64, "warmup": 0.0, "schedule": "constant"}
    assert training["epochs_run"] == 2


@pytest.mark.parametrize("args, phrase", [
    (["--data", "no/such/folder"], "does not exist"),
    (["--sparsity", "1.2"], "--sparsity must be in [0, 0.98]"),
    (["--sparsity", "0.99"], "--sparsity must be in [0, 0.98]"),  # the per-layer cap, refused before training
    (["--targets", "0.7,1.0"], "must be in [0, 1)"),
    (["--targets", "0.7,abc"], "comma-separated numbers"),
    (["--calib-fraction", "0.0001"], "is empty"),
    (["--signals", "magnitude,vibes"], "--signals values must be one of magnitude, gradient, product"),
    (["--train-lr", "0"], "--train-lr must be > 0"),
])
def test_bad_input_leaves_nothing_behind(tmp_path, args, phrase):
    out = tmp_path / "run"
    result = cli("prune", "--model", "test_resnet", "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    assert not out.exists()


def test_malformed_rule_table_via_cli(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('name = "mine"\nextends = "generic"\n[[rules]]\nname = "x"\nmax = "lots"\n')
    out = tmp_path / "run"
    assert_refused(cli("prune", "--model", "test_resnet", "--rules", rules, "--out", out), "rules[0].max")
    assert not out.exists()


def test_missing_out_and_existing_run(tmp_path):
    assert_refused(cli("prune", "--model", "test_resnet"), "--out is required")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_refused(cli("prune", "--model", "test_resnet", "--img-size", "16", "--out", tmp_path / "run"),
                   "not a mixprune run directory")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_empty_calibration_split_is_a_data_error():
    with pytest.raises(DataError, match="empty"):
        load_splits(DataSpec(img_size=16, calib_fraction=0.0001))
