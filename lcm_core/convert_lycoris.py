"""LyCORIS (LoHa, LoKr, full diff) and DoRA/OFT adapters → a plain LoRA, by the best rank-r
approximation (Eckart–Young) of each module's ΔW.

LoHa and LoKr are never formed densely: their ΔW is an exact product of thin factors
(:meth:`LohaModule.matrix_factors`: face-splitting product, rank r1·r2;
:meth:`LokrModule.matrix_factors`: kron(P1, P2) @ kron(Q1, Q2)), re-ranked by the QR + small-core
SVD of :mod:`.merge_svd` (a LoKr: its SVD straight from the factors' SVDs, :mod:`.merge_kron`);
only full diffs (and factor forms as wide as the weight) take a
dense SVD. The relative Frobenius error per module is the discarded singular-value energy.

Multiplicative modules (DoRA, OFT, BOFT) have no ΔW of their own: given the base weights
(``base``: canonical key → weight) their effective update θ'(θ) − θ at strength 1 is computed
(as ComfyUI applies them to an unpatched weight) and re-ranked densely. That LoRA reproduces
the module at strength 1 only: DoRA/OFT are not linear in the strength.
"""
from __future__ import annotations

import torch

from .errors import AdapterFileError, ConfigError
from .lora.adapter import LoraAdapter, LoraModule
from .lora.lycoris_modules import ALGO_NAMES, FullModule, algo_of
from .merge_factors import multiplicative_problem


def needs_conversion(module) -> bool:
    return not isinstance(module, LoraModule) or module.dora_scale is not None


def effective_full(adapter: LoraAdapter, base: dict, source, strength: float = 1.0) -> LoraAdapter:
    """Copy of ``adapter`` whose multiplicative modules are replaced by the full diff they cause on
    ``base`` at ``strength`` (divided by the strength, so that weight ``strength`` restores it)."""
    modules = {}
    for key, m in adapter.modules.items():
        if getattr(m, "multiplicative", False):
            if key not in base:
                raise AdapterFileError(source, f"module {key}: no base weight for it in the --base checkpoint")
            w = base[key].to(torch.float32)
            want = tuple(m.weight_shape)
            if w.shape[0] != want[0] or (-1 not in want and w.numel() != torch.Size(want).numel()):
                raise AdapterFileError(source, f"module {key}: update {want} does not fit the base weight "
                                               f"{tuple(w.shape)} (wrong --base checkpoint?)")
            diff = (m.apply_to(w.clone(), float(strength)) - w) / (float(strength) or 1.0)
            m = FullModule(diff=diff.contiguous())
        modules[key] = m
    return LoraAdapter(modules=modules, metadata=dict(adapter.metadata), source_format=adapter.source_format,
                       architecture=adapter.architecture)


def fold_tucker(adapter: LoraAdapter) -> tuple[LoraAdapter, int]:
    """``(adapter, count)`` with every Tucker LoCon module (``lora_mid``) folded into an ordinary conv LoRA of the
    same rank, exactly: down' = mid ∘ down, (r, in, kh, kw), ΔW = up · down' (diffusers / peft hold no ``lora_mid``)."""
    modules, count = {}, 0
    for key, m in adapter.modules.items():
        if isinstance(m, LoraModule) and m.mid is not None:
            down = torch.einsum("abhw,bi->aihw", m.mid.to(torch.float32),
                                m.down.to(torch.float32).reshape(m.rank, -1)).to(m.down.dtype)
            m = LoraModule(down=down, up=m.up, alpha=m.alpha, dora_scale=m.dora_scale)
            count += 1
        modules[key] = m
    if not count:
        return adapter, 0
    return LoraAdapter(modules=modules, metadata=dict(adapter.metadata), source_format=adapter.source_format,
                       architecture=adapter.architecture), count


def to_plain_lora(adapter: LoraAdapter, source, *, rank: int | None = None, energy: float | None = None,
                  base: dict | None = None, progress: bool = True):
    """``(plain LoRA adapter, report or None, notes)``: LoRA modules pass through unchanged; every
    other module is replaced by its best rank-``rank`` (or ``energy``) LoRA."""
    from .merge import merge_adapters

    other = {k: m for k, m in adapter.modules.items() if needs_conversion(m)}
    if not other:
        return adapter, None, []
    algos = sorted({algo_of(m) for m in other.values()})
    label = ", ".join(ALGO_NAMES.get(a, a.replace("+dora", " + DoRA")) for a in algos)
    if rank is None and energy is None:
        raise ConfigError(source, f"{len(other)} module(s) are not plain LoRA ({label}): converting them is an SVD "
                                  "to a chosen size; pass --rank N or --energy F (e.g. --rank 32)")
    mult = [k for k, m in other.items() if getattr(m, "multiplicative", False)]
    if mult and base is None:
        raise AdapterFileError(source, multiplicative_problem(mult[0], other[mult[0]]))
    sub = LoraAdapter(modules=other, metadata={}, architecture=adapter.architecture)
    if mult:
        sub = effective_full(sub, base, source)
    merged, report = merge_adapters([sub], [1.0], method="svd", rank=rank, energy=energy, progress=progress,
                                    names=[str(source)])
    notes = list(report.notes)  # e.g. bias diffs (diff_b) a LoRA cannot hold
    modules = {k: (merged.modules[k] if k in other else m) for k, m in adapter.modules.items()}
    out = LoraAdapter(modules=modules, metadata=dict(adapter.metadata), source_format=adapter.source_format,
                      architecture=adapter.architecture)
    return out, report, notes
