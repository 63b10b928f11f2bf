"""Consistency checks of LoRA modules; every failure is an :class:`AdapterFileError` naming the key.

A module is ``down`` (r, in[, kh, kw]), ``up`` (out, r[, 1, 1]), optional ``mid``
(r, r, kh, kw) with a 1×1 ``down`` (LyCORIS Tucker), optional scalar ``alpha``
(kohya: ΔW = alpha/r · up·down; sd-scripts ``networks/lora.py`` ``LoRAModule``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import AdapterFileError
from .adapter import LoraAdapter, LoraModule
from .module_table import ModuleSpec, architecture_modules

FLOAT32_MAX = torch.finfo(torch.float32).max  # the largest weight that w·ΔW in float32 can carry


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_module(source, name: str, down: torch.Tensor | None, up: torch.Tensor | None,
                 mid: torch.Tensor | None = None, alpha=None) -> None:
    """Structural checks of one module; ``name`` is the module's name as written in the file."""
    if down is None and up is None:
        raise AdapterFileError(source, f"{name}: has only {'alpha' if alpha is not None else 'lora_mid'}, "
                                       "no lora_down/lora_up weights (missing up/down pair)")
    if down is None:
        raise AdapterFileError(source, f"{name}: has lora_up but no lora_down (missing up/down partner)")
    if up is None:
        raise AdapterFileError(source, f"{name}: has lora_down but no lora_up (missing up/down partner)")
    for role, t in (("lora_down", down), ("lora_up", up), ("lora_mid", mid)):
        if t is not None and not t.is_floating_point():
            raise AdapterFileError(source, f"{name}.{role}: dtype {t.dtype} is not floating point")
    if down.dim() not in (2, 4):
        raise AdapterFileError(source, f"{name}.lora_down: shape {_shape(down)} is neither 2-D (Linear) nor 4-D (Conv2d)")
    if up.dim() != down.dim():
        raise AdapterFileError(source, f"{name}: lora_down is {down.dim()}-D {_shape(down)} but lora_up is "
                                       f"{up.dim()}-D {_shape(up)}")
    rank = down.shape[0]
    if rank == 0 or up.shape[0] == 0 or down.shape[1] == 0:
        raise AdapterFileError(source, f"{name}: zero rank or empty weight (lora_down {_shape(down)}, lora_up {_shape(up)})")
    r_up = up.shape[1]
    if mid is None and r_up != rank:
        raise AdapterFileError(source, f"{name}: rank mismatch in up/down pair: lora_down {_shape(down)} has rank "
                                       f"{rank} but lora_up {_shape(up)} has rank {r_up}")
    if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
        raise AdapterFileError(source, f"{name}.lora_up: conv kernel must be 1×1, got shape {_shape(up)}")
    if mid is not None:
        if down.dim() != 4 or mid.dim() != 4:
            raise AdapterFileError(source, f"{name}: lora_mid (Tucker) needs 4-D conv weights, got lora_down "
                                           f"{_shape(down)}, lora_mid {_shape(mid)}")
        if tuple(down.shape[2:]) != (1, 1):
            raise AdapterFileError(source, f"{name}: with lora_mid, lora_down must be 1×1, got {_shape(down)}")
        if mid.shape[1] != rank or mid.shape[0] != r_up:
            raise AdapterFileError(source, f"{name}: rank mismatch: lora_down {_shape(down)}, lora_mid "
                                           f"{_shape(mid)}, lora_up {_shape(up)}")
    if alpha is not None:
        if not math.isfinite(alpha):
            raise AdapterFileError(source, f"{name}.alpha is {alpha} (NaN/Inf)")
        if alpha == 0:
            raise AdapterFileError(source, f"{name}.alpha is 0 (ambiguous: sd-scripts reads it as alpha = rank, "
                                           "ComfyUI and diffusers as a zero update)")


def alpha_from_tensor(source, name: str, t: torch.Tensor) -> float:
    if t.numel() != 1:
        raise AdapterFileError(source, f"{name}.alpha must be a scalar, got shape {_shape(t)}")
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise AdapterFileError(source, f"{name}.alpha has dtype {t.dtype}")
    return float(t.reshape(()).item())


# Bit-pattern limits per float dtype: (signed and unsigned integer view of the same width,
# largest finite pattern with the sign bit clear, largest finite pattern with it set). NaN and
# ±Inf are exactly the patterns above these (IEEE 754: exponent field all ones; bfloat16 is the
# top half of binary32; OCP 8-bit floating point spec: E5M2 likewise, E4M3FN has no Inf and one
# NaN per sign, S.1111.111).
_NONFINITE_LIMITS = {
    torch.float16: (np.int16, np.uint16, 0x7BFF, 0xFBFF),
    torch.bfloat16: (np.int16, np.uint16, 0x7F7F, 0xFF7F),
    torch.float32: (np.int32, np.uint32, 0x7F7FFFFF, 0xFF7FFFFF),
    torch.float64: (np.int64, np.uint64, 0x7FEFFFFFFFFFFFFF, 0xFFEFFFFFFFFFFFFF),
}
for _name, _limits in (("float8_e4m3fn", (np.int8, np.uint8, 0x7E, 0xFE)), ("float8_e5m2", (np.int8, np.uint8, 0x7B, 0xFB))):
    if hasattr(torch, _name):
        _NONFINITE_LIMITS[getattr(torch, _name)] = _limits
_TORCH_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def has_nonfinite(t: torch.Tensor) -> bool:
    """True when a floating-point tensor holds a NaN or ±Inf; exact, no copy of the data.

    A bit-pattern test on integer views of the tensor's memory: with the sign bit clear, NaN/Inf
    are exactly the signed-integer values above the largest finite pattern; with it set, exactly
    the unsigned values above the largest negative finite one — so two integer ``max``
    reductions decide it, for float16, bfloat16, float32, float64 and float8 (E4M3FN, E5M2)
    alike. numpy does the reductions (single-threaded SIMD): torch's own reductions
    (``isfinite(t).all()``, ``aminmax``) wait for their worker threads on a loaded machine, numpy
    never does (numbers: BENCHMARKS.md, "Design measurements").
    Other float dtypes (and tensors off the CPU) fall back to ``torch.isfinite``.
    ``tests/test_check_finite.py`` checks every float16/bfloat16/float8 bit pattern and sampled
    float32/float64 ones against the IEEE-754 definition on the bits.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return False
    limits = _NONFINITE_LIMITS.get(t.dtype)
    if limits is None or t.device.type != "cpu":
        if t.element_size() == 1:  # other float8 kinds: isfinite is not implemented; float32 holds them exactly
            t = t.to(torch.float32)
        return not bool(torch.isfinite(t).all())
    signed, unsigned, positive_limit, negative_limit = limits
    bits = t.detach().view(_TORCH_INT[t.element_size()]).numpy()
    if bits.dtype != signed:  # pragma: no cover - the views above always match
        bits = bits.view(signed)
    return int(bits.max()) > positive_limit or int(bits.view(unsigned).max()) > negative_limit


def check_finite(source, tensors: dict[str, torch.Tensor]) -> None:
    """Reject NaN / ±Inf anywhere (names the first offending tensor key). Uses :func:`has_nonfinite`
    (exact, fast); only an offending tensor is looked at again, to say whether it holds NaN or Inf."""
    for key, t in tensors.items():
        if has_nonfinite(t):
            if t.element_size() == 1:  # float8: isnan is not implemented; float32 holds every value exactly
                t = t.to(torch.float32)
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise AdapterFileError(source, f"{key}: contains {kind} values")


def shape_matches(module: LoraModule, spec: ModuleSpec) -> bool:
    """Does the module's update fit the base weight? Linear ↔ Conv 1×1 count as the same."""
    got = tuple(module.weight_shape)
    want = tuple(spec.shape)
    if got == want:
        return True
    strip = lambda s: s[:2] if len(s) == 4 and s[2:] == (1, 1) else s  # noqa: E731
    return strip(got) == strip(want)


def check_against_architecture(source, adapter: LoraAdapter, arch: str, names: dict[str, str] | None = None) -> None:
    """Every module must exist in the full-size ``arch`` model with a matching weight shape."""
    table = architecture_modules(arch)
    names = names or {}
    for key, module in adapter.modules.items():
        label = names.get(key, key)
        spec = table.get(key)
        if spec is None:
            raise AdapterFileError(source, f"{label}: module {key} does not exist in {arch} "
                                           "(key of another architecture?)")
        if not shape_matches(module, spec):
            raise AdapterFileError(source, f"{label}: LoRA update shape {tuple(module.weight_shape)} does not match "
                                           f"{arch} weight {key} {spec.shape} (wrong base architecture?)")
