"""`mixprune export` end to end on tiny run directories: records, artifacts, skip logic, errors."""

import gzip
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from mixprune import compact
from mixprune.exporter import stage
from mixprune.runs import RunDir
from mixprune.models.stored import MaskedModel

from tests.helpers import cli

FAMILIES = ["resnet", "mobilenet", "convnext", "swin", "vit"]


def record(folder):
    return json.loads((folder / "export.json").read_text())


def zeros_in_file(onnx_path, layers):
    """Zeros of the ONNX tensors export.json maps the prunable weights to, read from the file itself."""
    proto = onnx.load(str(onnx_path))
    tensors = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return sum(int((tensors[entry["onnx"]] == 0).sum()) for entry in layers.values())


def logits(model, x):
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_with_zeros_kept_and_parity(build_run, family):
    run = build_run(family, {"base-mag-s80.00": 0.8})
    results = stage.export_run(run, ["base-mag-s80.00"], stage.ExportOptions(parity_samples=64)).records
    assert set(results) == {"base-mag-s80.00"} and not (run / "dense" / "export.json").exists()
    rec = record(run / "candidates" / "base-mag-s80.00")
    assert rec["zeros_torch"] > 0.75 * rec["prunable_params"]
    assert rec["sparsity_preserved"] and rec["unmatched"] == []
    assert rec["zeros_onnx"] >= rec["zeros_torch"]
    assert zeros_in_file(run / "candidates" / "base-mag-s80.00" / "model.onnx", rec["layers"]) == rec["zeros_onnx"]
    assert rec["parity"]["max_abs_diff"] <= 1e-4 and rec["parity"]["top1_agreement"] == 1.0
    assert rec["parity"]["samples"] == 64
    assert rec["bytes"]["compact"] < rec["bytes"]["gzip"] < rec["bytes"]["onnx"]
    onnx_bytes = (run / "candidates" / "base-mag-s80.00" / "model.onnx").read_bytes()  # dense storage: the same file
    assert rec["bytes"]["gzip"] == len(gzip.compress(onnx_bytes, compresslevel=6, mtime=0))
    assert rec["bytes"]["sparse"] < rec["bytes"]["onnx"]
    assert rec["verified"]


def test_cli_writes_artifacts_that_match_the_record(build_run, tmp_path):
    run = build_run("resnet", {"base-mag-s80.00": 0.8})
    done = cli("export", run)
    assert done.exit_code == 0, done.output
    assert "base-mag-s80.00" in done.output and "exported" in done.output
    folder = run / "candidates" / "base-mag-s80.00"
    rec = record(folder)
    for key in ("opset", "simplified", "simplify_note", "zeros_torch", "zeros_onnx", "sparsity_preserved"):
        assert key in rec
    assert rec["opset"] == 17 and onnx.load(str(folder / "model.onnx")).opset_import[0].version == 17
    data = (folder / "model.onnx").read_bytes()
    assert rec["bytes"]["onnx"] == len(data) and rec["onnx_sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["bytes"]["compact"] == (folder / "model.onnx.mxc").stat().st_size
    assert rec["inputs"][0]["shape"] == ["batch", 1, 16, 16]
    # the compact container expands to the dense export, bit for bit
    assert compact.expand(folder / "model.onnx.mxc", tmp_path / "back.onnx") == rec["onnx_sha256"]
    # the dense model got its export too, and no temporaries were left behind
    assert record(run / "dense")["zeros_torch"] == 0
    assert not list(run.rglob(".*.tmp"))
    assert json.loads((run / "run.json").read_text())["stages"]["export"]["status"] == "done"


def test_unchanged_models_are_skipped_and_changed_weights_reexported(build_run):
    run = build_run("vit", {"base-mag-s50.00": 0.5, "base-mag-s80.00": 0.8})
    assert cli("export", run).exit_code == 0
    first = {cid: record(run / "candidates" / cid)["exported_at"] for cid in ("base-mag-s50.00", "base-mag-s80.00")}
    again = cli("export", run)
    assert again.exit_code == 0 and again.output.count("skipped") == 3
    folder = RunDir(run).candidate("base-mag-s50.00")
    state = folder.load_state()
    name = RunDir(run).prunable_names()[0]
    state[name] = np.zeros_like(state[name])
    folder.save_pruned(state, pruned=RunDir(run).prunable_names())
    third = cli("export", run)
    assert third.exit_code == 0 and third.output.count("skipped") == 2
    rec = record(run / "candidates" / "base-mag-s50.00")
    assert rec["layers"][name]["zeros_onnx"] == state[name].size
    assert record(run / "candidates" / "base-mag-s80.00")["exported_at"] == first["base-mag-s80.00"]


def test_sparse_storage_option(build_run, tmp_path):
    run = build_run("resnet", {"base-mag-s80.00": 0.8})
    done = cli("export", run, "--candidate", "base-mag-s80.00", "--storage", "sparse", "--no-simplify")
    assert done.exit_code == 0, done.output
    assert not (run / "dense" / "model.onnx").exists()  # only the chosen candidate
    folder = run / "candidates" / "base-mag-s80.00"
    rec = record(folder)
    assert rec["storage"] == "sparse" and not rec["simplified"] and "--no-simplify" in rec["simplify_note"]
    proto = onnx.load(str(folder / "model.onnx"))
    assert len(proto.graph.sparse_initializer) == rec["sparse_storage"]["tensors"] > 0
    assert rec["bytes"]["model_onnx"] == rec["bytes"]["sparse"] == (folder / "model.onnx").stat().st_size
    dense = tmp_path / "dense.onnx"
    assert compact.expand(folder / "model.onnx.mxc", dense) == rec["dense_onnx_sha256"] != rec["onnx_sha256"]
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16)).astype(np.float32)
    assert np.array_equal(logits(folder / "model.onnx", x), logits(dense, x))


# --- bad input: one line, exit code 2, no model.onnx ---------------------------------------
def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_run_directory(tmp_path):
    assert_one_line_error(cli("export", tmp_path / "nope"), "run directory", "does not exist")


def test_run_json_without_a_model_spec(build_run):
    run = build_run("vit", {})
    (run / "run.json").write_text("{}")
    assert_one_line_error(cli("export", run), "run.json lacks a valid model or data spec")


def test_unknown_candidate(build_run):
    run = build_run("vit", {"base-mag-s50.00": 0.5})
    assert_one_line_error(cli("export", run, "--candidate", "zz"), "no finished candidate zz", "available: dense, base-mag-s50.00")


def test_corrupt_weights(build_run):
    run = build_run("vit", {"base-mag-s50.00": 0.5})
    (run / "candidates" / "base-mag-s50.00" / "state.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(cli("export", run, "--candidate", "base-mag-s50.00"), "cannot read", "state.safetensors")
    assert not (run / "candidates" / "base-mag-s50.00" / "model.onnx").exists()


def test_model_that_fails_to_export(build_run, monkeypatch):
    class Cummax(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.cummax(x, 1)[0].mean((1, 2)))

    run = build_run("vit", {"base-mag-s50.00": 0.5})
    monkeypatch.setattr(MaskedModel, "build", lambda self, spec, dense_state: (Cummax(), {}))
    result = cli("export", run)  # the dense model and candidate a
    assert result.exit_code == 2, result.output
    table, error = result.output.strip().splitlines()
    assert table.startswith("dense ") and "exported" in table
    assert error.startswith("Error: 1 model(s) could not be exported") and "aten::cummax" in error
    assert "cannot export vit_tiny_patch16_224 (base-mag-s50.00)" in error
    assert not (run / "candidates" / "base-mag-s50.00" / "model.onnx").exists()
    assert not list(run.rglob(".*.tmp"))
    # the failure is the candidate's, recorded; the stage went on and exported the dense model
    assert (run / "dense" / "model.onnx").is_file() and json.loads((run / "dense" / "export.json").read_text())["verified"]
    stage_record = json.loads((run / "run.json").read_text())["stages"]["export"]
    assert list(stage_record["failures"]) == ["base-mag-s50.00"] and "aten::cummax" in stage_record["failures"]["base-mag-s50.00"]
    assert stage_record["models"] == ["dense"]


def test_onnx_file_that_onnxruntime_refuses(build_run, monkeypatch):
    def unrunnable(model, input_shape, *, opset, label):
        node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="example.custom")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])

    run = build_run("vit", {"base-mag-s50.00": 0.5})
    monkeypatch.setattr(stage, "export_onnx", unrunnable)
    result = cli("export", run, "--candidate", "base-mag-s50.00")
    assert_one_line_error(result, "onnxruntime refuses the ONNX model of vit_tiny_patch16_224 (base-mag-s50.00)", "NoSuchOp")
    assert "Traceback" not in result.output
    assert not (run / "candidates" / "base-mag-s50.00" / "model.onnx").exists()


@pytest.mark.slow
def test_full_resnet18_candidate(build_run):
    run = build_run("resnet18_full", {"base-mag-s80.00": 0.8})
    results = stage.export_run(run, ["base-mag-s80.00"], stage.ExportOptions(parity_samples=64)).records
    rec = results["base-mag-s80.00"]
    assert rec["sparsity_preserved"] and rec["zeros_onnx"] >= rec["zeros_torch"] > 0.79 * rec["prunable_params"]
    assert rec["parity"]["max_abs_diff"] <= 1e-4 and rec["parity"]["top1_agreement"] == 1.0
    assert rec["bytes"]["compact"] < 0.25 * rec["bytes"]["onnx"]
