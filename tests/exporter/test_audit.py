"""The audit when whole layers are zero and the exporter folds identical constants into one tensor.

Every check opens the ONNX tensor the record names and compares it with the torch weight:
it must hold exactly the zeros the record counts and every nonzero of the weight.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from mixprune.exporter import stage
from mixprune.exporter.audit import audit, onnx_tensors
from mixprune.pruning.roles import prunable_names
from mixprune.exporter.onnx_export import export_onnx


class Tokens(torch.nn.Module):
    """A conv+BN pair (folded, so renamed) and three same-shape token-wise linears (MatMul,
    stored transposed and renamed), then a head (Gemm, keeps its name)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(16, 16, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 16, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.a = torch.nn.Linear(16, 16, bias=False)
        self.b = torch.nn.Linear(16, 16, bias=False)
        self.c = torch.nn.Linear(16, 16, bias=False)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = self.c(self.b(self.a(x.flatten(2).transpose(1, 2))))
        return self.head(x.mean(1))


def tokens(nonzero=(), keep=0.05, seed=0):
    """Tokens with every prunable weight zero except those in ``nonzero`` (a fraction ``keep`` left)."""
    torch.manual_seed(seed)
    model = Tokens().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(-1.5, 1.5)
        for name in prunable_names(model):
            weight = model.get_parameter(name)
            weight[torch.rand_like(weight) >= keep if name in nonzero else torch.ones_like(weight, dtype=bool)] = 0.0
    return model


def params_of(model):
    names = prunable_names(model)
    return {n: p.detach().numpy() for n, p in model.named_parameters() if n in names}


def assert_record_holds(params, proto, result):
    """Each layer's tensor, opened by the recorded name, holds the recorded zeros and every nonzero."""
    tensors = onnx_tensors(proto)
    assert result["unmatched"] == [] and result["sparsity_preserved"]
    for name, weight in params.items():
        entry = result["layers"][name]
        array = tensors[entry["onnx"]]
        array = array.T if entry["layout"] == "transposed" else array
        assert entry["zeros_onnx"] == int((array == 0).sum()) == int((weight == 0).sum()), name
        assert np.all(array[weight != 0] != 0), name
        assert entry["lost"] == 0
        for row, held in zip(weight.reshape(len(weight), -1), array.reshape(len(array), -1)):  # one scale a channel
            ratio = held[row != 0] / row[row != 0]
            assert np.allclose(ratio, ratio[:1], rtol=1e-5), name
    assert result["zeros_onnx"] == sum(e["zeros_onnx"] for e in result["layers"].values())
    assert result["zeros_onnx"] == result["zeros_torch"]
    used = {e["onnx"]: e["zeros_onnx"] for e in result["layers"].values()}
    assert result["zeros_onnx_distinct"] == sum(used.values())
    assert "once per weight" in result["zeros_onnx_counting"]
    users = {}
    for name, entry in result["layers"].items():
        users.setdefault(entry["onnx"], []).append(name)
    assert {t: sorted(names) for t, names in result["shared_onnx"].items()} == {
        t: sorted(names) for t, names in users.items() if len(names) > 1}


# --- on the TorchScript exporter's real output ------------------------------------------------
def export(model):
    # export_onnx is torch.onnx.export(..., dynamo=False, opset_version=17, do_constant_folding=True)
    return export_onnx(model, (1, 16, 2, 2), opset=17, label="tokens")


def test_exporter_folds_all_zero_layers_into_one_tensor():
    """The premise of the other tests: identical all-zero weights end up in one initializer."""
    proto = export(tokens())
    zero_16x16 = [i.name for i in proto.graph.initializer
                  if tuple(i.dims) == (16, 16) and not numpy_helper.to_array(i).any()]
    assert len(zero_16x16) < 3  # a, b, c (all zero, 16x16) share fewer tensors than they are


def test_a_model_whose_layers_are_all_zero():
    model = tokens()
    params, proto = params_of(model), export(model)
    result = audit(params, proto)
    assert_record_holds(params, proto, result)
    assert result["zeros_onnx"] == result["prunable_params"]
    assert result["zeros_onnx_distinct"] < result["zeros_onnx"]  # folded tensors are counted once per weight
    shared = result["shared_onnx"]
    assert shared and sum(len(names) for names in shared.values()) >= 3


@pytest.mark.parametrize("nonzero", ["a.weight", "b.weight", "c.weight", "conv1.weight", "conv2.weight"])
def test_a_nonzero_layer_shaped_like_an_all_zero_one(nonzero):
    model = tokens({nonzero})
    params, proto = params_of(model), export(model)
    assert 0 < np.count_nonzero(params[nonzero]) < 40  # a few nonzeros, the rest of its shape is zero
    result = audit(params, proto)
    assert_record_holds(params, proto, result)
    assert not any(nonzero in names for names in result["shared_onnx"].values())
    assert result["zeros_onnx"] == result["prunable_params"] - np.count_nonzero(params[nonzero])


# --- on hand-built ONNX protos ----------------------------------------------------------------
def proto_of(initializers):
    """A graph that holds ``initializers`` (name -> array); the audit only reads constants."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.asarray(a, np.float32), n)
                               for n, a in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sparse_weight(seed, shape=(6, 8), keep=0.15):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape).astype(np.float32)
    weight[rng.random(shape) >= keep] = 0.0
    weight[:, 0] = rng.uniform(0.5, 1.0, shape[0])  # a nonzero in every channel
    return weight


SCALE = np.linspace(-2.0, 2.0, 6).astype(np.float32)[:, None] + 0.1  # BN folding: one nonzero scale per channel


def test_shared_all_zero_initializer_backs_only_all_zero_weights():
    b = sparse_weight(1)
    params = {"a.weight": np.zeros((6, 8), np.float32), "b.weight": b, "c.weight": np.zeros((6, 8), np.float32)}
    proto = proto_of({"onnx::MatMul_7": np.zeros((8, 6)), "onnx::MatMul_8": (b * SCALE).T})
    result = audit(params, proto)
    assert_record_holds(params, proto, result)
    assert result["layers"]["b.weight"]["onnx"] == "onnx::MatMul_8"
    assert result["shared_onnx"] == {"onnx::MatMul_7": ["a.weight", "c.weight"]}
    b_zeros = int((b == 0).sum())
    assert result["zeros_onnx"] == 2 * 48 + b_zeros and result["zeros_onnx_distinct"] == 48 + b_zeros


def test_a_weight_without_its_own_tensor_is_unmatched_not_matched_to_zeros():
    b = sparse_weight(2)
    result = audit({"a.weight": np.zeros((6, 8), np.float32), "b.weight": b},
                   proto_of({"zeros": np.zeros((6, 8))}))
    assert result["layers"]["a.weight"]["onnx"] == "zeros"
    assert result["unmatched"] == ["b.weight"] and not result["sparsity_preserved"]


def test_a_channel_scaled_to_zero_is_no_match():
    b = sparse_weight(3)
    folded = b * SCALE
    folded[2] = 0.0  # one channel that holds nonzeros in torch is all zero here
    result = audit({"b.weight": b}, proto_of({"onnx::Conv_5": folded}))
    assert result["unmatched"] == ["b.weight"] and not result["sparsity_preserved"]


def test_different_weights_never_share_a_nonzero_tensor():
    b = sparse_weight(4)
    b2 = b.copy()
    row, col = np.argwhere(b[:, 1:] != 0)[0]
    b2[row, col + 1] = 0.0  # b with one nonzero less: it fits b's tensor, but it is not b
    for order in (("b.weight", "b2.weight"), ("b2.weight", "b.weight")):
        params = {n: {"b.weight": b, "b2.weight": b2}[n] for n in order}
        result = audit(params, proto_of({"onnx::MatMul_3": b.T}))
        assert result["layers"]["b.weight"]["onnx"] == "onnx::MatMul_3"
        assert result["unmatched"] == ["b2.weight"] and result["shared_onnx"] == {}


def test_equal_nonzero_weights_may_share_a_tensor():
    b = sparse_weight(5)
    params = {"b.weight": b, "tied.weight": b.copy()}
    proto = proto_of({"onnx::MatMul_3": b.T})
    result = audit(params, proto)
    assert_record_holds(params, proto, result)
    assert result["shared_onnx"] == {"onnx::MatMul_3": ["b.weight", "tied.weight"]}


def test_a_lost_zero_next_to_an_all_zero_tensor_is_reported_as_lost():
    b = sparse_weight(6)
    folded = b * SCALE
    zero = tuple(np.argwhere(b == 0)[0])
    folded[zero] = 0.5  # a zero of torch became nonzero in ONNX
    params = {"a.weight": np.zeros((6, 8), np.float32), "b.weight": b}
    result = audit(params, proto_of({"onnx::Conv_1": np.zeros((6, 8)), "onnx::Conv_2": folded}))
    entry = result["layers"]["b.weight"]
    assert entry["onnx"] == "onnx::Conv_2" and entry["lost"] == 1
    assert result["layers"]["a.weight"]["onnx"] == "onnx::Conv_1"
    assert not result["sparsity_preserved"]


# --- the record in export.json ----------------------------------------------------------------
def test_export_json_says_how_zeros_are_counted(build_run):
    run = build_run("vit", {"base-mag-s100.00": 1.0})  # every prunable weight zero: the exporter folds them
    stage.export_run(run, ["base-mag-s100.00"], stage.ExportOptions(parity_samples=16))
    folder = run / "candidates" / "base-mag-s100.00"
    rec = json.loads((folder / "export.json").read_text())
    proto = onnx.load(str(folder / "model.onnx"))
    tensors = onnx_tensors(proto)
    assert rec["sparsity_preserved"] and rec["unmatched"] == []
    assert rec["zeros_onnx"] == rec["zeros_torch"] == rec["prunable_params"]
    assert rec["zeros_onnx"] == sum(int((tensors[e["onnx"]] == 0).sum()) for e in rec["layers"].values())
    used = {e["onnx"] for e in rec["layers"].values()}
    assert rec["zeros_onnx_distinct"] == sum(int((tensors[n] == 0).sum()) for n in used)
    assert rec["zeros_onnx_distinct"] < rec["zeros_onnx"]
    assert rec["shared_onnx"] and "once per weight" in rec["zeros_onnx_counting"]
    for onnx_name, names in rec["shared_onnx"].items():
        assert all(rec["layers"][n]["onnx"] == onnx_name for n in names)
