"""`mixprune release` and `mixprune verify`: reproducible bundles, and refusals of unsafe or altered ones."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.helpers import cli, heavy_imports, load


def release(run, *args):
    result = cli("release", run, *args)
    assert result.exit_code == 0, result.output
    return result


def members(bundle) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def repack(path, files: dict[str, bytes], extra=()):
    """Write ``files`` (and raw TarInfo ``extra`` entries) as a .tar.gz at ``path``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture(scope="module")
def bundle(quick_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "a.tar.gz"
    release(quick_run, "--out", out)
    return out


def test_two_releases_are_byte_identical_and_hold_the_manifest_keys(quick_run, bundle, tmp_path):
    second = tmp_path / "b.tar.gz"
    release(quick_run, "--candidate", load(quick_run / "ranking.json")["chosen"], "--out", second)
    assert bundle.read_bytes() == second.read_bytes()
    # the bundle `run` wrote for the chosen candidate is the same bytes too
    assert bundle.read_bytes() == next((quick_run / "release").glob("*.tar.gz")).read_bytes()
    files = members(bundle)
    assert sorted(files) == ["MODEL_CARD.md", "manifest.json", "model.onnx"]
    manifest = json.loads(files["manifest.json"])
    for key in ("files", "model", "strategy", "accuracy", "bench", "versions", "inputs", "class_labels"):
        assert manifest[key], key
    assert manifest["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()
                                 if name != "manifest.json"}
    cid = manifest["model"]["candidate"]
    strategy = load(quick_run / "candidates" / cid / "strategy.json")
    assert manifest["strategy"]["layers"] == strategy["layers"]
    # the card and manifest report the held-out accuracy and say the choice was made on the tune split
    record, accuracy = load(quick_run / "candidates" / cid / "eval.json"), manifest["accuracy"]
    finetuned = record["accuracy_finetuned"] is not None
    assert accuracy["top1"] == record["accuracy_finetuned" if finetuned else "accuracy"]
    assert accuracy["tune_top1"] == record["tune_accuracy_finetuned" if finetuned else "tune_accuracy"]
    assert accuracy["split"] == "held-out" and accuracy["selection_split"] == "tune"
    card = files["MODEL_CARD.md"].decode()
    assert f"{accuracy['samples']} held-out images" in card and f"{accuracy['tune_samples']} other images" in card
    assert files["model.onnx"] == (quick_run / "candidates" / cid / "model.onnx").read_bytes()
    assert set(manifest["bench"]) == {"host"}
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["inputs"][0]["preprocessing"]["mean"] and len(manifest["class_labels"]) == 10
    with tarfile.open(bundle, "r:gz") as tar:
        assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" for m in tar.getmembers())


def test_verify_accepts_the_bundle(bundle):
    result = cli("verify", bundle)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK ") and "2 files match the manifest" in result.output


def _tampered(files):
    data = bytearray(files["model.onnx"])
    data[-10] ^= 0xFF
    return {**files, "model.onnx": bytes(data)}


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("case, change, extra, message", [
    ("tampered", _tampered, (), "model.onnx in"),
    ("missing", lambda f: {k: v for k, v in f.items() if k != "MODEL_CARD.md"}, (), "is missing MODEL_CARD.md"),
    ("extra", lambda f: {**f, "notes.txt": b"hi"}, (), "notes.txt not listed"),
    ("traversal", lambda f: f, [(tarfile.TarInfo("../escaped.txt"), b"x")], "path traversal"),
    ("absolute", lambda f: f, [(tarfile.TarInfo("/tmp/mixprune-absolute.txt"), b"x")], "absolute path"),
    ("symlink", lambda f: f, [(_link("link", "/etc/passwd", tarfile.SYMTYPE), None)], "link"),
    ("hardlink", lambda f: f, [(_link("hard", "model.onnx", tarfile.LNKTYPE), None)], "link"),
    ("duplicate", lambda f: f, [(tarfile.TarInfo("MODEL_CARD.md"), b"")], "appears twice"),
])
def test_verify_refuses(bundle, tmp_path, case, change, extra, message):
    for info, data in extra:
        info.size = len(data) if data is not None else 0
    outside = [Path(tempfile.gettempdir()) / "escaped.txt", Path("/tmp/mixprune-absolute.txt")]
    assert not any(p.exists() for p in outside)
    bad = repack(tmp_path / f"{case}.tar.gz", change(members(bundle)), extra)
    result = cli("verify", bad)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert not any(p.exists() for p in outside)


def test_verify_never_uses_tarfile_extraction(bundle, tmp_path, monkeypatch):
    """setup.cfg promises Python >= 3.10, whose early patch releases lack extractall's `filter`:
    verify must accept and refuse bundles without tarfile's extraction at all."""
    def refuse(*args, **kwargs):
        raise AssertionError("tarfile extraction used")

    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    accepted = cli("verify", bundle)
    assert accepted.exit_code == 0, accepted.output
    nested = repack(tmp_path / "nested.tar.gz", {**members(bundle), "docs/notes.txt": b"x"})
    refused = cli("verify", nested)
    assert refused.exit_code == 2 and "docs/notes.txt not listed" in refused.output, refused.output
    bad = repack(tmp_path / "escape.tar.gz", members(bundle), [(tarfile.TarInfo("a/../../escaped.txt"), b"")])
    refused = cli("verify", bad)
    assert refused.exit_code == 2 and "path traversal" in refused.output, refused.output


def test_verify_refuses_garbage_and_absent_files(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    for path, message in ((junk, "not a readable"), (tmp_path / "none.tar.gz", "does not exist")):
        result = cli("verify", path)
        assert result.exit_code == 2 and message in result.output, result.output


def test_release_refuses_bad_input_without_writing(quick_run, bundle, tmp_path):
    before = bundle.read_bytes()
    result = cli("release", quick_run, "--out", bundle)
    assert result.exit_code == 2 and "--force" in result.output
    assert bundle.read_bytes() == before
    cid = load(quick_run / "ranking.json")["chosen"]
    result = cli("release", quick_run, "--candidate", cid + "-typo", "--out", tmp_path / "x.tar.gz")
    assert result.exit_code == 2 and "did you mean" in result.output and cid in result.output
    not_exported = next(r["cid"] for r in load(quick_run / "ranking.json")["candidates"]
                        if not (quick_run / "candidates" / r["cid"] / "export.json").exists())
    result = cli("release", quick_run, "--candidate", not_exported, "--out", tmp_path / "y.tar.gz")
    assert result.exit_code == 2 and "mixprune export" in result.output
    assert not list(tmp_path.glob("*.tar.gz")) and not list(tmp_path.glob(".*.tmp"))


def test_release_best_needs_a_ranking(run_copy, tmp_path):
    (run_copy / "ranking.json").unlink()
    result = cli("release", run_copy, "--out", tmp_path / "z.tar.gz")
    assert result.exit_code == 2 and "mixprune rank" in result.output


def test_verify_imports_only_numpy_and_onnxruntime(bundle):
    assert heavy_imports(("torch", "timm", "onnx", "matplotlib", "sklearn"), command=["verify", bundle]) == []


def _bundle_of(run, cid, out):
    result = cli("release", run, "--candidate", cid, "--out", out)
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as tar:
        return tar.extractfile("MODEL_CARD.md").read().decode(), json.loads(tar.extractfile("manifest.json").read())


def _released(run, method, family, fmt) -> str:
    """The first exported and benched candidate of ``run`` with these axes (read from strategy.json)."""
    for folder in sorted((run / "candidates").iterdir()):
        strategy = load(folder / "strategy.json")
        if ((strategy["method"], strategy["family"], strategy["format"]) == (method, family, fmt)
                and (folder / "export.json").is_file() and list((folder / "bench").glob("*.json"))):
            return folder.name
    raise AssertionError(f"the quick run has no exported {method} {family} {fmt} model")


@pytest.mark.parametrize("method, family, fmt", [
    ("mixmatch", "unstructured", "fp32"), ("mixmatch", "unstructured", "int8-uint8"),
    ("mixmatch", "structured", "fp32"), ("mixmatch", "structured", "int8-uint8"),
    ("baseline", "structured", "int8-int8"), ("dense", "unstructured", "int8-uint8")])
def test_the_model_card_says_what_the_model_is(quick_run, tmp_path, method, family, fmt):
    """Each family x format gets its own sentence: zeros for the unstructured family (kept in the int8
    weights of its INT8 variants), channels and MACs cut for the structured one, never the other's words."""
    cid = _released(quick_run, method, family, fmt)
    card, manifest = _bundle_of(quick_run, cid, tmp_path / "b.tar.gz")
    strategy, export = load(quick_run / "candidates" / cid / "strategy.json"), manifest["model"]
    assert (manifest["strategy"]["method"], manifest["strategy"]["family"], manifest["strategy"]["format"]) == \
        (method, family, fmt)
    what = card.splitlines()[2]
    share = f"{strategy['global_sparsity'] * 100:.1f}% of the prunable weights"
    int8_zeros = f"{export['zeros_onnx'] / export['prunable_params'] * 100:.1f}%"
    if method == "dense":
        assert "of the dense model" in what and "pruned" not in what and share not in what
    elif family == "unstructured":
        assert f"{share} zeroed (unstructured sparsity)" in what and "cut away" not in what
    else:
        assert f"{share} and {strategy['macs_reduction'] * 100:.1f}% of the MACs cut away as whole channels" in what
        assert "unstructured" not in what and "zeros are kept" not in what
    if fmt == "fp32":
        assert "INT8" not in what and what.endswith("fp32.")
        assert ("not the model faster" in what) == (family == "unstructured")
    else:
        activation = fmt.removeprefix("int8-")
        assert f"static quantization (QDQ, {activation} activations" in what and f"of {strategy['parent']}" in what \
            if method != "dense" else f"static quantization (QDQ, {activation} activations" in what
        kept = f"The parent's zeros are kept in the int8 weights: {int8_zeros} of them are zero."
        assert (kept in what) == (family == "unstructured" and method != "dense")
        assert int8_zeros in what
        assert "agreement with its fp32 parent" in card
        ratio = manifest["bench"]["host"]["interleaved"]["ratio_to_reference"]
        assert f"| {1 / ratio['median']:.2f}x (" in card  # the paired speed vs dense, not a figure of its own
    assert cli("verify", tmp_path / "b.tar.gz").exit_code == 0
