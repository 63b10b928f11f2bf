"""``lcm_core.lora.validate.has_nonfinite`` / ``check_finite`` against the IEEE-754 definition on the bits.

Reference: a value is NaN or ±Inf exactly when its exponent field is all ones (IEEE 754 binary16 /
binary32 / binary64, bfloat16 = the top half of binary32); float8 E5M2 likewise, float8 E4M3FN
has no Inf and one NaN pattern per sign (S.1111.111, OCP 8-bit floating point spec). The
reference below reads only the integer bit patterns, never a float comparison.

Every float16 / bfloat16 / float8 bit pattern is placed in a tensor of ordinary values (at the
start, in the middle, at the end, and past several vector widths and thread grains), float32 /
float64 patterns are sampled (every sign, quiet and signalling NaN payloads, the largest finite
values, subnormals, ±0).
"""
from __future__ import annotations

import pytest
import torch

from lcm_lora.lcm_core.errors import AdapterFileError
from lcm_lora.lcm_core.lora.validate import check_finite, has_nonfinite

# dtype -> (integer view dtype, exponent mask, mantissa mask, bits)
LAYOUT = {
    torch.float16: (torch.int16, 0x7C00, 0x03FF, 16),
    torch.bfloat16: (torch.int16, 0x7F80, 0x007F, 16),
    torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF, 32),
    torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF, 64),
    torch.float8_e5m2: (torch.int8, 0x7C, 0x03, 8),
}


def reference_nonfinite(dtype, pattern: int) -> bool:
    """From the bits alone (pattern as an unsigned integer)."""
    if dtype == torch.float8_e4m3fn:
        return pattern & 0x7F == 0x7F
    _, exp, _, _ = LAYOUT[dtype]
    return pattern & exp == exp


def with_pattern(dtype, pattern: int, n: int, pos: int, seed: int = 0) -> torch.Tensor:
    """``n`` ordinary values of ``dtype`` with the raw bit ``pattern`` at ``pos``."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(n, generator=g) * 0.5).to(dtype)
    itype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    bits = t.view(itype)
    width = t.element_size() * 8
    signed = pattern - (1 << width) if itype != torch.uint8 and pattern >= 1 << (width - 1) else pattern
    bits[pos] = signed
    return t


def all_patterns(dtype) -> range:
    return range(1 << (torch.finfo(dtype).bits))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_every_bit_pattern(dtype):
    n = 97  # odd: a tail after every vector width
    wrong = []
    for p in all_patterns(dtype):
        pos = p % n
        got = has_nonfinite(with_pattern(dtype, p, n, pos, seed=p & 7))
        if got != reference_nonfinite(dtype, p):
            wrong.append(hex(p))
    assert not wrong, f"{dtype}: {len(wrong)} patterns misjudged, e.g. {wrong[:8]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                   torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("n", [1, 31, 4099, 300_001])
def test_position_anywhere_in_long_tensors(dtype, n):
    """One NaN / +Inf / -Inf at the first, last and a random position of 1-D and 2-D tensors
    (300 001 elements crosses torch's parallel grain, so several threads reduce)."""
    torch.set_num_threads(2)
    nan = {torch.float8_e4m3fn: 0x7F}.get(dtype)
    specials = []
    if dtype in LAYOUT:
        _, exp, man, bits = LAYOUT[dtype]
        sign = 1 << (bits - 1)
        specials = [exp | 1, exp | man, exp, sign | exp, sign | exp | 1, exp | (man + 1) // 2]  # sNaN, qNaN, ±Inf, -NaN
    else:
        specials = [nan, 0xFF]
    assert not has_nonfinite(with_pattern(dtype, 0, n, 0))
    for k, p in enumerate(specials):
        for pos in {0, n - 1, (7919 * (k + 1)) % n}:
            t = with_pattern(dtype, p, n, pos, seed=k)
            assert has_nonfinite(t) == reference_nonfinite(dtype, p), (hex(p), pos)
            if n % 31 == 0 and n > 1:
                assert has_nonfinite(t.view(31, -1)) == reference_nonfinite(dtype, p)
                assert has_nonfinite(t.view(31, -1).t()) == reference_nonfinite(dtype, p)  # non-contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampled_wide_patterns(dtype):
    """Random bit patterns, half of them forced into the exponent-all-ones class."""
    itype, exp, man, bits = LAYOUT[dtype]
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(-(1 << 62), 1 << 62, (4000,), generator=g, dtype=torch.int64)
    for i, r in enumerate(raw.tolist()):
        p = r % (1 << bits)
        if i % 2:
            p |= exp
        assert has_nonfinite(with_pattern(dtype, p, 33, i % 33)) == reference_nonfinite(dtype, p), hex(p)
    finfo = torch.finfo(dtype)
    edge = torch.tensor([finfo.max, -finfo.max, finfo.tiny, finfo.tiny / 4, -0.0, 0.0], dtype=dtype)
    assert not has_nonfinite(edge)


def test_not_floating_point_and_empty():
    assert not has_nonfinite(torch.zeros(0, dtype=torch.float16))
    assert not has_nonfinite(torch.full((4,), 0x7C00, dtype=torch.int16))  # an integer tensor is never "non-finite"
    assert not has_nonfinite(torch.tensor(2.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn,
                                   torch.float8_e5m2])
def test_check_finite_names_key_and_kind(dtype):
    good = torch.ones(8, 8).to(dtype)
    bad_nan = good.clone()
    bad_nan.view(-1)[13] = float("nan")
    check_finite("f.safetensors", {"a": good})
    with pytest.raises(AdapterFileError, match=r"^f\.safetensors: b\.lora_up\.weight: contains NaN values$"):
        check_finite("f.safetensors", {"a": good, "b.lora_up.weight": bad_nan})
    if dtype != torch.float8_e4m3fn:  # E4M3FN has no Inf
        bad_inf = good.clone()
        bad_inf.view(-1)[63] = float("-inf")
        with pytest.raises(AdapterFileError, match=r"x: contains Inf values$"):
            check_finite("f.safetensors", {"x": bad_inf})
