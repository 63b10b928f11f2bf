"""Re-rank a stacked low-rank product U @ D to its best rank-r approximation, factor form only.

Eckart–Young: the best rank-r approximation of ΔW in Frobenius norm is its truncated SVD.
kohya ``networks/svd_merge_lora.py`` and peft ``add_weighted_adapter(combination_type="svd")``
form the dense ΔW (out × in·kh·kw) and run a full ``torch.linalg.svd`` on it. Here ΔW is
already a product of two thin factors (rank R = Σ r_i), so

    U = Q_u R_u,  Dᵀ = Q_d R_d        (thin QR, O((out + in)·R²))
    ΔW = Q_u (R_u R_dᵀ) Q_dᵀ          (the core R_u R_dᵀ is at most R × R)
    core = Uc S Vcᵀ                   (SVD of the small core, float64)
    ΔW_r = (Q_u Uc_r √S_r) (√S_r Vc_rᵀ Q_dᵀ)

gives the same singular values / vectors as the dense SVD at a fraction of the cost, and the
error is free: ‖ΔW − ΔW_r‖_F² = Σ_{j>r} σ_j². The singular values are split evenly (√S on
each side); kohya and peft put all of S into ``up`` — ΔW is identical, the balanced split just
keeps both factors in a similar range when they are stored as fp16/bf16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass
class SvdRerank:
    up: torch.Tensor  # (out, r)
    down: torch.Tensor  # (r, in·kh·kw)
    rank: int
    error_sq: float  # ‖ΔW − ΔW_r‖_F² in exact arithmetic of the core (Σ discarded σ²)
    norm_sq: float  # ‖ΔW‖_F² (Σ σ²)
    singular_values: torch.Tensor  # all σ of ΔW (float64, descending)


def choose_rank(singular_values: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Target rank: ``rank`` (capped at the available rank), or the smallest r keeping the
    fraction ``energy`` of Σ σ², or the smaller of both when both are given; at least 1."""
    available = int(singular_values.numel())
    r = available if rank is None else min(int(rank), available)
    if energy is not None:
        sq = singular_values.to(torch.float64) ** 2
        total = float(sq.sum())
        if total > 0.0:
            cum = torch.cumsum(sq, 0)
            need = torch.tensor([energy * total], dtype=torch.float64)
            r_energy = int(torch.searchsorted(cum, need)[0]) + 1
            r = min(r, r_energy)
        else:
            r = min(r, 1)
    return max(1, min(r, available))


CANCELLATION_TOLERANCE = 1e-5  # the float32 QRs' relative rounding bound above which they are redone in float64


def _qr_core(U: torch.Tensor, D: torch.Tensor):
    q_u, r_u = torch.linalg.qr(U)  # (out, k_u), (k_u, R)
    q_d, r_d = torch.linalg.qr(D.T)  # (n, k_d), (k_d, R)
    return q_u, r_u, q_d, r_d, r_u.to(torch.float64) @ r_d.to(torch.float64).T  # core (k_u, k_d)


def _rounding_bound(U: torch.Tensor, D: torch.Tensor, core: torch.Tensor) -> float:
    """Relative rounding of the QRs in U's dtype: eps · ‖U‖_F‖D‖_F / ‖U D‖_F (‖U D‖_F = ‖core‖_F)."""
    norm = float(torch.linalg.matrix_norm(core))
    scale = float(torch.linalg.vector_norm(U)) * float(torch.linalg.vector_norm(D))  # a bound: U's dtype is enough
    return math.inf if norm == 0.0 and scale > 0.0 else (0.0 if norm == 0.0 else torch.finfo(U.dtype).eps * scale / norm)


def svd_rerank(U: torch.Tensor, D: torch.Tensor, rank: int | None = None, energy: float | None = None) -> SvdRerank:
    """Best rank-r factors of ``U @ D`` (U: (out, R), D: (R, n)) without forming ``U @ D``.

    Works in ``U.dtype`` for the QRs (float32 normally) and float64 for the core SVD. The QRs' rounding is
    ≈ eps·‖U‖_F‖D‖_F, which is small against ‖U D‖_F unless the weighted inputs nearly cancel (e.g. A − A′ with
    A′ ≈ A): then they are redone in float64 (2–3× the QR time, so only then), else the error reported from the
    discarded σ would miss the rounding (measured: true 2e-3 reported as 0).
    Handles R > min(out, n), rank-deficient and all-zero products (σ = 0 gives zero factors).
    """
    q_u, r_u, q_d, r_d, core = _qr_core(U, D)
    if not torch.isfinite(core).all():  # weights so large that w·ΔW overflowed float32 in the factors
        raise ConfigError("svd merge", "the weighted factors hold Inf or NaN (weights too large for float32): lower them")
    if U.dtype != torch.float64 and _rounding_bound(U, D, core) > CANCELLATION_TOLERANCE:
        q_u, r_u, q_d, r_d, core = _qr_core(U.to(torch.float64), D.to(torch.float64))
    uc, s, vch = torch.linalg.svd(core, full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    up = q_u @ (uc[:, :r] * root).to(q_u.dtype)
    down = (root[:, None] * vch[:r]).to(q_d.dtype) @ q_d.T
    sq = s * s
    return SvdRerank(
        up=up,
        down=down,
        rank=r,
        error_sq=float(sq[r:].sum()),
        norm_sq=float(sq.sum()),
        singular_values=s,
    )


def svd_dense(M: torch.Tensor, rank: int | None = None, energy: float | None = None) -> SvdRerank:
    """Best rank-r factors of a dense matrix (full-rank parts: LyCORIS full diffs, or stacked
    factors whose rank reaches min(out, in), where the factor form saves nothing)."""
    u, s, vh = torch.linalg.svd(M.to(torch.float64), full_matrices=False)
    r = choose_rank(s, rank, energy)
    root = s[:r].sqrt()
    sq = s * s
    return SvdRerank(up=(u[:, :r] * root).to(M.dtype), down=(root[:, None] * vh[:r]).to(M.dtype), rank=r,
                     error_sq=float(sq[r:].sum()), norm_sq=float(sq.sum()), singular_values=s)
