"""Parity: the same held-out images through torch and onnxruntime, logits compared."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from mixprune.errors import ExportError

from .onnx_export import INPUT_NAME

BATCH_SIZE = 64


def session(onnx_bytes: bytes, label: str) -> ort.InferenceSession:
    """An onnxruntime CPU session, or ExportError with onnxruntime's own message."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; warnings are not the user's business here
    # the CPUs this process may use: all locally, the task's share on a Ray worker (executors pin torch)
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types
        message = " ".join(str(exc).split())
        raise ExportError(f"onnxruntime refuses the ONNX model of {label}: {message}") from exc


@torch.no_grad()
def torch_logits(model, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.cat([model(batch) for batch in images.split(BATCH_SIZE)]).numpy()


def ort_logits(sess: ort.InferenceSession, images: torch.Tensor) -> np.ndarray:
    """Logits in batches of BATCH_SIZE (the last one smaller, which exercises the dynamic batch)."""
    return np.concatenate([sess.run(None, {INPUT_NAME: batch.numpy()})[0] for batch in images.split(BATCH_SIZE)])


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max |difference| of the logits and the share of samples with the same top-1 class."""
    return {
        "max_abs_diff": float(np.abs(reference.astype(np.float64) - candidate).max()),
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
        "samples": int(reference.shape[0]),
    }
