"""INT8 variants: static QDQ quantization of exported models, zeros kept, accuracy measured, records."""

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
from mixprune.exporter.quantize import ACTIVATIONS, quantize
from mixprune.runs import RunDir

from tests.helpers import cli


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny resnet run, dense + a 90% candidate exported, with both INT8 variants of each."""
    from tests.exporter.conftest import SPECS, make_run

    run = make_run(tmp_path_factory.mktemp("int8") / "run", SPECS["resnet"], {"p90": 0.9})
    results = stage.export_run(run, [], stage.ExportOptions(parity_samples=32, quantize="auto")).records
    return run, results


def _load(path):
    return json.loads(path.read_text())


def test_auto_makes_both_variants_of_every_exported_model(quantized):
    run, results = quantized
    variants = {cid for cid in results if "+" in cid}
    assert variants == {"dense+int8", "dense+int8u", "p90+int8", "p90+int8u"}
    assert set(RunDir(run).candidate_ids()) >= variants
    for cid in variants:
        folder = run / "candidates" / cid
        strategy = _load(folder / "strategy.json")
        parent, suffix = cid.split("+")
        activation = next(name for name, a in ACTIVATIONS.items() if a.suffix == "+" + suffix)
        assert strategy["kind"] == "int8" and strategy["parent"] == parent
        q = strategy["quantization"]
        assert (q["format"], q["activation_type"], q["weight_type"], q["per_channel"]) == ("QDQ", activation, "int8", True)
        assert q["calibration_samples"] > 0 and q["calibration_method"] == "MinMax"
        types = {i.data_type for i in onnx.load(str(folder / "model.onnx")).graph.initializer}
        assert onnx.TensorProto.INT8 in types  # weights
        assert (onnx.TensorProto.UINT8 if activation == "uint8" else onnx.TensorProto.INT8) in types


def test_zeros_of_the_parent_survive_in_the_int8_tensors(quantized):
    run, _ = quantized
    parent_export = _load(run / "candidates" / "p90" / "export.json")
    parent = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(run / "candidates" / "p90" / "model.onnx")).graph.initializer}
    for suffix in ("+int8", "+int8u"):
        folder = run / "candidates" / f"p90{suffix}"
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
    folder = run / "candidates" / "p90+int8u"
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
    run = build_run("resnet", {"a": 0.5})
    result = cli("export", run, "--candidate", "a", "--quantize", "static")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "candidates").iterdir()) == ["a", "a+int8u"]
    assert "a+int8u" in result.output


def test_bad_quantize_value_and_no_calibration_images(build_run):
    run = build_run("resnet", {"a": 0.5})
    result = cli("export", run, "--quantize", "int4")
    assert result.exit_code == 2 and "'int4' is not one of" in result.output
    with pytest.raises(ExportError, match="calibration split is empty"):
        quantize(b"", np.zeros((0, 1, 16, 16), np.float32), "uint8", "m")


def test_a_model_onnxruntime_cannot_quantize_loses_only_that_variant(build_run, monkeypatch):
    from mixprune.exporter import variants

    def refuse(onnx_bytes, images, activation, label):
        if activation == "int8":
            raise ExportError(f"onnxruntime cannot quantize {label} ({activation} activations): op NoSuchOp")
        return quantize(onnx_bytes, images, activation, label)

    monkeypatch.setattr(variants, "quantize", refuse)
    run = build_run("resnet", {"a": 0.5})
    result = cli("export", run, "--candidate", "a", "--quantize", "auto")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "candidates").iterdir()) == ["a", "a+int8u"]  # nothing half-written
    assert RunDir(run).candidate_ids() == ["a", "a+int8u"] and "NoSuchOp" in result.output
    failures = _load(run / "run.json")["stages"]["export"]["variant_failures"]
    assert list(failures) == ["a+int8"] and "NoSuchOp" in failures["a+int8"]


def test_int8_bench_records_carry_no_note_on_unstructured_kernels(quantized):
    from mixprune.benchmarks.bench import _unstructured_note

    run, _ = quantized
    assert _unstructured_note(RunDir(run).candidate("p90"))["note"].startswith("unstructured sparsity")
    assert _unstructured_note(RunDir(run).candidate("p90+int8u")) == {}
