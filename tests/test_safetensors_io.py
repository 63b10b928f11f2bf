"""Safe safetensors I/O: valid files agree with the safetensors library, malformed files give
our one-line error naming the file, in bounded memory, and are refused by safetensors too."""
from __future__ import annotations

import json
import struct
import tracemalloc

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lcm_lora.lcm_core.errors import AdapterFileError, OutputExistsError
from lcm_lora.lcm_core.safetensors_io import read_header, read_safetensors, read_shapes, write_safetensors


def raw_file(path, header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> str:
    """Write a safetensors-shaped file by hand (for malformed inputs)."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return str(path)


def library_refuses(path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


def test_round_trip_matches_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(2, 4, 3, 3, generator=g).half(),
        "c": torch.randn(7, generator=g).bfloat16(),
        "d": torch.tensor(8.0),
        "e": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }
    p = tmp_path / "x.safetensors"
    write_safetensors(p, tensors, {"k": "v", "json": json.dumps({"x": 1})})
    ours, md = read_safetensors(p)
    ref = load_file(str(p))
    with safe_open(str(p), framework="pt") as f:
        ref_md = f.metadata()
    assert md == ref_md == {"k": "v", "json": json.dumps({"x": 1})}
    assert set(ours) == set(ref) == set(tensors)
    for k in tensors:
        assert ours[k].dtype == tensors[k].dtype == ref[k].dtype
        assert torch.equal(ours[k], ref[k]) and torch.equal(ours[k], tensors[k])
    assert read_shapes(p) == {k: tuple(v.shape) for k, v in tensors.items()}


def test_reads_files_written_by_the_library(tmp_path):
    p = tmp_path / "lib.safetensors"
    t = {"w": torch.randn(4, 4), "empty": torch.zeros(0, 3)}
    save_file(t, str(p), metadata={"m": "1"})
    ours, md = read_safetensors(p)
    assert md == {"m": "1"} and torch.equal(ours["w"], t["w"]) and ours["empty"].shape == (0, 3)


def test_shared_and_noncontiguous_tensors_are_written(tmp_path):
    base = torch.randn(4, 6)
    p = tmp_path / "s.safetensors"
    write_safetensors(p, {"a": base, "b": base, "c": base.t()})
    got, _ = read_safetensors(p)
    assert torch.equal(got["a"], base) and torch.equal(got["b"], base) and torch.equal(got["c"], base.t())


def test_write_is_atomic_and_refuses_overwrite(tmp_path):
    p = tmp_path / "o.safetensors"
    write_safetensors(p, {"a": torch.ones(2)})
    with pytest.raises(OutputExistsError):
        write_safetensors(p, {"a": torch.zeros(2)})
    write_safetensors(p, {"a": torch.zeros(2)}, overwrite=True)
    assert torch.equal(read_safetensors(p)[0]["a"], torch.zeros(2))
    assert [x.name for x in tmp_path.iterdir()] == ["o.safetensors"]  # no temp leftovers


def raw_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def _valid_header(n_floats=4):
    return {"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}


MALFORMED = {
    # name: (builder(tmp) -> path, expected substring)
    "empty file": (lambda d: raw_bytes(d / "e.safetensors", b""), "empty file"),
    "shorter than 8 bytes": (lambda d: raw_bytes(d / "s.safetensors", b"abc"), "only 3 bytes"),
    "header length beyond file": (lambda d: raw_file(d / "h.safetensors", _valid_header(), b"\0" * 16, length=10_000),
                                  "truncated"),
    "header length huge (bomb)": (lambda d: raw_file(d / "b.safetensors", _valid_header(), b"\0" * 16, length=2**62),
                                  "exceeds"),
    "invalid JSON": (lambda d: raw_file(d / "j.safetensors", '{"w": {"dtype": "F32",', b""), "invalid header JSON"),
    "not UTF-8": (lambda d: raw_file(d / "u.safetensors", b'{"\xff\xfe": 1}', b""), "not UTF-8"),
    "JSON array": (lambda d: raw_file(d / "a.safetensors", "[1, 2]", b""), "not a JSON object"),
    "duplicate keys": (lambda d: raw_file(
        d / "dup.safetensors",
        '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
        '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8), "duplicate key 'w'"),
    "dtype lie": (lambda d: raw_file(d / "dt.safetensors",
                                     {"w": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
                  "dtype or shape lie"),
    "shape lie": (lambda d: raw_file(d / "sh.safetensors",
                                     {"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}, b"\0" * 16),
                  "dtype or shape lie"),
    "unknown dtype": (lambda d: raw_file(d / "ud.safetensors",
                                         {"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
                      "unknown dtype"),
    "negative shape": (lambda d: raw_file(d / "ns.safetensors",
                                          {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                       "bad shape"),
    "offsets out of range": (lambda d: raw_file(d / "or.safetensors", _valid_header(8), b"\0" * 16),
                             "data ends at byte 32"),
    "declared size far beyond file (memory bomb)": (lambda d: raw_file(
        d / "mb.safetensors", {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
        b"\0" * 16), "holds only 16 data bytes"),
    "overlapping tensors": (lambda d: raw_file(d / "ov.safetensors", {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16), "overlaps"),
    "gap between tensors": (lambda d: raw_file(d / "gap.safetensors", {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12), "gap of 4 bytes"),
    "trailing bytes": (lambda d: raw_file(d / "tr.safetensors", _valid_header(), b"\0" * 20), "after the last tensor"),
    "truncated data": (lambda d: raw_file(d / "td.safetensors", _valid_header(), b"\0" * 10), "truncated"),
    "missing field": (lambda d: raw_file(d / "mf.safetensors", {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
                      "exactly dtype, shape, data_offsets"),
    "bad metadata": (lambda d: raw_file(d / "md.safetensors", {"__metadata__": {"a": 1}, **_valid_header()},
                                        b"\0" * 16), "__metadata__ must map strings to strings"),
    "deeply nested JSON": (lambda d: raw_file(d / "deep.safetensors", "{" + '"a":[' * 100000 + "]" * 100000 + "}",
                                              b""), "invalid header JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_give_clear_error(tmp_path, case):
    build, expected = MALFORMED[case]
    path = build(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterFileError) as info:
            read_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert str(path) in msg and expected in msg, msg
    assert "\n" not in msg
    assert peak < 16 * 2**20, f"validation used {peak} bytes"
    if case != "duplicate keys":  # the library keeps the last duplicate; we are stricter
        assert library_refuses(path), f"safetensors accepts the '{case}' file that we reject"


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(AdapterFileError, match="is a directory"):
        read_safetensors(tmp_path)
    with pytest.raises(AdapterFileError, match="file not found"):
        read_safetensors(tmp_path / "nope.safetensors")


def test_pickle_checkpoint_is_not_safetensors(tmp_path):
    p = tmp_path / "model.ckpt"
    torch.save({"w": torch.ones(3)}, p)
    with pytest.raises(AdapterFileError, match="not a safetensors file|truncated"):
        read_safetensors(p)


def test_max_bytes_and_header_only(tmp_path):
    p = tmp_path / "x.safetensors"
    write_safetensors(p, {"w": torch.zeros(1000)})
    with pytest.raises(AdapterFileError, match="above the limit"):
        read_safetensors(p, max_bytes=100)
    h = read_header(p)
    assert h.tensors["w"].nbytes == 4000 and h.file_size == p.stat().st_size


# A child process: the safetensors library's memory-mapped tensors die with SIGBUS when the file is
# truncated under them (the control); ours are read into owned memory and keep their values.
_TRUNCATE_CHILD = r"""
import os, sys, torch
from safetensors.torch import load_file
from lcm_lora.lcm_core.safetensors_io import read_safetensors
path, how = sys.argv[1:]
expected = {k: v.clone() for k, v in load_file(path).items()}
tensors = read_safetensors(path)[0] if how == "ours" else load_file(path)
os.truncate(path, 8)
ok = all(torch.equal(tensors[k], v) for k, v in expected.items())
print("same" if ok else "changed")
"""


@pytest.mark.parametrize("how", ["ours", "library"])
def test_tensors_survive_the_file_being_truncated(tmp_path, how):
    """A LoRA re-saved in place (``open(path, "wb")`` truncates) while ComfyUI holds the adapter in its
    cache must not kill the server: ours keep their values; the library's mmap (control) dies."""
    import subprocess
    import sys

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(512, 1024, generator=g), "b": torch.randn(3, 5, generator=g).half(),
               "c": torch.randn(7, generator=g).to(torch.bfloat16), "d": torch.randn(1024, 300, generator=g)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    run = subprocess.run([sys.executable, "-c", _TRUNCATE_CHILD, str(path), how], capture_output=True, text=True, timeout=120)
    if how == "ours":
        assert run.returncode == 0 and run.stdout.strip() == "same", run.stderr[-2000:]
    else:
        assert run.returncode != 0 or run.stdout.strip() != "same"  # SIGBUS (-7) on Linux


def test_unaligned_and_subset_reads_equal_the_library(tmp_path):
    """Tensors at offsets that are not a multiple of their element size (odd-sized int8/f16 before
    f32/f64) and reads of a subset of keys equal the safetensors library's values."""
    g = torch.Generator().manual_seed(1)
    tensors = {"a_u8": torch.randint(0, 255, (3,), dtype=torch.uint8, generator=g),
               "b_f32": torch.randn(5, 3, generator=g), "c_f16": torch.randn(3, generator=g).half(),
               "d_f64": torch.randn(4, dtype=torch.float64, generator=g), "e_bf16": torch.randn(2, 3, generator=g).bfloat16(),
               "f_empty": torch.zeros(0, 4)}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    ref = load_file(str(path))
    got, _ = read_safetensors(path)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    sub, _ = read_safetensors(path, keys=["d_f64", "b_f32"])
    assert sub.keys() == {"d_f64", "b_f32"} and torch.equal(sub["d_f64"], ref["d_f64"])


def test_unaligned_offsets_written_by_hand(tmp_path):
    """The format allows any offsets: an f32 tensor at byte 3 of the data section (the library
    writes aligned files, so this one is made by hand; its values come from numpy on the raw bytes)."""
    import numpy as np

    u8 = bytes([1, 2, 3])
    f32 = np.arange(6, dtype="<f4") * 0.5 - 1.0
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [3, 27]}}
    path = raw_file(tmp_path / "unaligned.safetensors", header, u8 + f32.tobytes())
    got, _ = read_safetensors(path)
    assert got["a"].tolist() == [1, 2, 3]
    assert torch.equal(got["b"], torch.from_numpy(f32.reshape(2, 3).copy()))
