"""Two-factor form of LoRA modules and Frobenius norms computed from factors.

Every LoRA module (Linear, LoCon conv k×k with a 1×1 ``up``, LyCORIS Tucker with a
``mid`` core) is a product of two factors once the base weight is viewed as a matrix
``(out, in·kh·kw)`` — the reshape that kohya ``networks/svd_merge_lora.py`` and peft
``_svd_generalized_task_arithmetic_weighted_adapter`` apply to conv ΔW
(``flatten(start_dim=1)``):

    ΔW = scale · U @ D,      U = up (out, r),   D = down (r, in·kh·kw)
    Tucker: D = mid ∘ down   (the mid core is composed into down first)

A weighted sum Σ λ_i ΔW_i is then exactly ``[λ_1 s_1 U_1, …, λ_N s_N U_N] @ [D_1; …; D_N]``
(the "cat" combination of peft ``add_weighted_adapter``), rank Σ r_i. The weight λ_i·s_i
goes into U only, so negative weights need no sign bookkeeping.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import AdapterFileError
from .lora.adapter import LoraModule


def multiplicative_problem(key: str, module) -> str:
    from .lora.lycoris_modules import ALGO_NAMES, algo_of

    algo = algo_of(module)
    what = "DoRA" if "+dora" in algo else ALGO_NAMES.get(algo, algo)
    return (f"module {key}: {what} is multiplicative (its update depends on the base weights), so it cannot be "
            "merged into a LoRA without the base model: fuse it into a checkpoint (`lcm-lora fuse`, or the merge "
            "node's method 'fuse'), or give the base checkpoint with --base CKPT")


@dataclass
class WeightedFactors:
    """ΔW_total = U @ D [+ dense] (as a matrix ``(out, in·kh·kw)``) for one module key."""

    U: torch.Tensor  # (out, R), weights and alpha/rank already folded in
    D: torch.Tensor  # (R, in·kh·kw)
    weight_shape: tuple[int, ...]  # shape of the base weight this module updates
    dense: torch.Tensor | None = None  # full-rank parts (LyCORIS full diff), (out, in·kh·kw)

    def matrix(self) -> torch.Tensor:
        """The dense ΔW_total as a matrix (only for modules that need a dense SVD)."""
        m = self.U @ self.D
        return m if self.dense is None else m + self.dense

    @property
    def stacked_rank(self) -> int:
        return int(self.U.shape[1])


def module_factors(module: LoraModule, source: str, key: str, dtype: torch.dtype = torch.float32):
    """Return ``(U, D)`` with ``scale · U @ D == module.delta_weight()`` viewed as a matrix.

    ``scale`` is *not* folded in here. Raises :class:`AdapterFileError` naming ``source``
    and ``key`` for shapes that are not a LoRA / LoCon / Tucker module.
    """
    if getattr(module, "multiplicative", False):
        raise AdapterFileError(source, multiplicative_problem(key, module))
    if not isinstance(module, LoraModule):  # LoHa / LoKr: exact factors; full diff: None (dense)
        return module.matrix_factors(dtype)
    down, up, mid = module.down, module.up, module.mid
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise AdapterFileError(
            source, f"module {key}: unsupported LoRA shapes down {tuple(down.shape)}, up {tuple(up.shape)}"
        )
    if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
        raise AdapterFileError(
            source, f"module {key}: conv LoRA 'up' must be 1×1, got kernel {tuple(up.shape[2:])}"
        )
    U = up.reshape(up.shape[0], up.shape[1]).to(dtype)
    if mid is None:
        D = down.reshape(down.shape[0], -1).to(dtype)
    else:
        if down.dim() != 4 or tuple(down.shape[2:]) != (1, 1) or mid.dim() != 4:
            raise AdapterFileError(
                source, f"module {key}: Tucker LoRA needs 1×1 down and a 4-D mid, got down "
                f"{tuple(down.shape)}, mid {tuple(mid.shape)}"
            )
        if mid.shape[1] != down.shape[0] or mid.shape[0] != up.shape[1]:
            raise AdapterFileError(
                source, f"module {key}: Tucker ranks disagree: down {tuple(down.shape)}, "
                f"mid {tuple(mid.shape)}, up {tuple(up.shape)}"
            )
        # D'[a, i, h, w] = Σ_b mid[a, b, h, w] · down[b, i]  (mid composed into down)
        D = torch.einsum("abhw,bi->aihw", mid.to(dtype), down.reshape(down.shape[0], -1).to(dtype))
        D = D.reshape(D.shape[0], -1)
    if U.shape[1] != D.shape[0]:
        raise AdapterFileError(
            source, f"module {key}: up has rank {U.shape[1]} but down has rank {D.shape[0]}"
        )
    return U, D


def compatible_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal, or the same matrix with/without trailing 1×1 kernel dims (Linear vs Conv 1×1)."""
    if a == b:
        return True
    squeeze = lambda s: s[:2] if len(s) == 4 and s[2:] == (1, 1) else s  # noqa: E731
    if squeeze(a) == squeeze(b):
        return True
    # LyCORIS factors of a k×k conv may be flattened (out, in·k·k): the same matrix
    return {len(a), len(b)} == {2, 4} and a[0] == b[0] and math.prod(a[1:]) == math.prod(b[1:])


def stack_weighted(
    key: str,
    contributions: list[tuple[str, float, LoraModule]],
    dtype: torch.dtype = torch.float32,
) -> WeightedFactors:
    """Stack ``(source, λ_i, module_i)`` into ``U = [λ_i s_i U_i]``, ``D = [D_i]`` (exact).

    The output weight shape is the first contribution's; the others must update the same
    weight (a Linear-shaped and a 1×1-conv-shaped module for the same key are accepted).
    """
    first_source, _, first = max(contributions, key=lambda c: len(c[2].weight_shape))  # a conv's 4-D shape wins
    shape = tuple(first.weight_shape)
    Us, Ds = [], []
    dense = None
    for source, weight, module in contributions:
        other = tuple(module.weight_shape)
        if not compatible_shapes(shape, other):
            raise AdapterFileError(
                source,
                f"module {key}: updates a weight of shape {other}, but {first_source} updates {shape}",
            )
        factors = module_factors(module, source, key, dtype)
        if factors is None:  # dense (full diff)
            part = module.unscaled_delta(dtype).reshape(module.weight_shape[0], -1) * (float(weight) * module.scale)
            dense = part if dense is None else dense + part
            continue
        U, D = factors
        c = float(weight) * module.scale
        # c·U·D with a power of two k moved from D to U so both factors get about the norm √(|c|‖U‖‖D‖): the
        # product is the same bit for bit (k is exact), and a concat written in fp16 / bf16 neither overflows nor
        # underflows where ΔW itself fits (c all in U could)
        u_norm, d_norm = float(torch.linalg.vector_norm(U)), float(torch.linalg.vector_norm(D))
        k = 1.0
        if c != 0.0 and u_norm > 0.0 and d_norm > 0.0 and math.isfinite(u_norm * d_norm):
            k = 2.0 ** round(0.5 * math.log2(d_norm / (abs(c) * u_norm)))
        Us.append(U * (c * k))
        Ds.append(D / k)
    out_dim, n = shape[0], math.prod(shape[1:])
    if not Us:
        Us, Ds = [torch.zeros(out_dim, 0, dtype=dtype)], [torch.zeros(0, n, dtype=dtype)]
    U = Us[0] if len(Us) == 1 else torch.cat(Us, dim=1)
    D = Ds[0] if len(Ds) == 1 else torch.cat(Ds, dim=0)
    return WeightedFactors(U=U, D=D, weight_shape=shape, dense=dense)


def factors_to_module(up2d: torch.Tensor, down2d: torch.Tensor, weight_shape: tuple[int, ...], dtype) -> LoraModule:
    """Matrix factors → :class:`LoraModule` (alpha None) shaped for a Linear or conv weight."""
    rank = down2d.shape[0]
    if len(weight_shape) == 4:
        up = up2d.reshape(weight_shape[0], rank, 1, 1)
        down = down2d.reshape(rank, *weight_shape[1:])
    else:
        up, down = up2d, down2d
    return LoraModule(down=down.to(dtype).contiguous(), up=up.to(dtype).contiguous(), alpha=None)


def product_frobenius_norm(P: torch.Tensor, Q: torch.Tensor) -> float:
    """‖P @ Q‖_F without forming the product (P: (m, k), Q: (k, n), k small).

    Computed in float64 as ‖R_P @ Q‖_F with ``P = Q_P R_P`` (thin QR), which avoids the
    cancellation of the Gram form tr(PᵀP · QQᵀ) when the product is tiny relative to its
    factors (e.g. the rounding error of a merge).
    """
    P = P.to(torch.float64)
    Q = Q.to(torch.float64)
    if P.shape[1] == 0:
        return 0.0
    if P.shape[0] > P.shape[1]:
        P = torch.linalg.qr(P, mode="r").R
    if Q.shape[1] > Q.shape[0]:
        # ‖P Q‖ = ‖P R_Qᵀ‖ with Qᵀ = Q_Q R_Q
        Q = torch.linalg.qr(Q.T, mode="r").R.T
    return float(torch.linalg.matrix_norm(P @ Q))
