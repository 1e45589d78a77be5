"""The export stage: every model of a run directory to a verified, compactly stored ONNX file.

For each model directory (``dense/`` and every finished candidate) an export task (on the
run's executor) rebuilds the model from its stored weights and returns the ONNX file, its
compact container (see ``mixprune.compact``) and the export record; the driver writes them,
the record last, which marks the export finished (paths: ``mixprune.runs``). A model whose
weights and export options are unchanged since its last export is skipped.
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
from mixprune.executors import Executor, TaskFailure, given_or_local, run_tasks
from mixprune.models import ModelSpec
from mixprune.progress import say
from mixprune.runs import COMPACT_FILE, EXPORT_STAGE, ONNX_FILE, ModelDir, RunDir, TorchModelDir, now_iso, package_versions
from mixprune.models.stored import StoredModel, stored_model_of

from . import parity, storage
from .audit import audit
from .onnx_export import canonicalize_zeros, export_onnx, io_spec
from .simplify import simplify_guarded
from .variants import quantize_models

FORMAT_VERSION = 2  # 2: the audit matches no weight to a tensor that does not hold it (records of 1 may)
TOLERANCE = 1e-4  # max |logit difference| accepted between torch and onnxruntime
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


@dataclasses.dataclass(frozen=True)
class ExportWork:
    """What every export task shares: put into the executor's object store once per stage."""
    spec: ModelSpec
    dense_state: dict  # numpy arrays: every candidate is rebuilt over them
    samples: torch.Tensor  # held-out images for parity
    options: ExportOptions
    prunable: list[str]  # the weights whose zeros count


@dataclasses.dataclass(frozen=True)
class Exported:
    """What an export task returns; the driver writes it (export.json gets the folder's weights digest)."""
    record: dict
    onnx_bytes: bytes
    container: bytes


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What `export_run` did: run.json ``stages.export`` holds the same (``models`` as its ids)."""
    records: dict[str, dict]  # model id -> export record, exported or reused (``skipped`` True when reused)
    failures: dict[str, str]  # model id -> why it could not be exported
    variant_failures: dict[str, str]  # INT8 variant id -> why it was not made


def export_run(run_dir, candidates=(), options: ExportOptions = ExportOptions(),
               executor: Executor | None = None) -> ExportSummary:
    """Export the dense model and finished candidates of a run (or only ``candidates``), each an
    ``export_task`` on ``executor`` (default: this process), then their INT8 variants. A model that
    cannot be exported is left out and named with why; the others are exported all the same.
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
    with given_or_local(executor) as executor:
        written, failures = _export_all(run, spec, {cid: available[cid] for cid in todo}, splits, options, executor) \
            if todo else ({}, {})
        results.update({cid: dict(record, skipped=False) for cid, record in written.items()})
        exported = [cid for cid in chosen if cid in results]
        variants, variant_failures = quantize_models(run, exported, activations, splits, executor, force=options.force)
    if todo or variants or variant_failures:
        run.set_stage(EXPORT_STAGE, "done", models=sorted({**results, **variants}), failures=failures,
                      variant_failures=variant_failures)
    return ExportSummary({**{cid: results[cid] for cid in exported}, **variants}, failures, variant_failures)


def _export_all(run: RunDir, spec: ModelSpec, todo: dict[str, TorchModelDir], splits: Splits,
                options: ExportOptions, executor: Executor) -> tuple[dict[str, dict], dict[str, str]]:
    """Export ``todo`` on ``executor``, writing each model's files as its task returns: the records
    written and {id: why} of the failures."""
    work = ExportWork(spec=spec, dense_state=run.dense_state(), samples=held_out_samples(splits, options.parity_samples),
                      options=options, prunable=run.prunable_names())
    digests, models = {}, []
    for cid, folder in todo.items():
        folder.drop_export()  # old artifacts are never paired with new weights
        digests[cid] = folder.weights_digest()
        models.append(stored_model_of(folder))
    say(f"exporting {len(models)} model(s) of {spec.name} to ONNX, {executor.describe()}")

    written = {}

    def store(model: StoredModel, exported: Exported) -> None:
        record = written[model.cid] = {**exported.record, "weights_sha256": digests[model.cid]}
        todo[model.cid].write_export(record, exported.onnx_bytes, exported.container)
        _warn_unverified(exported.record, f"{spec.name} ({model.cid})")

    failures = run_tasks(executor, export_task, work, models, title="export", name=lambda m: m.cid, store=store)
    return written, failures


def export_task(work: ExportWork, model: StoredModel) -> Exported | TaskFailure:
    """Export one model (an executor runs this here or on a Ray worker); it writes nothing. A model
    that cannot be exported (an ExportError) is a TaskFailure."""
    label = f"{work.spec.name} ({model.cid})"
    try:
        return export_model(model.build(work.spec, work.dense_state)[0].eval(), work, label)
    except ExportError as exc:
        return TaskFailure(model.cid, str(exc))


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


def export_model(model: torch.nn.Module, work: ExportWork, label: str) -> Exported:
    """Export, simplify, audit and check one torch model; its files and export record, in memory."""
    options, samples = work.options, work.samples
    wanted = set(work.prunable)
    params = {name: p.detach().numpy() for name, p in model.named_parameters() if name in wanted}

    exported = export_onnx(model, work.spec.input_shape, opset=options.opset, label=label)
    parity.session(exported.SerializeToString(), label)

    if options.simplify:
        final, simplified, note = simplify_guarded(exported, lambda proto: audit(params, proto))
    else:
        final, simplified, note = exported, False, "disabled (--no-simplify)"
    negative_zeros = canonicalize_zeros(final)
    dense_bytes = final.SerializeToString()

    zeros = audit(params, final)

    dense_session = parity.session(dense_bytes, label)
    ort_out = parity.ort_logits(dense_session, samples)
    result = parity.compare(parity.torch_logits(model, samples), ort_out)

    sparse_proto, sparse_info = storage.to_sparse(final)
    sparse_bytes = sparse_proto.SerializeToString()
    sparse_out = parity.ort_logits(parity.session(sparse_bytes, f"{label}, sparse storage"), samples)
    sparse_identical = bool(storage.dense_equivalent(final, sparse_proto) and (sparse_out == ort_out).all())
    if not sparse_identical:
        raise ExportError(f"the sparse storage of {label} does not reproduce the dense model; use --storage dense")
    container = compact.pack(dense_bytes)
    if compact.unpack(container) != dense_bytes:
        raise ExportError(f"the compact container of {label} does not expand to the dense ONNX file")

    onnx_bytes = sparse_bytes if options.storage == "sparse" else dense_bytes
    record = {
        "model": work.spec.name,
        "options": options.key(),
        "opset": options.opset,
        "storage": options.storage,
        "files": {"onnx": ONNX_FILE, "compact": COMPACT_FILE},
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
    return Exported(record, onnx_bytes, container)


def _warn_unverified(record: dict, label: str) -> None:
    if not record["verified"]:
        parity_result = record["parity"]
        say(f"[yellow]warning: {label} is not verified (sparsity preserved: {record['sparsity_preserved']}, "
            f"max |diff| {parity_result['max_abs_diff']:.2e}, top-1 agreement {parity_result['top1_agreement']:.3f})[/yellow]")


def _checker_accepts(proto: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(proto)
        return True
    except onnx.checker.ValidationError:
        return False
