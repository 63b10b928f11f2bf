"""Safe safetensors reading and atomic writing.

The safetensors layout (https://github.com/huggingface/safetensors, "Format"):
8-byte little-endian unsigned header length ``N``, ``N`` bytes of UTF-8 JSON, then the
tensor data. The JSON object maps tensor names to ``{"dtype", "shape", "data_offsets"}``
(offsets relative to the start of the data section) plus an optional
``"__metadata__"`` str→str map.

We validate all of this ourselves *before* handing the file to the safetensors
library, so that every malformed input — truncated, wrong header length, invalid JSON,
duplicate keys, dtype/shape lies, offsets out of range or overlapping, declared sizes
far beyond the file (memory bombs) — gives one clear :class:`AdapterFileError` naming
the file and the problem, in time linear in the header size and without allocating
anything the file does not really contain. Only then are the tensors' byte ranges read into
memory this process owns (plain ``read`` calls, never a memory map: see :func:`_read_owned`).
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .atomic_write import atomic_file
from .errors import AdapterFileError, LcmLoraError

# Bytes per element of every dtype the safetensors format defines (safetensors `Dtype`).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
_TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None), "U16": getattr(torch, "uint16", None),
    "U32": getattr(torch, "uint32", None), "U64": getattr(torch, "uint64", None),
}
# The safetensors library refuses headers above 100 MB; a LoRA header is a few hundred KB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 8  # dimensions per tensor; LoRA tensors have at most 4


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape, absolute byte range ``[start, end)`` in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_length: int
    file_size: int


def _fail(path, problem: str) -> AdapterFileError:
    return AdapterFileError(path, problem)


def _pairs_no_duplicates(path):
    """``object_pairs_hook`` that rejects duplicate JSON keys (``json`` keeps the last silently)."""

    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise _fail(path, f"not a valid safetensors file: duplicate key {k!r} in the header")
            out[k] = v
        return out

    return hook


# Pickle-based PyTorch files (``torch.save``: a zip archive, or a bare pickle before torch 1.6).
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def _pickle_kind(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, the torch.save format"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return f"a Python pickle (protocol {head[1]}), the legacy torch.save format"
    return None


def _not_safetensors(path: Path, head: bytes, problem: str) -> AdapterFileError:
    """The file failed before its header parsed: say so, and call a pickle a pickle.

    Pickle-based files are never loaded: unpickling can run arbitrary code (the reason the
    safetensors format exists). Content is sniffed only after the safetensors reading failed,
    so a valid safetensors file whose length bytes happen to look like a pickle is unaffected.
    """
    kind = _pickle_kind(head)
    if kind is not None:
        return _fail(path, f"not a safetensors file but a pickle-based PyTorch checkpoint ({kind}): refused, "
                           "because unpickling can run arbitrary code; use the .safetensors version of this file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        problem += (f"; {path.suffix} files are usually PyTorch pickles, which are never loaded (unpickling can "
                    "run arbitrary code): use the .safetensors version")
    if problem.startswith(("truncated or not safetensors", "not a safetensors")):
        return _fail(path, problem)  # already says what it is: no doubled prefix
    return _fail(path, "not a safetensors file: " + problem)


def _check_path(path: Path) -> int:
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir():
        raise _fail(path, "is a directory, expected a .safetensors file")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "empty file (0 bytes), not a safetensors file")
    return size


def read_header(path: str | os.PathLike, *, max_bytes: int | None = None) -> SafetensorsHeader:
    """Read and fully validate the header of a safetensors file; loads no tensor data.

    ``max_bytes`` (optional) caps the file size accepted. Raises :class:`AdapterFileError`.
    """
    path = Path(path)
    size = _check_path(path)
    if max_bytes is not None and size > max_bytes:
        raise _fail(path, f"file is {size} bytes, above the limit of {max_bytes} bytes")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if size < 8:
                raise _not_safetensors(path, head, f"only {size} bytes, the 8-byte header length is missing")
            (n,) = struct.unpack("<Q", head)
            if n == 0:
                raise _not_safetensors(path, head, "header length is 0")
            if n > MAX_HEADER_BYTES:
                raise _not_safetensors(path, head, f"declared header length {n} bytes exceeds the "
                                                   f"{MAX_HEADER_BYTES}-byte limit (corrupt or not safetensors)")
            if 8 + n > size:
                raise _not_safetensors(path, head, f"truncated or not safetensors (header length {n} bytes but the "
                                                   f"file has only {size - 8} bytes after the length field)")
            raw = f.read(n)
    except OSError as e:  # permission denied, I/O error, file vanished
        raise _fail(path, f"cannot read the file: {e.strerror or e}") from None
    if len(raw) != n:
        raise _fail(path, "truncated: file changed while reading the header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_safetensors(path, head, f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.lstrip().startswith("{"):
        raise _not_safetensors(path, head, "header is not a JSON object")
    try:
        header = json.loads(text, object_pairs_hook=_pairs_no_duplicates(path))
    except AdapterFileError:
        raise
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, or an integer literal over Python's digit limit
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "nesting too deep" if isinstance(e, RecursionError) \
            else str(e).split(";")[0]
        raise _fail(path, f"not a safetensors file: invalid header JSON ({msg})") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file: header is not a JSON object")
    return _validate_header(path, header, n, size)


def _validate_header(path: Path, header: dict, n: int, size: int) -> SafetensorsHeader:
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _fail(path, "invalid safetensors header: __metadata__ must map strings to strings")
    data_start = 8 + n
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise _fail(path, f"invalid safetensors header: {where} entry is not an object")
        if set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"invalid safetensors header: {where} must have exactly dtype, shape, "
                              f"data_offsets (has {sorted(entry)})")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise _fail(path, f"invalid safetensors header: {where} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _fail(path, f"invalid safetensors header: {where} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise _fail(path, f"invalid safetensors header: {where} has bad data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise _fail(path, f"invalid safetensors header: {where} declares {dtype} {tuple(shape)} = "
                              f"{expected} bytes but its data range holds {end - begin} bytes (dtype or shape lie)")
        if end > data_size:
            raise _fail(path, f"truncated or corrupt: {where} data ends at byte {end} of the data section but "
                              f"the file holds only {data_size} data bytes")
        tensors[name] = TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)
    # Ranges must tile the data section exactly: sorted, contiguous, no overlap, no hole, no tail.
    cursor = data_start
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start < cursor:
            raise _fail(path, f"invalid safetensors header: tensor {name!r} overlaps the previous tensor's bytes")
        if info.start > cursor:
            raise _fail(path, f"invalid safetensors header: gap of {info.start - cursor} bytes before tensor {name!r}")
        cursor = info.end
    if cursor != size:
        raise _fail(path, f"invalid safetensors file: {size - cursor} bytes after the last tensor "
                          f"(header does not describe the whole file)")
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), header_length=n, file_size=size)


def read_shapes(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, from the validated header only (for architecture detection)."""
    return {k: v.shape for k, v in read_header(path, max_bytes=max_bytes).tensors.items()}


def read_safetensors(
    path: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    keys: Iterable[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validate the header, then load tensors (all or ``keys``) and ``__metadata__``.

    Returns ``(tensors, metadata)``; tensors keep their file dtype. Raises
    :class:`AdapterFileError` for every malformed input.
    """
    header = read_header(path, max_bytes=max_bytes)
    for name, info in header.tensors.items():
        if _TORCH_DTYPES.get(info.dtype) is None:
            raise _fail(path, f"tensor {name!r} has dtype {info.dtype}, which this torch build cannot load")
    wanted = list(header.tensors) if keys is None else list(keys)
    missing = [k for k in wanted if k not in header.tensors]
    if missing:
        raise _fail(path, f"tensor {missing[0]!r} not in file")
    try:
        tensors = _read_owned(path, header, wanted)
    except OSError as e:  # permission denied, I/O error, file vanished
        raise _fail(path, f"cannot read tensors: {e.strerror or e}") from None
    return tensors, header.metadata


def _read_owned(path, header: SafetensorsHeader, wanted: list[str]) -> dict[str, torch.Tensor]:
    """Tensors in memory this process owns, read with plain ``read`` calls (no memory map).

    ``safetensors.safe_open``/``load_file`` return tensors backed by a memory map of the file: if the
    file is later truncated or rewritten in place (a LoRA re-saved while ComfyUI is running), touching
    a cached tensor kills the whole process with SIGBUS (measured: ``os.truncate`` after
    ``load_file`` → exit 135). Reading into our own buffer costs about what the first touch of the
    mapped pages costs, and the header is already validated, so every range lies inside the file.
    """
    infos = {k: header.tensors[k] for k in wanted}
    if len(infos) == len(header.tensors):  # the whole data section in one read
        lo = min((i.start for i in infos.values()), default=0)
        hi = max((i.end for i in infos.values()), default=0)
        spans = {k: (lo, hi) for k in infos}
    else:
        spans = {k: (i.start, i.end) for k, i in infos.items()}
    buffers: dict[tuple[int, int], torch.Tensor] = {}  # torch.empty: no zero-fill pass
    with open(path, "rb", buffering=0) as f:
        for lo, hi in sorted(set(spans.values())):
            buf = torch.empty(hi - lo, dtype=torch.uint8)
            f.seek(lo)
            view, done = memoryview(buf.numpy()), 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise _fail(path, "truncated: the file changed while reading tensors")
                done += n
            buffers[(lo, hi)] = buf
    out: dict[str, torch.Tensor] = {}
    for k, i in infos.items():
        lo, hi = spans[k]
        raw = buffers[(lo, hi)][i.start - lo:i.end - lo]
        dtype = _TORCH_DTYPES[i.dtype]
        if raw.numel() == 0:
            out[k] = torch.empty(i.shape, dtype=dtype)
            continue
        if (i.start - lo) % dtype.itemsize or sys.byteorder != "little":  # unaligned (or big-endian host): a copy
            raw = raw.clone()
            if sys.byteorder != "little":
                raw = raw.view(-1, dtype.itemsize).flip(1).reshape(-1)
        out[k] = raw.view(dtype).reshape(i.shape)
    return out


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> None:
    """Atomically write ``tensors`` (+ str→str ``metadata``) as a safetensors file."""
    from safetensors.torch import save_file

    meta = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str to str, got {k!r}: {type(v).__name__}")
        meta[k] = v
    # save_file rejects non-contiguous tensors and tensors sharing storage: give it owned copies.
    seen: set[int] = set()
    clean: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if not t.is_contiguous() or (ptr is not None and ptr in seen):
            t = t.contiguous().clone()
        if ptr is not None:
            seen.add(t.untyped_storage().data_ptr())
        clean[k] = t
    from safetensors import SafetensorError

    try:
        with atomic_file(path, overwrite=overwrite) as tmp:
            save_file(clean, os.fspath(tmp), metadata=meta or None)
    except (OSError, SafetensorError) as e:  # disk full, permission denied, I/O error: nothing left at `path`
        raise LcmLoraError(path, f"cannot write: {getattr(e, 'strerror', None) or e}") from None
