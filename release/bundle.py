"""Release bundles: build one from a run directory's records, and verify one anywhere.

A bundle is a deterministic ``.tar.gz`` (sorted entries, mtime 0, owner 0/0 with empty
names, mode 0644, gzip header without name or time) holding:

- ``model.onnx``: the candidate's exported file, in the storage chosen at export;
- ``MODEL_CARD.md``: a short human-readable card;
- ``manifest.json``: sha256 of every other file, model, strategy with per-layer sparsity,
  accuracy, bench record per device, package versions, input spec with preprocessing and
  class labels.

The same inputs give byte-identical bundles. ``verify`` needs only the standard library,
numpy and onnxruntime: it checks every tar member *before* extracting anything (regular
files with plain relative names only: no absolute paths, ``..``, links, devices or
duplicates), writes their bytes into a temporary folder itself (no tarfile extraction, so
no dependence on the extraction filters of newer Python patch releases), compares the file
set with the manifest, re-hashes every file and runs the model once.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from mixprune.errors import BundleError, RunDirError
from mixprune.accuracy import REPORT_SPLIT, SELECTION_SPLIT, accuracy_of
from mixprune.candidates import Axes, describe
from .ranking import close_ids
from mixprune.runs import DENSE, ONNX_FILE, ModelRecords, RunDir, atomic_write_bytes

FORMAT = "mixprune-bundle"
FORMAT_VERSION = 1
MANIFEST, CARD = "manifest.json", "MODEL_CARD.md"
MODEL = ONNX_FILE  # the bundle holds the model under its run-directory name
MANIFEST_KEYS = ("format", "files", "model", "strategy", "accuracy", "bench", "versions", "inputs")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- building -------------------------------------------------------------------------
def resolve_candidate(run: RunDir, candidate: str) -> tuple[str, dict | None]:
    """The candidate id to release ('best' = ranking.json's choice) and the ranking, if any."""
    ranking = run.read_ranking()
    if candidate == "best":
        if ranking is None:
            raise RunDirError(f"{run.root} has no {run.ranking_json.name}; run `mixprune rank {run.root}` first "
                              f"(or give `mixprune release {run.root} --candidate CID`)")
        if ranking["chosen"] is None:
            raise RunDirError(f"{run.ranking_json} chose no candidate ({ranking['chosen_why']}); "
                              f"give `mixprune release {run.root} --candidate CID` to release one anyway")
        candidate = ranking["chosen"]
    if candidate not in run.candidate_ids():
        raise RunDirError(f"no candidate '{candidate}' in {run.root}{close_ids(candidate, run.candidate_ids())}")
    return candidate, ranking


def build_manifest(info: dict, cid: str, records: ModelRecords, dense: dict, ranking: dict | None) -> dict:
    """Everything but ``files`` (the hashes are added once the files exist).

    ``info``: run.json; ``records``: the candidate's, with its export; ``dense``: the dense eval record.
    """
    strategy, evaluation, export, bench = records.strategy, records.eval, records.export, records.bench
    dataset = info.get("dataset", {})
    accuracy, source = accuracy_of(evaluation, REPORT_SPLIT)
    ranked = next((r for r in (ranking or {}).get("candidates", []) if r["cid"] == cid), None)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": info["model"]["name"], "candidate": cid, "spec": info["model"],
                  "opset": export["opset"], "storage": export["storage"], "bytes": export["bytes"],
                  "parity": export["parity"], "sparsity_preserved": export["sparsity_preserved"],
                  "verified": export["verified"], "zeros_onnx": export["zeros_onnx"],
                  "prunable_params": export["prunable_params"]},
        "strategy": {**Axes.of(strategy).record(),
                     **{k: strategy.get(k) for k in ("signal", "strategy", "global_sparsity", "macs_reduction",
                                                     "params_reduction", "layers", "baselines", "rule_table",
                                                     "parent", "parent_kind", "quantization")}},
        "accuracy": {"top1": accuracy, "split": REPORT_SPLIT, "source": source, "dense": dense["accuracy"],
                     "drop_points": round((dense["accuracy"] - accuracy) * 100, 4),
                     "raw": evaluation.get("accuracy_raw"), "finetuned": evaluation.get("accuracy_finetuned"),
                     "samples": evaluation.get("samples"), "data": info.get("data"),
                     "selection_split": SELECTION_SPLIT, "tune_top1": accuracy_of(evaluation, SELECTION_SPLIT)[0],
                     "tune_dense": dense["tune_accuracy"], "tune_samples": evaluation.get("tune_samples")},
        "bench": bench,
        "ranking": None if ranking is None else {
            "chosen": ranking["chosen"], "is_chosen": ranking["chosen"] == cid, "objective": ranking["objective"],
            "max_drop": ranking["max_drop"], "eligible": ranked and ranked["eligible"],
            "reason": ranked and ranked["reason"], "why": ranking["chosen_why"], "speed_note": ranking["speed_note"]},
        "versions": {**info.get("versions", {}), **export.get("versions", {})},
        "inputs": [{**spec, "layout": "NCHW", "preprocessing": {
            "mean": dataset.get("mean"), "std": dataset.get("std"), "img_size": info["model"]["img_size"],
            "in_chans": info["model"]["in_chans"],
            "how": "pixel values scaled to [0, 1], then (x - mean) / std per channel"}}
            for spec in export["inputs"]],
        "outputs": export.get("outputs"),
        "class_labels": dataset.get("class_names"),
        "runtime_note": export.get("runtime_note"),
    }


def _versus_dense(bench: dict) -> str:
    """x dense's speed from the interleaved timing (median paired ratio, quartiles); '-' without it."""
    paired = bench.get("interleaved")
    if not paired or bench.get("emulated") or paired.get("reference") != DENSE:
        return "-"
    ratio = paired["ratio_to_reference"]
    return f"{1 / ratio['median']:.2f}x ({1 / ratio['q3']:.2f}-{1 / ratio['q1']:.2f})"


def model_card(manifest: dict) -> str:
    m, acc, strat = manifest["model"], manifest["accuracy"], manifest["strategy"]
    int8 = Axes.of(strat).is_int8
    lines = [
        f"# {m['name']} / {m['candidate']}",
        "",
        describe(strat, m),
        "",
        f"- Top-1 accuracy: {acc['top1'] * 100:.2f}% ({'INT8, measured with onnxruntime' if int8 else acc['source']}), "
        f"dense model {acc['dense'] * 100:.2f}% "
        f"(drop {acc['drop_points']:.2f} points) on {acc['samples']} held-out images of {acc['data']['source']}; "
        f"chosen on {acc['tune_samples']} other images (the tune split, {acc['tune_top1'] * 100:.2f}% vs dense "
        f"{acc['tune_dense'] * 100:.2f}%), so the held-out figure is not biased by the choice.",
        f"- `model.onnx`: {m['bytes']['model_onnx']} bytes, {m['storage']} storage, opset {m['opset']}; "
        + (f"top-1 agreement with its fp32 parent in onnxruntime {m['parity']['top1_agreement']:.3f} (largest logit "
           f"difference {m['parity']['max_abs_diff']:.1e}: INT8 rounding)." if int8 else
           f"onnxruntime matches torch within {m['parity']['max_abs_diff']:.1e} (top-1 agreement "
           f"{m['parity']['top1_agreement']:.3f})."),
        "- Input: " + "; ".join(f"`{i['name']}` {i['dtype']} {i['shape']} ({i['layout']}), "
                                f"{i['preprocessing']['how']}, mean {i['preprocessing']['mean']}, "
                                f"std {i['preprocessing']['std']}" for i in manifest["inputs"]),
        f"- Classes: {', '.join(map(str, manifest['class_labels'] or []))}",
        "",
        "| device | p50 ms (alone) | p90 ms | speed vs dense (paired) | peak RSS MB | timings |",
        "|---|---|---|---|---|---|",
    ]
    for device, rec in manifest["bench"].items():
        lat = rec["latency_ms"]
        lines.append(f"| {device} | {lat['p50']:.3f} | {lat['p90']:.3f} | {_versus_dense(rec)} | "
                     f"{rec['peak_rss_mb']:.1f} | {'EMULATED (not real speed)' if rec['emulated'] else 'measured'} |")
    if manifest.get("runtime_note"):
        lines += ["", f"Note: {manifest['runtime_note']}."]
    lines += ["", "`manifest.json` holds the sha256 of every other file in this bundle (not of itself) and the full "
              "records. Check the bundle with `mixprune verify BUNDLE.tar.gz` (needs only onnxruntime and numpy); "
              "compare the bundle's own sha256 with the one published at release to detect a replaced manifest.", ""]
    return "\n".join(lines)


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    """A reproducible .tar.gz of ``files``: sorted, fixed metadata, gzip header without name or time."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_bundle(run_dir, candidate: str = "best", out: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Write the bundle of ``candidate``; returns {path, sha256, manifest}."""
    run = RunDir(run_dir)
    info = run.require()
    cid, ranking = resolve_candidate(run, candidate)
    folder = run.candidate(cid)
    records = folder.records()
    export = records.export
    if export is None:
        raise RunDirError(f"{folder.export_json} does not exist; run `mixprune export {run.root} --candidate {cid}` first")
    onnx_path = folder.onnx_file
    if not onnx_path.is_file():
        raise RunDirError(f"{onnx_path} does not exist; run `mixprune export {run.root} --candidate {cid}`")
    model_bytes = onnx_path.read_bytes()
    if sha256_bytes(model_bytes) != export["onnx_sha256"]:
        raise RunDirError(f"{onnx_path} does not match its {folder.export_json.name} (changed since export); "
                          f"re-run `mixprune export {run.root} --candidate {cid} --force`")
    if not records.bench:
        raise RunDirError(f"{cid} has no bench record; run `mixprune bench {run.root} --device host` first")
    path = Path(out) if out else run.bundle_path(info["model"]["name"], cid)
    if path.exists() and not force:
        raise RunDirError(f"{path} already exists; pass --force to overwrite it or choose another --out")
    if not path.name.endswith((".tar.gz", ".tgz")):
        raise RunDirError(f"--out {path} must end in .tar.gz")
    manifest = build_manifest(info, cid, records, run.dense.read_eval(), ranking)
    card = model_card(manifest).encode()
    manifest["files"] = {MODEL: sha256_bytes(model_bytes), CARD: sha256_bytes(card)}
    files = {MODEL: model_bytes, CARD: card,
             MANIFEST: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()}
    data = _tar_bytes(files)
    atomic_write_bytes(path, data)
    return {"path": path, "sha256": sha256_bytes(data), "candidate": cid, "manifest": manifest}


# --- verifying (standard library, numpy and onnxruntime only) -------------------------
def _check_member(member: tarfile.TarInfo, seen: set) -> str:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"refused: absolute path '{name}' in the bundle")
    if any(part == ".." for part in path.parts) or "\\" in name:
        raise BundleError(f"refused: path traversal '{name}' in the bundle")
    if member.issym() or member.islnk():
        raise BundleError(f"refused: link '{name}' in the bundle")
    if not member.isfile():
        raise BundleError(f"refused: '{name}' is not a regular file (directories, devices and fifos are not allowed)")
    if str(path) != name or name in ("", "."):
        raise BundleError(f"refused: non-canonical path '{name}' in the bundle")
    if name in seen:
        raise BundleError(f"refused: '{name}' appears twice in the bundle")
    seen.add(name)
    return name


def _dummy_input(spec: dict):
    import numpy as np

    dtypes = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64, "int32": np.int32}
    if spec["dtype"] not in dtypes:
        raise BundleError(f"input {spec['name']} has unsupported dtype {spec['dtype']}")
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
    return np.random.default_rng(0).standard_normal(shape).astype(dtypes[spec["dtype"]])


def verify(bundle: str | os.PathLike) -> dict:
    """Check a bundle; returns a summary, raises BundleError on anything wrong."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"bundle {bundle} does not exist")
    try:
        with tarfile.open(bundle, mode="r:gz") as tar, tempfile.TemporaryDirectory(prefix="mixprune-verify-") as tmp:
            seen: set[str] = set()
            members = tar.getmembers()
            for member in members:
                _check_member(member, seen)
            # every name is now a checked relative path of a regular file: write the bytes ourselves
            # rather than trust tarfile's extraction filters (filter="data" needs Python 3.10.12 / 3.11.4)
            for member in members:
                target = Path(tmp, member.name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            return _verify_extracted(bundle, Path(tmp), sorted(seen))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise BundleError(f"{bundle} is not a readable .tar.gz bundle ({exc})") from exc


def _verify_extracted(bundle: Path, folder: Path, names: list[str]) -> dict:
    if MANIFEST not in names:
        raise BundleError(f"{bundle} has no {MANIFEST}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST} in {bundle} is not valid JSON ({exc})") from exc
    missing_keys = [k for k in MANIFEST_KEYS if k not in manifest] if isinstance(manifest, dict) else list(MANIFEST_KEYS)
    if missing_keys or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{MANIFEST} in {bundle} is not a {FORMAT} manifest (missing {', '.join(missing_keys) or 'format'})")
    listed, present = set(manifest["files"]), set(names) - {MANIFEST}
    if listed - present:
        raise BundleError(f"{bundle} is missing {', '.join(sorted(listed - present))} listed in its manifest")
    if present - listed:
        raise BundleError(f"{bundle} holds {', '.join(sorted(present - listed))} not listed in its manifest")
    for name, expected in sorted(manifest["files"].items()):
        if sha256_bytes((folder / name).read_bytes()) != expected:
            raise BundleError(f"{name} in {bundle} was modified: its sha256 differs from the manifest")
    if MODEL not in listed:
        raise BundleError(f"{bundle} has no {MODEL}")
    return {"bundle": str(bundle), "files": sorted(listed), "sha256": sha256_bytes(bundle.read_bytes()),
            **_run_once(folder / MODEL, manifest)}


def _run_once(model: Path, manifest: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feeds = {spec["name"]: _dummy_input(spec) for spec in manifest["inputs"]}
        outputs = session.run(None, feeds)
    except BundleError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        detail = " ".join(str(exc).split())[:300]
        raise BundleError(f"{MODEL} does not run in onnxruntime {ort.__version__}: {detail}") from exc
    logits = outputs[0]
    labels = manifest.get("class_labels") or []
    if not np.all(np.isfinite(logits)):
        raise BundleError(f"{MODEL} produced non-finite outputs")
    if labels and logits.shape[-1] != len(labels):
        raise BundleError(f"{MODEL} outputs {logits.shape[-1]} classes but the manifest lists {len(labels)} labels")
    return {"onnxruntime": ort.__version__, "output_shape": list(logits.shape),
            "top1": str(labels[int(logits.reshape(-1, logits.shape[-1])[0].argmax())]) if labels else None}
