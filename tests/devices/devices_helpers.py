"""Helpers for the device / benchmark tests: small third-party-style ONNX models built with
onnx.helper, profile files, and what the sshd fixture needs."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mixprune.devices.fields import MB

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, what: str):
    """Skip locally when a system part is missing; in CI (.ci/run installs it) fail instead."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{what} is missing in CI; .ci/run should have installed it")
        pytest.skip(f"{what} is not available here (CI installs it)")


def save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, channels: int = 8, batch="batch", extra_weight_mb: float = 0) -> Path:
    """x[batch,3,16,16] -> Conv -> Relu -> y. With ``extra_weight_mb``, a big weight vector is
    summed into the output, so the file and the process's memory grow by that much."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "W")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    out = "y"
    if extra_weight_mb:
        big = rng.standard_normal(int(extra_weight_mb * MB / 4)).astype(np.float32)
        inits.append(numpy_helper.from_array(big, "big"))
        nodes += [helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0), helper.make_node("Add", ["y", "s"], ["z"])]
        out = "z"
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, channels, 16, 16])], inits)
    return save(graph, path)


VOCAB, DIM = 10, 4


def embedding_table() -> np.ndarray:
    return np.arange(VOCAB * DIM, dtype=np.float32).reshape(VOCAB, DIM)


def multi_input_model(path: Path) -> Path:
    """Two inputs, one of them int64 token ids, dynamic batch and sequence:
    y = table[ids] + x, with ids[batch, seq] (int64) and x[batch, seq, 4] (float32)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"]), helper.make_node("Add", ["emb", "x"], ["y"])],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", DIM])],
        [numpy_helper.from_array(embedding_table(), "table")],
    )
    return save(graph, path)


def unsupported_op_model(path: Path) -> Path:
    """Valid ONNX that onnxruntime refuses: an operator no runtime implements."""
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"], domain="example.unknown")], "bad",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.unknown", 1)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def write_profile(path: Path, runner: str = 'kind = "local"', **sections) -> Path:
    """A complete, valid profile; ``sections`` override whole sections as TOML text."""
    text = {
        "top": 'name = "testbox"\narch = "x86_64"\ncores = 1\n',
        "onnxruntime": "intra_op_threads = 1\nallow_spinning = false\n",
        "budget": "memory_mb = 0\nlatency_ms = 0\n",
        "benchmark": "warmup = 1\nruns = 5\n",
        "runner": runner,
    }
    text.update(sections)
    body = text.pop("top") + "".join(f"\n[{name}]\n{content}\n" for name, content in text.items())
    path.write_text(body)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_runner_section(sshd: dict, **overrides) -> str:
    fields = {"kind": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": sshd["user"], "key": str(sshd["key"]),
              "known_hosts": str(sshd["known_hosts"]), "python": sshd["python"], "connect_timeout_s": 5}
    fields.update(overrides)
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
