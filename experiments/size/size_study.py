"""Size study: how small can a pruned resnet18 be stored without losing a bit?

Trains resnet18 on the built-in digits data, prunes it by per-layer magnitude to 50/80/90%
sparsity (BatchNorm statistics re-estimated, no fine-tuning), exports every variant with `mixprune export` (dense storage) and measures the
lossless ways of storing it:

  dense ONNX, gzip -9, xz -9e, sparse_initializer ONNX with int32 / int64 indices (each
  also gzipped and xz'd), and mixprune's compact container (`model.onnx.mxc`: 1-bit mask
  + byte-planed nonzero values + xz, expanded bit-identically by `mixprune.compact`).

Every sparse variant is loaded by onnxruntime and must give outputs identical to the dense
file; the container must expand to the dense file's sha256. Results go to results.json.

    python experiments/size/size_study.py [--epochs 4] [--out experiments/size/results.json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mixprune import compact
from mixprune.data import DataSpec, load_splits
from mixprune.exporter import storage
from mixprune.exporter.stage import ExportOptions, export_run
from mixprune.models import ModelSpec, build_model, numpy_state
from mixprune.pruning.roles import prunable_names
from mixprune.runs import ModelDir, RunDir, atomic_write_json, package_versions
from mixprune.training import evaluate, recalibrate_batchnorm, train

SPARSITIES = (0.5, 0.8, 0.9)
TARGET = 0.20  # smallest lossless artifact of the 80% model, as a fraction of the dense ONNX


def prune_per_layer(model, ratio: float) -> dict:
    """State dict with the ``ratio`` smallest |w| of every conv/linear weight set to zero."""
    names = set(prunable_names(model))
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone()
        if name in names:
            k = int(ratio * tensor.numel())
            threshold = tensor.abs().flatten().kthvalue(k).values
            tensor[tensor.abs() <= threshold] = 0.0
        state[name] = tensor
    return state


def make_run(root: Path, spec: ModelSpec, data: DataSpec, dense_state: dict, pruned: dict) -> None:
    """A run directory in the pruning stage's layout, so the real export stage handles it."""
    run = RunDir(root)
    run.save({"model": spec.to_dict(), "data": data.to_dict(), "seed": 0, "config": {"study": "size"}, "stages": {}})
    names = prunable_names(build_model(spec))
    run.write_ranges({"layers": {name: {} for name in names}})
    run.dense.save_weights(numpy_state(dense_state))
    for cid, (ratio, state, accuracy) in pruned.items():
        folder = run.candidate(cid)
        folder.save_pruned(numpy_state(state), pruned=names)
        folder.write_strategy({"cid": cid, "kind": "baseline", "signal": "mag", "strategy": "uniform",
                               "layers": {name: ratio for name in names}, "global_sparsity": ratio})
        folder.write_eval({"accuracy": accuracy, "accuracy_raw": accuracy, "accuracy_finetuned": None,
                           "samples": None})


def xz(data: bytes) -> int:
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def measure(folder: ModelDir, x: np.ndarray) -> dict:
    dense = folder.onnx_file.read_bytes()
    record = folder.read_export()
    reference = outputs(dense, x)
    sizes = {"dense_onnx": len(dense), "gzip": gz(dense), "xz": xz(dense)}
    checks = {}
    proto = onnx.load_from_string(dense)
    for label, dtype in (("int32", np.int32), ("int64", np.int64)):
        sparse = storage.to_sparse(proto, dtype)[0].SerializeToString()
        sizes[f"sparse_{label}"] = len(sparse)
        sizes[f"sparse_{label}_gzip"] = gz(sparse)
        sizes[f"sparse_{label}_xz"] = xz(sparse)
        checks[f"sparse_{label}_identical_outputs"] = bool(np.array_equal(outputs(sparse, x), reference))
    start = time.perf_counter()
    container = folder.compact_file.read_bytes()
    expanded = compact.unpack(container)
    checks["compact_expand_seconds"] = round(time.perf_counter() - start, 2)
    checks["compact_bit_identical"] = hashlib.sha256(expanded).hexdigest() == hashlib.sha256(dense).hexdigest()
    sizes["compact"] = len(container)
    best = min(sizes, key=sizes.get)
    return {
        "bytes": sizes,
        "ratio": {k: round(v / len(dense), 4) for k, v in sizes.items()},
        "smallest": best,
        "checks": checks,
        "export": {"zeros_torch": record["zeros_torch"], "zeros_onnx": record["zeros_onnx"],
                   "sparsity": round(record["sparsity"], 4), "sparsity_preserved": record["sparsity_preserved"],
                   "parity": record["parity"], "simplify_note": record["simplify_note"],
                   "compact_matches_record": record["bytes"]["compact"] == len(container)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    data = DataSpec()
    splits = load_splits(data)
    spec = ModelSpec("resnet18", num_classes=splits.num_classes, in_chans=splits.in_chans, img_size=data.img_size)
    model = build_model(spec)
    train(model, splits.train, epochs=args.epochs, lr=1e-3, tune_set=splits.tune, description="train resnet18")
    dense_accuracy = evaluate(model, splits.val)
    pruned = {}
    for ratio in SPARSITIES:
        copy = build_model(spec)
        copy.load_state_dict(prune_per_layer(model, ratio))
        recalibrate_batchnorm(copy, splits.train)  # statistics only: the zeros stay
        pruned[f"mag{round(ratio * 100)}"] = (ratio, copy.state_dict(), evaluate(copy, splits.val))

    x = torch.stack([splits.val[i][0] for i in range(32)]).numpy()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mixprune-size-") as tmp:
        root = Path(tmp) / "run"
        make_run(root, spec, data, model.state_dict(), pruned)
        start = time.perf_counter()
        export_run(root, list(pruned), ExportOptions())
        export_seconds = time.perf_counter() - start
        for cid, (ratio, _, accuracy) in pruned.items():
            results[cid] = {"sparsity_target": ratio, "accuracy": accuracy,
                            **measure(RunDir(root).candidate(cid), x)}
    best80 = min(results["mag80"]["ratio"].values())
    summary = {
        "model": spec.to_dict(), "data": data.to_dict(), "train_epochs": args.epochs,
        "dense_accuracy": dense_accuracy, "export_seconds_all": round(export_seconds, 1),
        "target": {"smallest_80_ratio_max": TARGET, "smallest_80_ratio": best80, "met": best80 <= TARGET},
        "candidates": results, "versions": package_versions(),
    }
    atomic_write_json(args.out, summary)
    columns = list(results["mag80"]["ratio"])
    print("sparsity  " + "  ".join(f"{c:>16}" for c in columns))
    for cid, rec in results.items():
        print(f"{cid:<9} " + "  ".join(f"{rec['ratio'][c]:>16.4f}" for c in columns))
    print(f"80% model: smallest lossless artifact {best80:.4f}x of the dense ONNX (target <= {TARGET})")


if __name__ == "__main__":
    main()
