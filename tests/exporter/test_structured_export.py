"""A structured candidate in the run directory: stored as its cut + safetensors weights, rebuilt
for export by replaying the cut, exported smaller, and quantized like any other (stacked INT8)."""

from __future__ import annotations

import json

import onnx
import pytest

from mixprune.errors import CheckpointError
from mixprune.exporter import stage
from mixprune.models import build_model, numpy_state
from mixprune.runs import CutDir, CutWeights, RunDir
from mixprune.models.stored import build_stored

from tests.exporter.conftest import SPECS, add_cut_candidate, make_run

CID = "st-magnitude-balanced"


@pytest.fixture(scope="module")
def structured_run(tmp_path_factory):
    spec = SPECS["resnet"]
    run = RunDir(make_run(tmp_path_factory.mktemp("structured") / "run", spec, {}))
    cut_net = add_cut_candidate(run, spec, CID)
    assert isinstance(run.candidate(CID), CutDir)
    results = stage.export_run(run.root, [CID], stage.ExportOptions(parity_samples=32, quantize="static")).records
    return spec, run, cut_net, results


def test_the_cut_candidate_exports_smaller_and_agrees_with_torch(structured_run):
    spec, run, cut_net, results = structured_run
    record = results[CID]
    assert record["verified"] and record["parity"]["top1_agreement"] == 1.0
    exported = onnx.load(str(run.candidate(CID).onnx_file))
    weights = {i.name: list(i.dims) for i in exported.graph.initializer}
    cut_channels = sorted(p.shape[0] for n, p in cut_net.named_parameters() if p.dim() == 4)
    assert sorted(d[0] for d in weights.values() if len(d) == 4) == cut_channels  # the ONNX graph is the cut one
    dense_params = sum(p.numel() for p in build_model(spec).parameters())
    assert record["bytes"]["onnx"] < 0.45 * dense_params * 4


def test_the_stacked_int8_variant_of_a_cut_candidate(structured_run):
    _, run, _, results = structured_run
    variant = results[f"{CID}+int8u"]
    assert variant["parent"] == CID and variant["bytes"]["onnx"] < 0.75 * results[CID]["bytes"]["onnx"]  # scales weigh on a tiny model
    strategy = json.loads(run.candidate(f"{CID}+int8u").strategy_json.read_text())
    assert strategy["kind"] == "int8" and strategy["parent_kind"] == "structured"
    assert strategy["mode"] == "structured"  # ranking and report put it in the structured family


def test_weights_that_do_not_fit_their_cut_are_one_clear_line(structured_run, tmp_path):
    spec, run, cut_net, _ = structured_run
    folder = run.candidate(CID)
    other = run.candidate("st-magnitude-other")
    state = numpy_state(cut_net)
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:2]
    other.store(CutWeights(folder.read_cut(), state))
    with pytest.raises(CheckpointError, match="against its recorded cut.*does not fit the model.*layer1.0.conv1.weight"):
        build_stored(spec, other)
