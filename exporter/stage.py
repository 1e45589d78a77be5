"""The export stage: every model of a run directory to a verified, compactly stored ONNX file.

For each model directory (``dense/`` and every finished candidate) it writes the ONNX
file, its compact container (see ``mixprune.compact``) and the export record last, which
marks the export finished (paths: ``mixprune.runs``). A model whose weights and export
options are unchanged since its last export is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib

import onnx
import torch

from mixprune import compact
from mixprune.config import QUANTIZE
from mixprune.data import DataSpec, Splits, load_splits
from mixprune.errors import ExportError, RunDirError
from mixprune.models import ModelSpec, build_stored
from mixprune.progress import progress_bar, say
from mixprune.runs import ModelDir, RunDir, now_iso, package_versions

from . import parity, storage
from .audit import audit
from .onnx_export import canonicalize_zeros, export_onnx, io_spec
from .simplify import simplify_guarded
from .variants import quantize_models

FORMAT_VERSION = 2  # 2: the audit matches no weight to a tensor that does not hold it (records of 1 may)
TOLERANCE = 1e-4  # max |logit difference| accepted between torch and onnxruntime
STEPS = ("export", "simplify", "audit", "parity", "storage", "write")
RUNTIME_NOTE = ("onnxruntime has no sparse kernels and densifies sparse initializers at load: "
                "unstructured sparsity makes the file smaller, not inference faster or leaner")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    opset: int = 17
    storage: str = "dense"  # what model.onnx holds: "dense" initializers or "sparse" ones
    simplify: bool = True
    parity_samples: int = 256
    force: bool = False  # re-export even when weights and options are unchanged
    quantize: str = "none"  # INT8 variants: a key of config.QUANTIZE

    def key(self) -> dict:
        """What an existing export must match to be reused."""
        return {"format": FORMAT_VERSION, "opset": self.opset, "storage": self.storage, "simplify": self.simplify}


def export_run(run_dir, candidates=(), options: ExportOptions = ExportOptions()) -> dict[str, dict]:
    """Export the dense model and finished candidates of a run (or only ``candidates``).

    Returns {model id: export record}; each record has ``skipped`` True when reused.
    """
    run = RunDir(run_dir)
    record = run.require()
    try:
        spec, data = ModelSpec.from_dict(record["model"]), DataSpec.from_dict(record["data"])
    except (KeyError, TypeError) as exc:
        raise RunDirError(f"{run.run_json} lacks a valid model or data spec ({exc}); re-run `mixprune prune`") from exc
    available = run.torch_models()
    chosen = list(dict.fromkeys(candidates)) or list(available)
    missing = [cid for cid in chosen if cid not in available]
    if missing:
        listed = ", ".join(available) or "none"
        raise RunDirError(f"no finished candidate {', '.join(missing)} in {run.root} (available: {listed})")
    if not chosen:
        raise RunDirError(f"{run.root} has no dense model or finished candidate to export; run `mixprune prune` first")
    todo = [cid for cid in chosen if options.force or not is_current(available[cid], options)]
    results = {cid: dict(available[cid].read_export(), skipped=True) for cid in chosen if cid not in todo}
    activations = QUANTIZE[options.quantize]
    splits = load_splits(data) if todo or activations else None
    if todo:
        samples = held_out_samples(splits, options.parity_samples)
        prunable = run.prunable_names()
        with progress_bar() as progress:
            task = progress.add_task("export", total=len(todo) * len(STEPS))
            for cid in todo:
                say(f"exporting {cid} ({spec.name})")
                results[cid] = dict(export_model(
                    available[cid], spec, samples, options, prunable, label=f"{spec.name} ({cid})",
                    on_step=lambda name, cid=cid: progress.update(task, advance=1, description=f"export {cid}: {name}"),
                ), skipped=False)
    variants, failures = quantize_models(run, chosen, activations, splits, force=options.force)
    if todo or variants or failures:
        run.set_stage("export", "done", models=sorted({**results, **variants}), variant_failures=failures)
    return {**{cid: results[cid] for cid in chosen}, **variants}


def is_current(model_dir: ModelDir, options: ExportOptions) -> bool:
    """Whether ``model_dir`` holds a finished export of its current weights with these options."""
    if not (model_dir.is_exported() and model_dir.compact_file.is_file()):
        return False
    with contextlib.suppress(RunDirError):
        previous = model_dir.read_export()
        return previous.get("options") == options.key() and previous.get("weights_sha256") == model_dir.weights_digest()
    return False


def held_out_samples(splits: Splits, count: int) -> torch.Tensor:
    """The first ``count`` images of the run's held-out split."""
    val = splits.val
    count = min(count, len(val))
    if count == 0:
        raise RunDirError("the held-out split is empty; parity cannot be checked")
    return torch.stack([val[i][0] for i in range(count)])


def export_model(model_dir: ModelDir, spec: ModelSpec, samples: torch.Tensor, options: ExportOptions,
                 prunable: list[str], label: str, on_step=lambda name: None) -> dict:
    """Export one model; returns (and writes) its export record. ``prunable``: the weights whose zeros count."""
    model_dir.drop_export()
    model = build_stored(spec, model_dir, label)
    wanted = set(prunable)
    params = {name: p.detach().numpy() for name, p in model.named_parameters() if name in wanted}

    on_step("export")
    exported = export_onnx(model, spec.input_shape, opset=options.opset, label=label)
    parity.session(exported.SerializeToString(), label)

    on_step("simplify")
    if options.simplify:
        final, simplified, note = simplify_guarded(exported, lambda proto: audit(params, proto))
    else:
        final, simplified, note = exported, False, "disabled (--no-simplify)"
    negative_zeros = canonicalize_zeros(final)
    dense_bytes = final.SerializeToString()

    on_step("audit")
    zeros = audit(params, final)

    on_step("parity")
    dense_session = parity.session(dense_bytes, label)
    ort_out = parity.ort_logits(dense_session, samples)
    result = parity.compare(parity.torch_logits(model, samples), ort_out)

    on_step("storage")
    sparse_proto, sparse_info = storage.to_sparse(final)
    sparse_bytes = sparse_proto.SerializeToString()
    sparse_out = parity.ort_logits(parity.session(sparse_bytes, f"{label}, sparse storage"), samples)
    sparse_identical = bool(storage.dense_equivalent(final, sparse_proto) and (sparse_out == ort_out).all())
    if not sparse_identical:
        raise ExportError(f"the sparse storage of {label} does not reproduce the dense model; use --storage dense")
    container = compact.pack(dense_bytes)
    if compact.unpack(container) != dense_bytes:
        raise ExportError(f"the compact container of {label} does not expand to the dense ONNX file")

    on_step("write")
    onnx_bytes = sparse_bytes if options.storage == "sparse" else dense_bytes
    record = {
        "model": spec.name,
        "weights_sha256": model_dir.weights_digest(),
        "options": options.key(),
        "opset": options.opset,
        "storage": options.storage,
        "files": {"onnx": model_dir.onnx_file.name, "compact": model_dir.compact_file.name},
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "dense_onnx_sha256": hashlib.sha256(dense_bytes).hexdigest(),
        **io_spec(final),
        "simplified": simplified,
        "simplify_note": note,
        "negative_zeros_canonicalized": negative_zeros,
        "zeros_torch": zeros["zeros_torch"],
        "zeros_onnx": zeros["zeros_onnx"],
        "zeros_onnx_distinct": zeros["zeros_onnx_distinct"],
        "zeros_onnx_counting": zeros["zeros_onnx_counting"],
        "shared_onnx": zeros["shared_onnx"],
        "prunable_params": zeros["prunable_params"],
        "sparsity": zeros["zeros_torch"] / max(zeros["prunable_params"], 1),
        "sparsity_preserved": zeros["sparsity_preserved"],
        "unmatched": zeros["unmatched"],
        "parity": {**result, "tolerance": TOLERANCE, "sparse_identical": sparse_identical},
        "verified": bool(zeros["sparsity_preserved"] and result["max_abs_diff"] <= TOLERANCE
                         and result["top1_agreement"] == 1.0),
        "bytes": {
            "onnx": len(dense_bytes),
            # level 6 (gzip's default, and the agent's model_gzip_bytes): level 9 took 8x as
            # long on resnet18 (8.7 s of a 20 s export) for a 1.2% smaller file
            "gzip": len(gzip.compress(dense_bytes, compresslevel=6, mtime=0)),
            "sparse": len(sparse_bytes),
            "compact": len(container),
            "model_onnx": len(onnx_bytes),
        },
        "sparse_storage": {**sparse_info, "onnx_checker_accepts": _checker_accepts(sparse_proto)},
        "runtime_note": RUNTIME_NOTE,
        "versions": package_versions(),
        "layers": zeros["layers"],
        "exported_at": now_iso(),
    }
    model_dir.write_export(record, onnx_bytes, container)
    if not record["verified"]:
        say(f"[yellow]warning: {label} is not verified (sparsity preserved: {record['sparsity_preserved']}, "
            f"max |diff| {result['max_abs_diff']:.2e}, top-1 agreement {result['top1_agreement']:.3f})[/yellow]")
    return record


def _checker_accepts(proto: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(proto)
        return True
    except onnx.checker.ValidationError:
        return False
