"""Best rank-r approximation of λ·LoKr + Σ LoRA without any out × R basis (Kronecker structure).

A LoKr is K = c · W1 ⊗ W2 (LyCORIS §3.2). With small SVDs W1 = U1 S1 V1ᵀ, W2 = U2 S2 V2ᵀ the
mixed-product rule gives K's SVD for free (Van Loan, "The ubiquitous Kronecker product", §2):

    K = c · (U1 ⊗ U2) (S1 ⊗ S2) (V1 ⊗ V2)ᵀ,     U1 ⊗ U2 and V1 ⊗ V2 orthonormal.

A LoRA sum L = U_L D_L (rank r) is split against these bases, U_L = (U1 ⊗ U2) X + Q_e R_e
(projection, block Gram–Schmidt, reorthogonalised when cancellation is large; thin QR of the
residual only: out × r, as for a plain LoRA), D_Lᵀ = (V1 ⊗ V2) Y + Q_f R_f. Then

    K + L = [U1⊗U2, Q_e] · M · [V1⊗V2, Q_f]ᵀ,   M = [[c·S1⊗S2, 0], [0, 0]] + [X; R_e] [Y; R_f]ᵀ

with both bases orthonormal, so the singular values and vectors of the small core M (float64, from
the eigenpairs of M Mᵀ: :func:`core_eigh`) are exactly those of K + L (Eckart–Young, as
:mod:`.merge_svd`). Every product with A ⊗ B is two small matmuls on a reshaped operand
((A ⊗ B) vec(X) = vec(B X Aᵀ)); the out × R Kronecker basis that :meth:`LokrModule.matrix_factors`
would stack is never formed.

Applies to one LoKr plus any number of LoRA/LoCon/Tucker-LoRA modules at a key; anything else
(LoHa, two LoKrs, full diffs, a core as wide as the weight) returns None and takes the generic path.
"""
from __future__ import annotations

import torch

from .lora.adapter import LoraModule
from .lora.lycoris_modules import LokrModule
from .merge_factors import module_factors
from .merge_svd import SvdRerank, choose_rank


def kron_matmul(A: torch.Tensor, B: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """(A ⊗ B) @ X without forming A ⊗ B (torch.kron's index order: rows (a, c), X rows (i, j))."""
    (a, i), (c, j), r = A.shape, B.shape, X.shape[1]
    X = X.reshape(i, j, r)
    if a * i * j + a * c * j <= i * c * j + a * i * c:  # contract A first (fewer multiplications)
        Y = (A @ X.reshape(i, j * r)).reshape(a, j, r)
        return torch.matmul(B, Y).reshape(a * c, r)
    Y = torch.matmul(B, X)  # (i, c, r)
    return (A @ Y.reshape(i, c * r)).reshape(a * c, r)


def factor_svd(P: torch.Tensor, Q: torch.Tensor):
    """(U, s, V) with P @ Q = U diag(s) Vᵀ, U and V orthonormal (thin QRs of P and Qᵀ + core SVD, float64)."""
    qp, rp = torch.linalg.qr(P.to(torch.float64))
    qq, rq = torch.linalg.qr(Q.to(torch.float64).T)
    u, s, vh = torch.linalg.svd(rp @ rq.T, full_matrices=False)
    return qp @ u, s, qq @ vh.T


def core_eigh(diag: torch.Tensor, left: torch.Tensor, right: torch.Tensor):
    """Eigenpairs (descending, λ = σ² clamped ≥ 0) of the Gram C Cᵀ of C = Δ + left·rightᵀ, with
    Δ = diag(``diag``) in the top-left corner (float64); returns (λ, eigenvectors).

    The left singular vectors of C are the Gram's eigenvectors; a symmetric eigensolver costs about
    half a dense SVD (LAPACK syevd vs gesdd; BENCHMARKS.md). The Gram is assembled from the factors,
    C Cᵀ = Δ² + P·leftᵀ + left·(rightᵀright·leftᵀ + Pᵀ) with P = Δ·right (no n³ product). Squaring
    adds no error that matters here: in float64 each λ is accurate to ~n·ε·σ₁² (the smallest,
    discarded σ to ~√(n·ε)·σ₁ ≈ 2e-7·σ₁), far below the merge's float32 rounding.
    """
    k = diag.numel()
    p = torch.zeros_like(left)
    p[:k] = diag[:, None] * right[:k]
    gram = p @ left.T + left @ (right.T @ right @ left.T + p.T)
    gram.diagonal()[:k] += diag * diag
    lam, vec = torch.linalg.eigh(gram)
    return lam.flip(0).clamp_min(0.0), vec.flip(1)


def core_rows(vec: torch.Tensor, diag: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """vecᵀ C for C = Δ + left·rightᵀ (Δ as in :func:`core_eigh`), without forming C."""
    k = diag.numel()
    out = (vec.T @ left) @ right.T
    out[:, :k] += vec[:k].T * diag
    return out


def _split(A: torch.Tensor, B: torch.Tensor, U: torch.Tensor):
    """U = (A ⊗ B) X + Q R with Q ⟂ A ⊗ B (orthonormal A, B): block classical Gram–Schmidt, a
    second pass when a column lost more than half its norm (Kahan's "twice is enough", Parlett,
    The Symmetric Eigenvalue Problem, §6-9)."""
    X = kron_matmul(A.T, B.T, U)
    E = U - kron_matmul(A, B, X)
    if bool((E.norm(dim=0) < 0.5 * U.norm(dim=0)).any()):
        X2 = kron_matmul(A.T, B.T, E)
        E = E - kron_matmul(A, B, X2)
        X = X + X2
    Q, R = torch.linalg.qr(E)
    return X, Q, R


def _parts(key: str, contributions, dtype):
    """(λ·scale of the LoKr, the LoKr, U_L, D_L) with L = U_L D_L the weighted LoRA sum; None unless exactly
    one module is a (non-DoRA) LoKr and the rest are LoRA modules of the same matrix shape."""
    lokrs = [c for c in contributions if isinstance(c[2], LokrModule)]
    if len(lokrs) != 1 or lokrs[0][2].dora_scale is not None:
        return None
    _, weight, lokr = lokrs[0]
    out_dim, n = lokr.matrix_shape()
    Us, Ds = [torch.zeros(out_dim, 0, dtype=dtype)], [torch.zeros(0, n, dtype=dtype)]
    for src, w, m in contributions:
        if m is lokr:
            continue
        if not isinstance(m, LoraModule):
            return None
        U, D = module_factors(m, src, key, dtype)
        if U.shape[0] != out_dim or D.shape[1] != n:
            return None  # not the same matrix view: the generic path names the problem
        Us.append(U * (float(w) * m.scale))
        Ds.append(D)
    return float(weight) * lokr.scale, lokr, torch.cat(Us, 1), torch.cat(Ds, 0)


def kron_rerank(key: str, contributions, rank: int | None = None, energy: float | None = None,
                dtype: torch.dtype = torch.float32) -> SvdRerank | None:
    """Best rank-r factors of Σ λ_i ΔW_i for ``(source, λ_i, module_i)`` when exactly one module is a
    (non-DoRA) LoKr and the rest are LoRA modules; None when the structured path does not apply."""
    parts = _parts(key, contributions, dtype)
    if parts is None:
        return None
    c, lokr, U_l, D_l = parts
    out_dim, n = lokr.matrix_shape()
    r_l = int(U_l.shape[1])
    u1, s1, v1 = factor_svd(*lokr.w1_factors(dtype))
    u2, s2, v2 = factor_svd(*lokr.w2_factors(dtype))
    k = int(s1.numel() * s2.numel())
    if r_l and k + r_l >= min(out_dim, n):  # the core would be as large as the weight: nothing to gain
        return None
    diag = torch.kron(s1, s2) * c
    A1, A2, B1, B2 = (t.to(dtype) for t in (u1, u2, v1, v2))
    if r_l:
        X, q_e, r_e = _split(A1, A2, U_l)
        Y, q_f, r_f = _split(B1, B2, D_l.T)
        left = torch.cat([X, r_e]).to(torch.float64)
        right = torch.cat([Y, r_f]).to(torch.float64)
        lam, vec = core_eigh(diag, left, right)
        s = lam.sqrt()
        r = choose_rank(s, rank, energy)
        root = s[:r].sqrt()
        g = (vec[:, :r] * root).to(dtype)  # (k + r_e, r): U_r √S
        w = core_rows(vec[:, :r], diag, left, right)  # (r, k + r_f) = S_r V_rᵀ
        h = (w.T * torch.where(root > 0, 1.0 / root, 0.0)).to(dtype)  # V_r √S
    else:  # a LoKr alone: the core is diagonal, its SVD is a sort
        q_e = torch.zeros(out_dim, 0, dtype=dtype)
        q_f = torch.zeros(n, 0, dtype=dtype)
        s, order = diag.abs().sort(descending=True)
        r = choose_rank(s, rank, energy)
        root = s[:r].sqrt()
        sign = torch.where(diag[order[:r]] < 0, -1.0, 1.0).to(torch.float64)
        g = torch.zeros(k, r, dtype=torch.float64)
        h = torch.zeros(k, r, dtype=torch.float64)
        g[order[:r], torch.arange(r)] = root * sign
        h[order[:r], torch.arange(r)] = root
        g, h = g.to(dtype), h.to(dtype)
    up = kron_matmul(A1, A2, g[:k]) + q_e @ g[k:]
    down = (kron_matmul(B1, B2, h[:k]) + q_f @ h[k:]).T
    sq = s * s
    return SvdRerank(up=up, down=down.contiguous(), rank=r, error_sq=float(sq[r:].sum()), norm_sq=float(sq.sum()),
                     singular_values=s)


def kron_error_sq(key: str, contributions, up: torch.Tensor, down: torch.Tensor) -> float | None:
    """‖Σ λ_i ΔW_i − up @ down‖_F² for the contributions :func:`kron_rerank` takes (the error of factors
    stored in float16/bfloat16), from inner products of the factors in float64:

        ‖K + L − S‖² = ‖K‖² + ‖L‖² + ‖S‖² + 2⟨K, L⟩ − 2⟨K, S⟩ − 2⟨L, S⟩,
        ⟨K, F G⟩ = Σ_i c·σ_i · (U_Kᵀ F)_i · (V_Kᵀ Gᵀ)_i  (K's SVD from the factors, as above),

    with no out × R QR. None when the result is below 1e-8 of the terms (float64 cancellation would
    show): the caller then measures it from the stacked factors.
    """
    f64 = torch.float64
    c, lokr, U_l, D_l = _parts(key, contributions, f64)
    u1, s1, v1 = factor_svd(*lokr.w1_factors(f64))
    u2, s2, v2 = factor_svd(*lokr.w2_factors(f64))
    diag = torch.kron(s1, s2) * c
    S_u, S_d = up.to(f64), down.to(f64)

    def k_inner(F, G):  # ⟨K, F G⟩
        return float((diag[:, None] * kron_matmul(u1.T, u2.T, F) * kron_matmul(v1.T, v2.T, G.T)).sum())

    def lr_inner(F1, G1, F2, G2):  # ⟨F1 G1, F2 G2⟩
        return float(((F1.T @ F2) * (G1 @ G2.T)).sum())

    k_sq, l_sq, s_sq = float((diag * diag).sum()), lr_inner(U_l, D_l, U_l, D_l), lr_inner(S_u, S_d, S_u, S_d)
    err = k_sq + l_sq + s_sq + 2 * (k_inner(U_l, D_l) - k_inner(S_u, S_d) - lr_inner(U_l, D_l, S_u, S_d))
    return err if err > 1e-8 * (k_sq + l_sq + s_sq) else None
