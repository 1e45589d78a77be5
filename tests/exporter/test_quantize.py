"""INT8 variants: one per registered recipe (static QDQ, dynamic for attention models), zeros kept,
accuracy measured, records."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from mixprune.data import DataSpec, load_splits
from mixprune.errors import ExportError
from mixprune.exporter import stage
from mixprune.exporter.quantize import RECIPES, has_attention, quantize
from mixprune.runs import RunDir

from tests.helpers import cli


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny resnet run, dense + a 90% candidate exported, with both INT8 variants of each."""
    from tests.exporter.conftest import SPECS, make_run

    run = make_run(tmp_path_factory.mktemp("int8") / "run", SPECS["resnet"], {P90: 0.9})
    results = stage.export_run(run, [], stage.ExportOptions(parity_samples=32, quantize="auto")).records
    return run, results


P90, A = "mm-magnitude-p90", "mm-magnitude-a"  # candidate ids


def _load(path):
    return json.loads(path.read_text())


def test_auto_makes_both_variants_of_every_exported_model(quantized):
    run, results = quantized
    variants = {cid for cid in results if "+" in cid}
    assert variants == {"dense+int8", "dense+int8u", f"{P90}+int8", f"{P90}+int8u"}  # no attention: no +int8d
    assert set(RunDir(run).candidate_ids()) >= variants
    for cid in variants:
        folder = run / "candidates" / cid
        strategy = _load(folder / "strategy.json")
        parent, suffix = cid.split("+")
        recipe = next(r for _, r in RECIPES.items() if r.suffix == "+" + suffix)
        activation = recipe.activation
        assert strategy["kind"] == "int8" and strategy["parent"] == parent
        assert (strategy["format"], strategy["recipe"]) == (f"int8-{activation}", recipe.name)
        assert strategy["style"] == recipe.style.record() and strategy["family"] == "unstructured"
        q = strategy["quantization"]
        assert (q["format"], q["activation_type"], q["weight_type"], q["per_channel"]) == ("QDQ", activation, "int8", True)
        assert q["calibration_samples"] > 0 and q["calibration_method"] == "MinMax"
        types = {i.data_type for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
        assert onnx.TensorProto.INT8 in types  # weights
        assert (onnx.TensorProto.UINT8 if activation == "uint8" else onnx.TensorProto.INT8) in types


def test_zeros_of_the_parent_survive_in_the_int8_tensors(quantized):
    run, _ = quantized
    parent_export = _load(run / "candidates" / P90 / "export.json")
    parent = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(run / "candidates" / P90 / "model.onnx")).graph.initializer}
    for suffix in ("+int8", "+int8u"):
        folder = run / "candidates" / f"{P90}{suffix}"
        record = _load(folder / "export.json")
        int8 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
        checked = 0
        for name, layer in parent_export["layers"].items():
            entry = record["layers"][name]
            weights = int8[entry["int8"]]
            assert weights.dtype == np.int8, name
            zero = parent[layer["onnx"]] == 0
            assert not np.any(weights[zero]), name  # every zero of the fp32 tensor is a zero of the int8 one
            checked += int(zero.sum())
        assert checked >= 0.85 * record["prunable_params"]
        assert record["sparsity_preserved"] and record["lost"] == 0 and record["zeros_int8"] >= checked
        assert record["bytes"]["compact"] < record["bytes"]["onnx"]


def test_variant_accuracy_is_measured_with_onnxruntime_on_both_splits(quantized):
    run, _ = quantized
    splits = load_splits(DataSpec.from_dict(_load(run / "run.json")["data"]))
    folder = run / "candidates" / f"{P90}+int8u"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for dataset, key in ((splits.val, "accuracy"), (splits.tune, "tune_accuracy")):
        images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
        labels = np.array([dataset[i][1] for i in range(len(dataset))])
        predicted = session.run(None, {"input": images})[0].argmax(axis=1)
        assert _load(folder / "eval.json")[key] == pytest.approx(float(np.mean(predicted == labels)))
    record = _load(folder / "eval.json")
    assert 0.5 <= record["agreement_with_parent"] <= 1.0 and record["accuracy_finetuned"] is None


def test_unchanged_variants_are_reused(quantized):
    run, _ = quantized
    again = stage.export_run(run, [], stage.ExportOptions(parity_samples=32, quantize="auto")).records
    assert all(again[cid]["skipped"] for cid in again)


def test_static_makes_the_uint8_variant_only(build_run):
    run = build_run("resnet", {A: 0.5})
    result = cli("export", run, "--candidate", A, "--quantize", "static")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "candidates").iterdir()) == [A, f"{A}+int8u"]
    assert f"{A}+int8u" in result.output


def test_bad_quantize_value_and_no_calibration_images(build_run):
    run = build_run("resnet", {A: 0.5})
    result = cli("export", run, "--quantize", "int4")
    assert result.exit_code == 2 and "'int4' is not one of" in result.output
    with pytest.raises(ExportError, match="calibration split is empty"):
        quantize(b"", np.zeros((0, 1, 16, 16), np.float32), RECIPES.get("int8u"), "m")


def test_a_model_onnxruntime_cannot_quantize_loses_only_that_variant(build_run, monkeypatch):
    from mixprune.exporter import variants

    def refuse(onnx_bytes, images, recipe, label):
        if recipe.name == "int8":
            raise ExportError(f"onnxruntime cannot quantize {label} ({recipe.format}): op NoSuchOp")
        return quantize(onnx_bytes, images, recipe, label)

    monkeypatch.setattr(variants, "quantize", refuse)
    run = build_run("resnet", {A: 0.5})
    result = cli("export", run, "--candidate", A, "--quantize", "auto")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "candidates").iterdir()) == [A, f"{A}+int8u"]  # nothing half-written
    assert RunDir(run).candidate_ids() == [A, f"{A}+int8u"] and "NoSuchOp" in result.output
    failures = _load(run / "run.json")["stages"]["export"]["variant_failures"]
    assert list(failures) == [f"{A}+int8"] and "NoSuchOp" in failures[f"{A}+int8"]


def test_int8_bench_records_carry_no_note_on_unstructured_kernels(quantized):
    from mixprune.benchmarks.bench import _unstructured_note

    run, _ = quantized
    assert _unstructured_note(RunDir(run).candidate(P90))["note"].startswith("unstructured sparsity")
    assert _unstructured_note(RunDir(run).candidate(f"{P90}+int8u")) == {}


@pytest.fixture(scope="module")
def vit_quantized(tmp_path_factory):
    """A tiny ViT run, dense + a 90% candidate exported, with every INT8 variant --quantize auto makes."""
    from tests.exporter.conftest import SPECS, make_run

    run = make_run(tmp_path_factory.mktemp("int8-vit") / "run", SPECS["vit"], {P90: 0.9})
    results = stage.export_run(run, [], stage.ExportOptions(parity_samples=32, quantize="auto")).records
    return run, results


def test_an_attention_model_also_gets_the_dynamic_variant(vit_quantized):
    run, results = vit_quantized
    assert {cid for cid in results if "+" in cid} == {f"{m}+{s}" for m in ("dense", P90) for s in ("int8", "int8u", "int8d")}
    folder = run / "candidates" / f"{P90}+int8d"
    strategy, record, evaluation = (_load(folder / f"{name}.json") for name in ("strategy", "export", "eval"))
    assert (strategy["kind"], strategy["format"], strategy["method"], strategy["parent"]) == \
        ("int8", "int8-dynamic", "baseline", P90)
    assert strategy["quantization"]["dynamic"] and strategy["quantization"]["calibration_samples"] == 0
    assert strategy["style"] == RECIPES.get("int8d").style.record()
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops
    # dynamic quantization stores int8 weights too: every zero of the parent is a zero there
    assert all(layer["dtype"] == "int8" for layer in record["layers"].values())
    assert record["sparsity_preserved"] and record["lost"] == 0 and record["verified"]
    assert record["zeros_int8"] >= 0.85 * record["prunable_params"]
    # measured with onnxruntime like every variant
    splits = load_splits(DataSpec.from_dict(_load(run / "run.json")["data"]))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.stack([splits.val[i][0].numpy() for i in range(len(splits.val))])
    labels = np.array([splits.val[i][1] for i in range(len(splits.val))])
    assert evaluation["accuracy"] == pytest.approx(float(np.mean(session.run(None, {"input": images})[0].argmax(1) == labels)))
    assert 0.5 <= evaluation["agreement_with_parent"] <= 1.0


def test_which_models_have_attention_is_read_off_the_graph(quantized, vit_quantized):
    for (run, _), expected in ((quantized, False), (vit_quantized, True)):
        assert has_attention(onnx.load(str(run / "dense" / "model.onnx"))) is expected
