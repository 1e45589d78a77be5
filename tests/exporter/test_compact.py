"""The compact container: bit-identical round trip, torch/onnx-free reader, clear failures."""

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mixprune import compact

from tests.helpers import heavy_imports


def _sparse_model(seed=0, sparsity=0.8) -> bytes:
    """x[N,64] @ W[64,256] + b, W mostly zero (with a -0.0 and a NaN-free odd value)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((64, 256)).astype(np.float32)
    weight[rng.random(weight.shape) < sparsity] = 0.0
    weight[0, 0], weight[0, 1] = -0.0, np.float32(1e-38)  # sign of zero and a subnormal must survive
    bias = rng.standard_normal(256).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.arange(4, dtype=np.int64), "unused_int")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_regions_point_at_the_raw_bytes_of_float_initializers():
    data = _sparse_model()
    regions = compact.initializer_regions(data)
    arrays = {init.name: numpy_helper.to_array(init) for init in onnx.load_from_string(data).graph.initializer}
    found = sorted(data[r["offset"]:r["offset"] + r["nbytes"]] for r in regions)
    assert found == sorted(arrays[n].tobytes() for n in ("W", "b"))  # the int64 tensor is not a float region


def test_round_trip_is_bit_identical_and_smaller(tmp_path):
    data = _sparse_model()
    container = compact.pack(data)
    header, _ = compact.read_header(container)
    assert [t["nnz"] for t in header["tensors"]] == [int(np.count_nonzero(
        numpy_helper.to_array(onnx.load_from_string(data).graph.initializer[0]).view(np.uint32)))]
    assert len(container) < 0.5 * len(data)
    source, target = tmp_path / "m.mxc", tmp_path / "m.onnx"
    source.write_bytes(container)
    digest = compact.expand(source, target)
    assert digest == hashlib.sha256(data).hexdigest() == hashlib.sha256(target.read_bytes()).hexdigest()
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    run = lambda model: ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(run(data), run(str(target)))


def test_dense_files_round_trip_too():
    data = _sparse_model(sparsity=0.0)
    container = compact.pack(data)
    assert compact.read_header(container)[0]["tensors"] == []  # nothing sparse enough to cut out
    assert compact.unpack(container) == data


@pytest.mark.parametrize("damage, message", [
    (lambda c: b"NOTMAGIC" + c[8:], "wrong magic"),
    (lambda c: c[:-40], "payload is corrupt"),
    (lambda c: c[:12] + b"x" + c[13:], "header is corrupt"),
])
def test_damaged_containers_are_refused(damage, message):
    with pytest.raises(compact.CompactError, match=message):
        compact.unpack(damage(compact.pack(_sparse_model())))


def test_a_forged_header_fails_the_checksum():
    container = compact.pack(_sparse_model())
    header, start = compact.read_header(container)
    header["sha256"] = hashlib.sha256(b"something else").hexdigest()
    forged = json.dumps(header).encode()
    with pytest.raises(compact.CompactError, match="sha256"):
        compact.unpack(compact.MAGIC + struct.pack("<I", len(forged)) + forged + container[start:])


def test_command_line_expand_and_errors(tmp_path):
    model, container, out = tmp_path / "m.onnx", tmp_path / "m.onnx.mxc", tmp_path / "back.onnx"
    model.write_bytes(_sparse_model())
    run = lambda *args: subprocess.run([sys.executable, "-m", "mixprune.compact", *map(str, args)],
                                       capture_output=True, text=True)
    assert run("pack", model, container).returncode == 0
    done = run("expand", container, out)
    assert done.returncode == 0 and out.read_bytes() == model.read_bytes()
    missing = run("expand", tmp_path / "nope.mxc", out)
    assert missing.returncode == 2 and missing.stderr.strip() == f"Error: {tmp_path / 'nope.mxc'} does not exist"


def test_reader_imports_neither_torch_nor_onnx():
    assert heavy_imports(("torch", "onnx", "onnxruntime", "timm"), imports=("mixprune.compact",)) == []
