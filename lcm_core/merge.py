"""Weighted merge of N LoRA adapters: τ' = Σ λ_i τ_i (LCM-LoRA report, arXiv 2311.05556,
"LCM-LoRA as universal acceleration module": τ'_LCM = λ1 τ' + λ2 τ_LCM, a style LoRA plus the
LCM-LoRA combined without further training).

Methods (per module key, over the adapters that contain it; weights may be negative):

* ``concat`` — exact: ``up = [λ_1 s_1 up_1, …]``, ``down = [down_1; …]``, rank Σ r_i
  (peft ``add_weighted_adapter(combination_type="cat")``; s_i = alpha_i / r_i folded in).
* ``svd`` — best rank-r approximation (Eckart–Young) of the exact sum, computed from the
  stacked factors (QR + SVD of a small core, :mod:`.merge_svd`; one LoKr plus LoRAs at a key:
  Kronecker-structured bases, :mod:`.merge_kron`), never the dense ΔW
  (kohya ``networks/svd_merge_lora.py`` / peft ``combination_type="svd"`` form ΔW densely).
  ``rank`` (default: the largest input rank at that module) and/or ``energy`` (keep the
  smallest r with Σ_{j≤r} σ_j² ≥ energy · Σ σ_j²).

The output adapter has ``alpha=None`` (scale 1; every alpha/rank folded into the factors) and
records the recipe as JSON in ``metadata["lcm_lora.merge_recipe"]``. Baking adapters into base
weights instead is :mod:`.fuse`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import torch

from .errors import AdapterFileError, ConfigError
from .lora.adapter import LoraAdapter, LoraModule
from .lora.metadata import BASE_ARCHITECTURE_KEY
from .lora.validate import FLOAT32_MAX
from .merge_factors import factors_to_module, product_frobenius_norm, stack_weighted
from .merge_kron import kron_error_sq, kron_rerank
from .merge_svd import svd_dense, svd_rerank
from .sampling_recipe import merged_recipe

METHODS = ("concat", "svd")
RECIPE_METADATA_KEY = "lcm_lora.merge_recipe"
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class MergeReport:
    """What a merge did and how far the result is from the exact weighted sum.

    ``per_module[key]`` = ‖ΔW_merged − Σ λ_i ΔW_i‖_F / ‖Σ λ_i ΔW_i‖_F (0 when both are 0),
    computed from factors. For float32/float64 outputs it is the error of the merge itself
    (concat: 0; svd: √(Σ discarded σ²) / √(Σ σ²)), with the final float32 rounding (~1e-7)
    not resolved; for float16/bfloat16 outputs it is the exact error of the stored factors,
    rounding included. ``total_relative_error`` = √(Σ err²) / √(Σ ‖ΔW‖²) over all modules.
    """

    method: str
    rank: int | None
    energy: float | None
    names: list[str]
    weights: list[float]
    output_dtype: str
    per_module: dict[str, float] = field(default_factory=dict)
    per_module_rank: dict[str, int] = field(default_factory=dict)
    partial_modules: list[str] = field(default_factory=list)  # keys missing from some adapters
    sampling_objective: str | None = None  # the sampling recipe the output keeps (``merged_recipe``), if any input records one
    notes: list[str] = field(default_factory=list)  # e.g. inputs recording different sampling recipes
    total_relative_error: float = 0.0
    seconds: float = 0.0
    _abs_error_sq: float = field(default=0.0, repr=False)
    _norm_sq: float = field(default=0.0, repr=False)

    def summary(self) -> dict:
        """JSON-serialisable summary (for ``lcm-lora merge --json`` and node output)."""
        ranks = list(self.per_module_rank.values())
        worst = sorted(self.per_module.items(), key=lambda kv: kv[1], reverse=True)[:5]
        return {
            "method": self.method,
            "rank": self.rank,
            "energy": self.energy,
            "inputs": [{"name": n, "weight": w} for n, w in zip(self.names, self.weights)],
            "output_dtype": self.output_dtype,
            "modules": len(self.per_module),
            "partial_modules": len(self.partial_modules),
            "output_rank_min": min(ranks) if ranks else None,
            "output_rank_max": max(ranks) if ranks else None,
            "total_relative_error": self.total_relative_error,
            "max_module_relative_error": worst[0][1] if worst else 0.0,
            "worst_modules": [{"module": k, "relative_error": v} for k, v in worst],
            "sampling_objective": self.sampling_objective,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


def _kept_metadata(adapters, names, report: MergeReport) -> dict[str, str]:
    """Input metadata the merged file keeps: the sampling recipe (``merged_recipe``: without it the loader's ``auto``
    would sample a merged TCD / PCM adapter as LCM) and ``lcm_lora.base_architecture`` when the inputs that record it
    agree (``custom`` tells the reader a trainer-written adapter of a model of its own from a damaged file)."""
    metadatas = [a.metadata or {} for a in adapters]
    recipe, note = merged_recipe(metadatas, names)
    kept = {}
    if recipe is not None:
        kept.update(recipe.to_metadata())
        report.sampling_objective = recipe.objective
    if note:
        report.notes.append(note)
    archs = {md[BASE_ARCHITECTURE_KEY] for md in metadatas if md.get(BASE_ARCHITECTURE_KEY)}
    if len(archs) == 1:
        kept[BASE_ARCHITECTURE_KEY] = archs.pop()
    return kept


def _validate(adapters, weights, method, rank, energy, names):
    if method not in METHODS:
        raise ConfigError("merge", f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not adapters:
        raise ConfigError("merge", "no adapters to merge")
    if len(weights) != len(adapters):
        raise ConfigError("merge", f"{len(adapters)} adapters but {len(weights)} weights")
    for name, w in zip(names, weights):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(float(w)):
            raise ConfigError(name, f"merge weight must be a finite number, got {w!r}")
        if abs(float(w)) > FLOAT32_MAX:  # the factors are float32: w·ΔW would be Inf
            raise ConfigError(name, f"merge weight {w!r} is beyond float32's range (|w| ≤ {FLOAT32_MAX:.3g})")
    if method == "concat" and (rank is not None or energy is not None):
        raise ConfigError("merge", "rank/energy apply to method 'svd' only ('concat' is exact, rank Σ r_i)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError("merge", f"rank must be a positive integer, got {rank!r}")
    if energy is not None and not (isinstance(energy, (int, float)) and 0.0 < float(energy) <= 1.0):
        raise ConfigError("merge", f"energy must be in (0, 1], got {energy!r}")
    for name, adapter in zip(names, adapters):
        if not isinstance(adapter, LoraAdapter):
            raise ConfigError(name, f"expected a LoraAdapter, got {type(adapter).__name__}")
    if all(len(a) == 0 for a in adapters):
        raise ConfigError("merge", "the adapters contain no LoRA modules")


def _check_architectures(adapters, names) -> str | None:
    """All adapters must fit one architecture (``adapter.architecture``, else the detection's
    candidate set: a partial SDXL-family adapter cannot be merged with an SD1 one)."""
    from .lora.architecture import detect_adapter_architecture, require_same_architecture

    found = [(n, a.architecture if a.architecture not in (None, "unknown") else detect_adapter_architecture(a))
             for n, a in zip(names, adapters)]
    return require_same_architecture(found)


def _default_rank(contributions) -> int:
    """svd without rank/energy: the largest plain-LoRA input rank at this module (LyCORIS ranks are
    not LoRA ranks: a LoKr's Kronecker product may have full rank), else the largest nominal rank."""
    plain = [m.rank for _, _, m in contributions if isinstance(m, LoraModule)]
    return max(plain) if plain else max(m.rank for _, _, m in contributions)


def _check_module_types(adapters, names, method) -> None:
    """concat stacks LoRA factors: it cannot hold LoHa / LoKr / full modules; no merge can hold a
    multiplicative module (DoRA / OFT) without base weights. Named per file, before any work."""
    from .lora.lycoris_modules import ALGO_NAMES, algo_of
    from .merge_factors import multiplicative_problem

    for name, adapter in zip(names, adapters):
        for key, m in adapter.modules.items():
            if getattr(m, "multiplicative", False):
                raise AdapterFileError(name, multiplicative_problem(key, m))
            if method == "concat" and not isinstance(m, LoraModule):
                what = ALGO_NAMES.get(algo_of(m), algo_of(m))
                raise AdapterFileError(name, f"module {key}: a {what} module cannot be expressed by method 'concat' "
                                             "(which stacks LoRA factors exactly); use method 'svd' (best rank-r "
                                             "approximation, error reported) or 'fuse' (bake into the weights)")


def _check_shapes_agree(adapters, names) -> None:
    """A module key must update the same weight shape in every adapter (checked before any progress line)."""
    from .merge_factors import compatible_shapes

    first: dict[str, tuple] = {}
    for name, adapter in zip(names, adapters):
        for key, m in adapter.modules.items():
            shape = tuple(m.weight_shape)
            if key not in first:
                first[key] = (name, shape)
            elif -1 not in shape and -1 not in first[key][1] and not compatible_shapes(first[key][1], shape):
                raise AdapterFileError(name, f"module {key}: updates a weight of shape {shape}, but "
                                             f"{first[key][0]} updates {first[key][1]}")


def _output_dtype(adapters, dtype):
    if dtype is not None:
        return dtype
    out = None
    for a in adapters:
        for d in a.dtypes():
            if d.is_floating_point and d.itemsize == 1:  # float8 has no promotion rules; float16 holds it exactly
                d = torch.float16
            out = d if out is None else torch.promote_types(out, d)
    return out or torch.float32


def merge_adapters(
    adapters: list[LoraAdapter],
    weights: list[float],
    method: str = "concat",
    rank: int | None = None,
    energy: float | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    names: list[str] | None = None,
) -> tuple[LoraAdapter, MergeReport]:
    """Merge ``adapters`` with ``weights`` (λ_i, may be negative) into one adapter.

    ``dtype``: output tensor dtype (default: the promoted input dtype); all arithmetic is
    float32 (float64 for the SVD core). ``names`` label the inputs in errors and the recipe
    (default ``adapter 1``, ``adapter 2``, …). Raises :class:`ConfigError` for bad arguments,
    :class:`ArchitectureMismatchError` when the adapters cannot share one architecture (known or candidate sets), and
    :class:`AdapterFileError` when one module key updates differently shaped weights.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    names = list(names) if names is not None else [f"adapter {i + 1}" for i in range(len(adapters))]
    if len(names) != len(adapters):
        raise ConfigError("merge", f"{len(adapters)} adapters but {len(names)} names")
    weights = list(weights)
    _validate(adapters, weights, method, rank, energy, names)
    architecture = _check_architectures(adapters, names)
    _check_module_types(adapters, names, method)  # before any progress line
    _check_shapes_agree(adapters, names)
    out_dtype = _output_dtype(adapters, dtype)
    check_stored = out_dtype in _LOW_PRECISION

    keys: dict[str, None] = {}
    for a in adapters:
        keys.update(dict.fromkeys(a.modules))
    report = MergeReport(
        method=method, rank=rank, energy=None if energy is None else float(energy), names=names,
        weights=[float(w) for w in weights], output_dtype=str(out_dtype).replace("torch.", ""),
    )
    with_bias = [f"{n}: {k}" for n, a in zip(names, adapters) for k, m in a.modules.items()
                 if getattr(m, "diff_b", None) is not None]
    if with_bias:  # full-module diffs (LyCORIS "full") may carry one; the merged LoRA factors cannot
        report.notes.append(f"{len(with_bias)} bias diff(s) (diff_b) cannot be held by a LoRA and were left out, "
                            f"e.g. {with_bias[0]}; `lcm-lora fuse` applies them")
    merged: dict[str, LoraModule] = {}
    for key in tqdm(keys, desc=f"merge ({method})", unit="module", disable=not progress):
        contributions = [(n, float(w), a.modules[key]) for n, w, a in zip(names, weights, adapters) if key in a.modules]
        if len(contributions) < len(adapters):
            report.partial_modules.append(key)
        target = rank if rank is not None or energy is not None else _default_rank(contributions)
        res = kron_rerank(key, contributions, rank=target, energy=energy) if method == "svd" else None
        stacked = stack_weighted(key, contributions) if res is None else None  # LoKr + LoRAs: not needed
        if method == "concat":
            up, down, err_sq, norm_sq = stacked.U, stacked.D, 0.0, None
        else:
            if res is None:
                out_dim, n = stacked.U.shape[0], stacked.D.shape[1]
                if stacked.dense is not None or stacked.stacked_rank >= min(out_dim, n):
                    res = svd_dense(stacked.matrix(), rank=target, energy=energy)  # the factor form saves nothing
                else:
                    res = svd_rerank(stacked.U, stacked.D, rank=target, energy=energy)
            up, down, err_sq, norm_sq = res.up, res.down, res.error_sq, res.norm_sq
        weight_shape = max((tuple(m.weight_shape) for _, _, m in contributions), key=len)  # as stack_weighted
        module = factors_to_module(up, down, weight_shape, out_dtype)
        if check_stored:  # rounding to fp16/bf16 matters: measure the stored factors exactly
            u_st = module.up.reshape(module.up.shape[0], -1).to(torch.float32)
            d_st = module.down.reshape(module.rank, -1).to(torch.float32)
            err_sq = kron_error_sq(key, contributions, u_st, d_st) if stacked is None else None
            if err_sq is None:
                if stacked is None:
                    stacked = stack_weighted(key, contributions)
                err_sq = product_frobenius_norm(torch.cat([u_st, -stacked.U], 1), torch.cat([d_st, stacked.D], 0)) ** 2
        if check_stored and stacked is not None and stacked.dense is not None:  # stored factors vs the dense target
            err_sq = float(torch.linalg.matrix_norm((u_st @ d_st).to(torch.float64)
                                                    - stacked.matrix().to(torch.float64))) ** 2
        if norm_sq is None and err_sq > 0.0:
            norm_sq = product_frobenius_norm(stacked.U, stacked.D) ** 2
        norm_sq = norm_sq or 0.0
        merged[key] = module
        report.per_module_rank[key] = module.rank
        report.per_module[key] = math.sqrt(err_sq / norm_sq) if norm_sq > 0.0 else (0.0 if err_sq == 0.0 else math.inf)
        report._abs_error_sq += err_sq
        report._norm_sq += norm_sq
    if report._norm_sq > 0.0:
        report.total_relative_error = math.sqrt(report._abs_error_sq / report._norm_sq)
    else:
        report.total_relative_error = 0.0 if report._abs_error_sq == 0.0 else math.inf
    report.seconds = time.perf_counter() - start

    recipe = {
        "method": method,
        "rank": rank,
        "energy": report.energy,
        "inputs": [
            {"name": n, "weight": float(w), "architecture": a.architecture, "modules": len(a),
             "ranks": sorted(a.ranks())}
            for n, w, a in zip(names, weights, adapters)
        ],
        "output_dtype": report.output_dtype,
        "total_relative_error": report.total_relative_error,
    }
    out = LoraAdapter(
        modules=merged,
        metadata={RECIPE_METADATA_KEY: json.dumps(recipe), **_kept_metadata(adapters, names, report)},
        source_format=None,
        architecture=architecture,
    )
    return out, report
