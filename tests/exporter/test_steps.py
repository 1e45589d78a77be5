"""The export steps one by one on a small torch model: audit, simplify guard, sparse storage."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from mixprune.errors import ExportError
from mixprune.exporter import simplify, storage
from mixprune.exporter.audit import audit
from mixprune.pruning.roles import prunable_names
from mixprune.exporter.onnx_export import canonicalize_zeros, export_onnx, io_spec


class Net(torch.nn.Module):
    """conv+BN (folded at export), a token-wise linear (MatMul, transposed weight), a head (Gemm)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.mix = torch.nn.Linear(8, 12)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))            # N,8,6,6
        x = self.mix(x.flatten(2).transpose(1, 2))      # N,36,12
        return self.head(x.mean(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(-1.5, 1.5)  # negative scales turn folded zeros into -0.0
        for module in (model.conv, model.mix, model.head):
            module.weight[torch.rand_like(module.weight) < 0.7] = 0.0
    return model


def _params(model):
    names = prunable_names(model)
    return {n: p.detach().numpy() for n, p in model.named_parameters() if n in names}


def _export(model):
    return export_onnx(model, (1, 1, 6, 6), opset=17, label="net")


def _run(proto, x):
    data = proto if isinstance(proto, bytes) else proto.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_prunable_names_are_conv_and_linear_weights(net):
    assert prunable_names(net) == ["conv.weight", "head.weight", "mix.weight"]


def test_audit_maps_folded_and_transposed_weights_and_counts_zeros(net):
    proto = _export(net)
    result = audit(_params(net), proto)
    layers = result["layers"]
    assert result["unmatched"] == [] and result["sparsity_preserved"]
    assert layers["conv.weight"]["scaled"] and layers["conv.weight"]["onnx"] != "conv.weight"  # BN folded in
    assert layers["mix.weight"]["layout"] == "transposed"
    assert layers["head.weight"]["onnx"] == "head.weight"
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, entry in layers.items():
        assert entry["zeros_torch"] == int((net.get_parameter(name) == 0).sum())
        assert entry["zeros_onnx"] == int((initializers[entry["onnx"]] == 0).sum()) >= entry["zeros_torch"]
    assert result["zeros_onnx"] == sum(e["zeros_onnx"] for e in layers.values())


def test_audit_detects_a_lost_zero(net):
    proto = _export(net)
    entry = audit(_params(net), proto)["layers"]["conv.weight"]
    init = next(i for i in proto.graph.initializer if i.name == entry["onnx"])
    array = numpy_helper.to_array(init).copy()
    zero = tuple(np.argwhere(net.conv.weight.detach().numpy() == 0)[0])
    array[zero] = 0.5
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    result = audit(_params(net), proto)
    assert not result["sparsity_preserved"]
    assert result["layers"]["conv.weight"]["lost"] == 1


def test_canonicalize_zeros_removes_negative_zeros_without_changing_outputs(net):
    proto = _export(net)
    x = np.random.default_rng(0).standard_normal((3, 1, 6, 6)).astype(np.float32)
    before = _run(proto, x)
    negative = sum(int((np.signbit(a) & (a == 0)).sum()) for a in map(numpy_helper.to_array, proto.graph.initializer))
    assert negative > 0 and canonicalize_zeros(proto) == negative
    assert all(not (np.signbit(a) & (a == 0)).any() for a in map(numpy_helper.to_array, proto.graph.initializer))
    assert np.array_equal(_run(proto, x), before)


def test_export_records_a_dynamic_batch_and_names(net):
    spec = io_spec(_export(net))
    assert spec["inputs"] == [{"name": "input", "shape": ["batch", 1, 6, 6], "dtype": "float32"}]
    assert spec["outputs"] == [{"name": "logits", "shape": ["batch", 5], "dtype": "float32"}]


def test_export_failure_names_the_operator_and_the_model():
    class Cummax(torch.nn.Module):
        def forward(self, x):
            return torch.cummax(x, 1)[0]

    with pytest.raises(ExportError, match=r"cannot export toy \(c1\) to ONNX opset 17: operator aten::cummax is not supported"):
        export_onnx(Cummax(), (1, 3, 4, 4), opset=17, label="toy (c1)")


def test_simplify_guard_keeps_a_good_simplification(net):
    proto = _export(net)
    params = _params(net)
    kept, simplified, note = simplify.simplify_guarded(proto, lambda p: audit(params, p))
    assert audit(params, kept)["sparsity_preserved"]
    assert kept.ByteSize() <= proto.ByteSize()
    assert simplified == (kept is not proto) and note


@pytest.mark.parametrize("damage, reason", [
    ("lose_zero", "lost zeros in conv.weight"),
    ("grow", "grew the file"),
    ("fail", "onnxsim failed (boom)"),
])
def test_simplify_guard_falls_back(net, monkeypatch, damage, reason):
    import onnxsim

    proto = _export(net)
    params = _params(net)
    conv_init = audit(params, proto)["layers"]["conv.weight"]["onnx"]

    def fake_simplify(model):
        if damage == "fail":
            raise RuntimeError("boom")
        out = onnx.ModelProto()
        out.CopyFrom(model)
        init = next(i for i in out.graph.initializer if i.name == conv_init)
        array = numpy_helper.to_array(init).copy()
        if damage == "lose_zero":
            array[array == 0] = 1e-3
        else:
            out.graph.initializer.append(numpy_helper.from_array(np.zeros(1000, np.float32), "padding"))
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        return out, True

    monkeypatch.setattr(onnxsim, "simplify", fake_simplify)
    kept, simplified, note = simplify.simplify_guarded(proto, lambda p: audit(params, p))
    assert kept is proto and not simplified
    assert reason in note and "kept the unsimplified graph" in note


@pytest.mark.parametrize("numel, dtype", [(128, np.int8), (129, np.int16), (32768, np.int16), (32769, np.int32),
                                          (2**31, np.int32), (2**31 + 1, np.int64)])
def test_smallest_index_type(numel, dtype):
    assert storage.index_dtype_for(numel) is dtype


@pytest.mark.parametrize("index_dtype", [None, np.int32, np.int64])
def test_sparse_storage_loads_in_onnxruntime_with_identical_outputs(net, index_dtype):
    proto = _export(net)
    canonicalize_zeros(proto)
    sparse, info = storage.to_sparse(proto, index_dtype)
    moved = {t.values.name for t in sparse.graph.sparse_initializer}
    assert info["tensors"] == len(moved) >= 2  # the two big pruned weights; the tiny head may stay dense
    assert sum(info["index_dtypes"].values()) == len(moved)
    if index_dtype is not None:
        assert info["index_dtypes"] == {np.dtype(index_dtype).name: len(moved)}
    assert storage.dense_equivalent(proto, sparse)
    assert sparse.ByteSize() < proto.ByteSize()
    x = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(sparse, x), _run(proto, x))
    if index_dtype is np.int64:
        onnx.checker.check_model(sparse)  # the only index type the checker accepts


def test_dense_equivalent_notices_a_changed_value(net):
    proto = _export(net)
    sparse, _ = storage.to_sparse(proto)
    values = sparse.graph.sparse_initializer[0].values
    array = numpy_helper.to_array(values).copy()
    array[0] += 1
    values.CopyFrom(numpy_helper.from_array(array, values.name))
    assert not storage.dense_equivalent(proto, sparse)
