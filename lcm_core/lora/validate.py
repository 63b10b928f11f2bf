"""Consistency checks of LoRA modules; every failure is an :class:`AdapterFileError` naming the key.

A module is ``down`` (r, in[, kh, kw]), ``up`` (out, r[, 1, 1]), optional ``mid``
(r, r, kh, kw) with a 1×1 ``down`` (LyCORIS Tucker), optional scalar ``alpha``
(kohya: ΔW = alpha/r · up·down; sd-scripts ``networks/lora.py`` ``LoRAModule``).
"""
from __future__ import annotations

import math

import torch

from ..errors import AdapterFileError
from .adapter import LoraAdapter, LoraModule
from .module_table import ModuleSpec, architecture_modules


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


def check_finite(source, tensors: dict[str, torch.Tensor]) -> None:
    """Reject NaN / ±Inf anywhere (names the first offending tensor key)."""
    for key, t in tensors.items():
        if t.is_floating_point() and t.element_size() == 1:  # float8: isfinite is not implemented
            t = t.to(torch.float16)  # exact (every e4m3/e5m2 value, NaN and Inf included, is a float16)
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
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
