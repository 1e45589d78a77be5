"""Compact lossless storage of a (sparse) ONNX file, with a torch-free, onnx-free reader.

Unstructured pruning leaves most weights at zero; a plain ONNX file stores them anyway and
general-purpose compressors only partly recover the waste. A compact container keeps the
ONNX bytes but cuts the raw bytes of every sparse float initializer out of them, and stores
for each one a 1-bit mask of its nonzero elements (``np.packbits``) and the nonzero values
(split into byte planes, which compress far better than interleaved floats). Everything
but a small header is then compressed with xz (preset 0: see _PRESET).

``expand`` splices the raw bytes back and yields the original ONNX file bit for bit (its
sha256 is stored in the header and checked). Only the standard library and numpy are used
here, so the device agent and users can expand a container without torch or onnx::

    python -m mixprune.compact expand model.onnx.mxc model.onnx
    python -m mixprune.compact pack model.onnx model.onnx.mxc

Layout: ``MAGIC`` | u32 little-endian header length | header (JSON) | xz stream of
skeleton (the ONNX bytes without the cut regions), then every mask, then every value plane.
Elements count as zero by bit pattern, so ``-0.0`` and NaN payloads survive unchanged.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes

MAGIC = b"MXPCOMP\x01"
FORMAT = "mixprune-compact"
VERSION = 1
SUFFIX = ".mxc"
# xz preset 0: measured on the default run's models (resnet18 at 32x32), 3.5-11x faster to pack than
# preset 6 and at most 2% larger, except a sparse INT8 file (4.0 -> 4.7 MB); packing at 6 was most of
# the export stage's time (dense fp32: 21.6 s at 6, 5.6 s at 0)
_PRESET = 0
_MIN_ELEMENTS = 64  # smaller tensors stay in the skeleton: the bookkeeping would cost more

# ONNX TensorProto.DataType codes of float types, by element size in bytes
_FLOAT_ITEMSIZE = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


class CompactError(ValueError):
    """A file that is not a valid container, or ONNX bytes that cannot be parsed."""


# --- a minimal protobuf walker: finds raw_data of the main graph's initializers -----------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CompactError("truncated protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """Yield (field number, wire type, value or (begin, end) for length-delimited)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise CompactError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise CompactError("truncated protobuf field")
        yield number, wire, value


def _tensor_region(buf: bytes, start: int, end: int) -> dict | None:
    """Offset, size and element size of a float TensorProto's raw_data, if it has one."""
    dims, data_type, raw = [], None, None
    for number, wire, value in _fields(buf, start, end):
        if number == 1 and wire == 0:
            dims.append(value)
        elif number == 1 and wire == 2:  # packed dims
            pos, stop = value
            while pos < stop:
                dim, pos = _varint(buf, pos)
                dims.append(dim)
        elif number == 2 and wire == 0:
            data_type = value
        elif number == 9 and wire == 2:
            raw = value
    itemsize = _FLOAT_ITEMSIZE.get(data_type)
    if itemsize is None or raw is None:
        return None
    numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if raw[1] - raw[0] != numel * itemsize:
        return None
    return {"offset": raw[0], "nbytes": raw[1] - raw[0], "itemsize": itemsize}


def initializer_regions(onnx_bytes: bytes) -> list[dict]:
    """Byte regions holding the raw data of float initializers of the model's main graph."""
    regions = []
    for number, wire, value in _fields(onnx_bytes, 0, len(onnx_bytes)):
        if number == 7 and wire == 2:  # ModelProto.graph
            for g_number, g_wire, g_value in _fields(onnx_bytes, *value):
                if g_number == 5 and g_wire == 2:  # GraphProto.initializer
                    region = _tensor_region(onnx_bytes, *g_value)
                    if region is not None:
                        regions.append(region)
    return sorted(regions, key=lambda r: r["offset"])


# --- pack / expand --------------------------------------------------------------------------
def _planes(values: np.ndarray, itemsize: int) -> bytes:
    return values.view(np.uint8).reshape(-1, itemsize).T.tobytes()


def _unplanes(data: bytes, itemsize: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.copy().view(_UINT[itemsize]).ravel()


def pack(onnx_bytes: bytes) -> bytes:
    """The container of ``onnx_bytes`` (any ONNX file; dense ones simply gain nothing)."""
    skeleton, masks, values, tensors = [], [], [], []
    cursor = 0
    for region in initializer_regions(onnx_bytes):
        offset, nbytes, itemsize = region["offset"], region["nbytes"], region["itemsize"]
        numel = nbytes // itemsize
        words = np.frombuffer(onnx_bytes, _UINT[itemsize], count=numel, offset=offset)
        nonzero = words != 0
        nnz = int(nonzero.sum())
        if numel < _MIN_ELEMENTS or (numel + 7) // 8 + nnz * itemsize >= nbytes:
            continue  # not sparse enough to pay for its mask
        skeleton.append(onnx_bytes[cursor:offset])
        cursor = offset + nbytes
        masks.append(np.packbits(nonzero).tobytes())
        values.append(_planes(words[nonzero], itemsize))
        tensors.append({"offset": offset, "nbytes": nbytes, "itemsize": itemsize, "nnz": nnz})
    skeleton.append(onnx_bytes[cursor:])
    skeleton_bytes = b"".join(skeleton)
    header = {
        "format": FORMAT, "version": VERSION, "size": len(onnx_bytes),
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "skeleton_bytes": len(skeleton_bytes),
        "tensors": tensors,
    }
    payload = lzma.compress(skeleton_bytes + b"".join(masks) + b"".join(values), format=lzma.FORMAT_XZ, preset=_PRESET)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + payload


def read_header(container: bytes) -> tuple[dict, int]:
    """The header of a container and the offset where its compressed payload starts."""
    if not container.startswith(MAGIC):
        raise CompactError("not a mixprune compact container (wrong magic bytes)")
    try:
        (length,) = struct.unpack_from("<I", container, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(container[start:start + length].decode())
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise CompactError(f"container header is corrupt ({exc})") from exc
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CompactError(f"unsupported container format {header.get('format')} v{header.get('version')}")
    return header, start + length


def unpack(container: bytes) -> bytes:
    """The original ONNX bytes of a container, verified against the stored sha256."""
    header, start = read_header(container)
    try:
        payload = lzma.decompress(container[start:], format=lzma.FORMAT_XZ)
    except lzma.LZMAError as exc:
        raise CompactError(f"container payload is corrupt ({exc})") from exc
    tensors = header["tensors"]
    pos = header["skeleton_bytes"]
    skeleton = payload[:pos]
    masks = []
    for t in tensors:
        numel = t["nbytes"] // t["itemsize"]
        size = (numel + 7) // 8
        masks.append(np.unpackbits(np.frombuffer(payload, np.uint8, count=size, offset=pos), count=numel).astype(bool))
        pos += size
    out, cursor, removed = [], 0, 0
    for t, mask in zip(tensors, masks):
        size = t["nnz"] * t["itemsize"]
        words = np.zeros(mask.size, _UINT[t["itemsize"]])
        words[mask] = _unplanes(payload[pos:pos + size], t["itemsize"])
        pos += size
        cut = t["offset"] - removed  # where the region was cut out of the skeleton
        out += [skeleton[cursor:cut], words.tobytes()]
        cursor, removed = cut, removed + t["nbytes"]
    out.append(skeleton[cursor:])
    onnx_bytes = b"".join(out)
    if len(onnx_bytes) != header["size"] or hashlib.sha256(onnx_bytes).hexdigest() != header["sha256"]:
        raise CompactError("expanded bytes do not match the stored sha256; the container is corrupt")
    return onnx_bytes


def pack_file(onnx_path: str | os.PathLike, container_path: str | os.PathLike) -> int:
    """Write the container of an ONNX file; returns its size in bytes."""
    data = pack(Path(onnx_path).read_bytes())
    atomic_write_bytes(container_path, data)
    return len(data)


def expand(container_path: str | os.PathLike, out_onnx_path: str | os.PathLike) -> str:
    """Expand a container into a plain ONNX file; returns the file's sha256."""
    path = Path(container_path)
    if not path.is_file():
        raise CompactError(f"{path} does not exist")
    onnx_bytes = unpack(path.read_bytes())
    atomic_write_bytes(out_onnx_path, onnx_bytes)
    return hashlib.sha256(onnx_bytes).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m mixprune.compact expand CONTAINER OUT.onnx | pack MODEL.onnx OUT" + SUFFIX
    if len(args) != 3 or args[0] not in ("expand", "pack"):
        print(usage, file=sys.stderr)
        return 2
    try:
        if args[0] == "expand":
            print(f"{args[2]} sha256 {expand(args[1], args[2])}")
        else:
            if not Path(args[1]).is_file():
                raise CompactError(f"{args[1]} does not exist")
            print(f"{args[2]} {pack_file(args[1], args[2])} bytes")
    except (CompactError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
