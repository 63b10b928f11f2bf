"""Kronecker-structured SVD merge (``lcm_core/merge_kron.py``) against the dense Eckart–Young optimum.

Reference: ``torch.linalg.svd`` (float64) of the dense Σ λ_i ΔW_i, where each ΔW is the module's own
``delta_weight`` (``torch.kron`` of the factors; checked against ``lycoris.functional`` in
``tests/test_lycoris_formats.py``). The structured path must give the same singular values, the same
best rank-k matrix and the same error; where it does not apply it must say so (None) and the merge
must still be the optimum through the generic path.
"""
from __future__ import annotations

import math

import pytest
import torch

from lcm_lora.lcm_core.lora import LoraAdapter
from lcm_lora.lcm_core.lora.adapter import LoraModule
from lcm_lora.lcm_core.lora.lycoris_modules import FullModule, LohaModule, LokrModule
from lcm_lora.lcm_core.merge import merge_adapters
from lcm_lora.lcm_core.merge_kron import kron_error_sq, kron_matmul, kron_rerank

G = torch.Generator().manual_seed(0)


def _r(*shape, scale=0.3):
    return torch.randn(*shape, generator=G) * scale


def _lora(shape, rank, alpha=None, tucker=False):
    if len(shape) == 4 and tucker:
        return LoraModule(down=_r(rank, shape[1], 1, 1), up=_r(shape[0], rank, 1, 1), alpha=alpha,
                          mid=_r(rank, rank, *shape[2:]))
    if len(shape) == 4:
        return LoraModule(down=_r(rank, *shape[1:]), up=_r(shape[0], rank, 1, 1), alpha=alpha)
    return LoraModule(down=_r(rank, shape[1]), up=_r(shape[0], rank), alpha=alpha)


LOKRS = {  # (LoKr, shape of the weight it updates)
    "w1 whole, w2 = w2_a·w2_b (LyCORIS default)": lambda: LokrModule(w1=_r(8, 6), w2a=_r(12, 3), w2b=_r(3, 14), alpha=2.0),
    "w1 = w1_a·w1_b, w2 whole": lambda: LokrModule(w1a=_r(8, 2), w1b=_r(2, 6), w2=_r(12, 14), alpha=1.5),
    "both decomposed": lambda: LokrModule(w1a=_r(6, 2), w1b=_r(2, 8), w2a=_r(16, 3), w2b=_r(3, 10), alpha=3.0),
    "conv 3×3, w2_b flattened": lambda: LokrModule(w1=_r(4, 4), w2a=_r(16, 2), w2b=_r(2, 8 * 9),
                                                   shape=(64, 32, 3, 3), alpha=2.0),
    "conv 3×3, w1 = w1_a·w1_b, w2 whole 4-D": lambda: LokrModule(w1a=_r(4, 1), w1b=_r(1, 4), w2=_r(6, 8, 3, 3),
                                                                  alpha=1.0),
    "conv 3×3, Tucker w2": lambda: LokrModule(w1=_r(4, 4), w2a=_r(2, 16), w2b=_r(2, 8), t2=_r(2, 2, 3, 3), alpha=1.0),
}


def _dense(contributions):
    out = None
    for _, w, m in contributions:
        d = w * m.delta_weight(torch.float64).reshape(m.weight_shape[0], -1)
        out = d if out is None else out + d
    return out


def _check_optimal(res, dense, rank):
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    n = min(res.singular_values.numel(), s.numel())
    torch.testing.assert_close(res.singular_values[:n], s[:n], rtol=0, atol=1e-6 * float(s[0]))
    assert float(torch.cat([s[n:], s.new_zeros(1)]).abs().max()) <= 1e-6 * float(s[0])  # the structured core holds the whole rank
    got = res.up.double() @ res.down.double()
    assert float((got - best).norm() / best.norm()) < 1e-5
    optimum = math.sqrt(float((s[rank:] ** 2).sum()) / float((s ** 2).sum()))
    assert math.sqrt(res.error_sq / res.norm_sq) == pytest.approx(optimum, rel=1e-4, abs=1e-6)
    assert float((got - dense).norm() / dense.norm()) == pytest.approx(optimum, rel=1e-3, abs=2e-6)


@pytest.mark.parametrize("kind", list(LOKRS))
@pytest.mark.parametrize("with_lora", [0, 1, 2], ids=["alone", "one-lora", "two-loras"])
def test_structured_path_is_the_dense_optimum(kind, with_lora):
    lokr = LOKRS[kind]()
    shape = lokr.weight_shape
    contributions = [("style_lokr", -0.8 if with_lora == 2 else 0.8, lokr)]
    for i in range(with_lora):  # a LoCon for convs; the second LoRA of a conv is a Tucker LoRA (mid core)
        contributions.append((f"lora{i}", 1.0 - 0.4 * i, _lora(shape, 3 + i, alpha=2.0, tucker=i == 1)))
    rank = 5
    res = kron_rerank("k", contributions, rank=rank)
    assert res is not None, "the structured path must apply"
    _check_optimal(res, _dense(contributions), rank)


def test_kron_matmul_equals_torch_kron_both_contraction_orders():
    for a, i, c, j in ((3, 4, 20, 2), (20, 2, 3, 4), (5, 5, 5, 5)):
        A, B, X = _r(a, i), _r(c, j), _r(i * j, 7)
        torch.testing.assert_close(kron_matmul(A, B, X), torch.kron(A, B) @ X, rtol=1e-5, atol=1e-6)


def test_fallbacks_are_explicit_and_still_optimal():
    lokr = LOKRS["w1 whole, w2 = w2_a·w2_b (LyCORIS default)"]()
    shape = lokr.weight_shape  # (96, 84)
    loha = LohaModule(_r(96, 3), _r(3, 84), _r(96, 3), _r(3, 84), alpha=2.0)
    full = FullModule(diff=_r(*shape))
    wide_lora = _lora(shape, 80)  # LoKr rank 48 + 80 ≥ 84: the core would be as wide as the weight
    cases = {"loha + lora": [("a", 0.8, loha), ("b", 1.0, _lora(shape, 4))],
             "two lokrs": [("a", 0.8, lokr), ("b", 1.0, LOKRS["w1 whole, w2 = w2_a·w2_b (LyCORIS default)"]())],
             "lokr + full": [("a", 0.8, lokr), ("b", 1.0, full)],
             "core as wide as the weight": [("a", 0.8, lokr), ("b", 1.0, wide_lora)],
             "lora only": [("b", 1.0, _lora(shape, 4))]}
    for name, contributions in cases.items():
        assert kron_rerank("k", contributions, rank=5) is None, name
        adapters = [LoraAdapter(modules={"unet.x": m}, architecture="sd1") for _, _, m in contributions]
        _, report = merge_adapters(adapters, [w for _, w, _ in contributions], "svd", rank=5, progress=False)
        s = torch.linalg.svdvals(_dense(contributions))
        optimum = math.sqrt(float((s[5:] ** 2).sum()) / float((s ** 2).sum()))
        assert report.per_module["unet.x"] == pytest.approx(optimum, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_uses_the_structured_path_and_reports_the_stored_error(dtype):
    """End to end through ``merge_adapters``: the module is the optimum (float32) and, for float16 output,
    the reported error is the measured error of the stored factors (rounding included)."""
    lokr = LOKRS["conv 3×3, w2_b flattened"]()
    lora = _lora(lokr.weight_shape, 4, alpha=2.0)
    contributions = [("a", 0.7, lokr), ("b", 1.0, lora)]
    adapters = [LoraAdapter(modules={"unet.c": m}, architecture="sd1") for _, _, m in contributions]
    merged, report = merge_adapters(adapters, [0.7, 1.0], "svd", rank=6, progress=False, dtype=dtype)
    dense = _dense(contributions)
    mod = merged.modules["unet.c"]
    assert mod.up.dtype == dtype and tuple(mod.down.shape) == (6, 32, 3, 3)
    got = mod.delta_weight(torch.float64).reshape(dense.shape)
    measured = float((got - dense).norm() / dense.norm())
    assert report.per_module["unet.c"] == pytest.approx(measured, rel=1e-3, abs=2e-6)
    if dtype == torch.float32:
        s = torch.linalg.svdvals(dense)
        assert measured == pytest.approx(math.sqrt(float((s[6:] ** 2).sum()) / float((s ** 2).sum())), rel=1e-3)


def test_lora_inside_the_lokr_span_is_reorthogonalised():
    """A LoRA whose factors lie (almost) in the LoKr's column/row spaces: one Gram–Schmidt pass cancels
    all but 1e-4 of each column, so the second pass runs; the result must still be the optimum."""
    lokr = LOKRS["w1 whole, w2 = w2_a·w2_b (LyCORIS default)"]()
    (p1, q1), (p2, q2) = lokr.w1_factors(torch.float32), lokr.w2_factors(torch.float32)
    up = torch.kron(p1, p2) @ _r(p1.shape[1] * p2.shape[1], 4) + 1e-4 * _r(96, 4)
    down = _r(4, q1.shape[0] * q2.shape[0]) @ torch.kron(q1, q2) + 1e-4 * _r(4, 84)
    contributions = [("a", 1.0, lokr), ("b", -1.0, LoraModule(down=down, up=up))]
    res = kron_rerank("k", contributions, rank=5)
    assert res is not None
    _check_optimal(res, _dense(contributions), 5)


def test_stored_error_from_inner_products_equals_the_dense_error():
    """``kron_error_sq`` (the fp16/bf16 stored-factor error without stacking) against the dense norm; when
    the error is below float64's reach for the Gram form it returns None (the caller measures it by QR)."""
    lokr = LOKRS["conv 3×3, Tucker w2"]()
    contributions = [("a", 0.7, lokr), ("b", -1.0, _lora(lokr.weight_shape, 3, alpha=2.0, tucker=True))]
    dense = _dense(contributions)
    exact = kron_rerank("k", contributions, rank=10_000)
    for noise in (1e-3, 1e-1):
        up = exact.up * (1 + noise * _r(*exact.up.shape, scale=1.0))
        err = kron_error_sq("k", contributions, up, exact.down)
        assert err == pytest.approx(float((dense - up.double() @ exact.down.double()).norm()) ** 2, rel=1e-6)
    assert kron_error_sq("k", contributions, exact.up, exact.down) is None  # float32-exact: ~1e-14 of ‖ΔW‖²
