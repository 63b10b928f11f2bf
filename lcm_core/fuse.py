"""Bake LoRA adapters into base weights: θ' = θ + Σ_i λ_i ΔW_i (LCM-LoRA report, arXiv 2311.05556:
the LCM-LoRA "acceleration vector" added to a base or fine-tuned SD model).

Same result as peft ``LoraModel.merge_and_unload`` (W += scaling · B @ A per adapter) and
ComfyUI's LoRA patching at strength λ: ΔW = (alpha / rank) · up ∘ [mid] ∘ down
(:meth:`LoraModule.delta_weight`), summed in float32 and cast back to the weight's dtype once.
LyCORIS modules (LoHa, LoKr, full diff) add their ΔW the same way; multiplicative ones (DoRA,
OFT, BOFT) are applied to the running weight in adapter order, exactly as ComfyUI stacks them
(:mod:`.lora.lycoris_modules`).
Inputs are never modified (:func:`fuse_into_weights` returns new tensors);
:func:`fuse_into_module` is the in-place variant for a loaded diffusers/transformers model.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from .errors import AdapterFileError, ConfigError
from .lora.adapter import LoraAdapter, LoraModule
from .lora.keys import module_name_in
from .lora.validate import FLOAT32_MAX, has_nonfinite

KeyMap = Mapping[str, str] | Callable[[str], "str | None"]


def _names(adapters, names):
    names = list(names) if names is not None else [f"adapter {i + 1}" for i in range(len(adapters))]
    if len(names) != len(adapters):
        raise ConfigError("fuse", f"{len(adapters)} adapters but {len(names)} names")
    return names


def _check_strengths(adapters, strengths, names):
    if len(strengths) != len(adapters):
        raise ConfigError("fuse", f"{len(adapters)} adapters but {len(strengths)} strengths")
    for n, s in zip(names, strengths):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            raise ConfigError(n, f"strength must be a finite number, got {s!r}")
        if abs(float(s)) > FLOAT32_MAX:  # ΔW is added in float32
            raise ConfigError(n, f"strength {s!r} is beyond float32's range (|s| ≤ {FLOAT32_MAX:.3g})")


def _lookup(key: str, weights: Mapping[str, torch.Tensor], key_map: KeyMap | None) -> str | None:
    if key_map is None:
        mapped = key
    elif callable(key_map):
        mapped = key_map(key)
    else:
        mapped = key_map.get(key)
    if mapped is None:
        return None
    for candidate in (mapped, mapped + ".weight"):
        if candidate in weights:
            return candidate
    return None


def match_adapter_keys(
    weights: Mapping[str, torch.Tensor], adapters: list[LoraAdapter], key_map: KeyMap | None = None
) -> tuple[dict[str, str], list[str]]:
    """Map each canonical module key of ``adapters`` to its key in ``weights``.

    ``key_map`` (a dict or a function, e.g. ``lambda k: canonical_to_ldm(k, arch)``) maps a
    canonical key to a state-dict key; ``<mapped>`` or ``<mapped>.weight`` must be in
    ``weights``. Returns ``(matched: canonical → weight key, unmatched canonical keys)``.
    """
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    for adapter in adapters:
        for key in adapter.modules:
            if key in matched or key in unmatched:
                continue
            wkey = _lookup(key, weights, key_map)
            if wkey is None:
                unmatched.append(key)
            else:
                matched[key] = wkey
    return matched, unmatched


def _check_fits(theta: torch.Tensor, module, source: str, key: str, wkey: str) -> None:
    # Compare shapes before forming the dense ΔW: a hostile adapter (rank 1, 10⁶×10⁶) must not
    # make us allocate terabytes before the mismatch is noticed.
    want = tuple(module.weight_shape)
    if -1 in want:  # OFT knows only its output size
        if want[0] != theta.shape[0]:
            raise AdapterFileError(source, f"module {key}: {module.algo.upper()} rotates {want[0]} output rows but "
                                           f"weight {wkey!r} has shape {tuple(theta.shape)} (wrong base model?)")
        return
    shape = torch.Size(want)
    if shape != theta.shape:
        same_matrix = shape.numel() == theta.numel() and all(
            tuple(s[:2]) == tuple(theta.shape[:2]) and all(d == 1 for d in s[2:])
            for s in (shape, theta.shape)
        )
        if not same_matrix:  # only Linear ↔ Conv 1×1 (trailing 1×1 dims) may be reshaped
            raise AdapterFileError(
                source, f"module {key}: LoRA update has shape {tuple(shape)} but weight "
                f"{wkey!r} has shape {tuple(theta.shape)} (wrong base model?)"
            )


def _fused(theta, contributions, key, wkey) -> torch.Tensor:
    """θ' in float32, the contributions applied in order, as ComfyUI stacks patches
    (``comfy.lora.calculate_weight``): additive updates commute, but DoRA renormalises against the
    running weight and OFT rotates it, so their result depends on what was applied before."""
    if not theta.is_floating_point():
        raise ConfigError(wkey, f"cannot fuse LoRA {key} into a {theta.dtype} weight")
    for source, _, module in contributions:
        _check_fits(theta, module, source, key, wkey)
    acc = theta.to(torch.float32).clone()
    for source, strength, module in contributions:
        if getattr(module, "multiplicative", False):
            acc = module.apply_to(acc, float(strength))
        else:
            acc.add_(module.delta_weight(torch.float32).to(theta.device).reshape(theta.shape), alpha=float(strength))
    fused = acc.to(theta.dtype)
    if has_nonfinite(fused) and not has_nonfinite(theta):
        sources = ", ".join(f"{source} at {strength:g}" for source, strength, _ in contributions)
        raise ConfigError(wkey, f"fusing {sources} gives values beyond {str(theta.dtype).replace('torch.', '')}'s range "
                                "(Inf): lower the strength; nothing was written")
    return fused


def fuse_into_weights(
    weights: Mapping[str, torch.Tensor],
    adapters: list[LoraAdapter],
    strengths: list[float],
    key_map: KeyMap | None = None,
    names: list[str] | None = None,
    strict: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Return a new dict with θ' = θ + Σ λ_i ΔW_i for every weight an adapter module matches.

    ``weights`` is keyed by canonical module key (optionally + ``.weight``), or by whatever
    ``key_map`` maps canonical keys to (see :func:`match_adapter_keys`). Unmatched modules
    are skipped (``strict=True``: :class:`AdapterFileError` listing them). Untouched tensors
    are passed through (same objects); touched ones are new tensors in the weight's dtype,
    summed in float32. A shape mismatch raises :class:`AdapterFileError` naming the module.
    """
    from tqdm.auto import tqdm

    names = _names(adapters, names)
    _check_strengths(adapters, strengths, names)
    matched, unmatched = match_adapter_keys(weights, adapters, key_map)
    if strict and unmatched:
        owner = next(n for n, a in zip(names, adapters) if unmatched[0] in a.modules)
        raise AdapterFileError(
            owner, f"{len(unmatched)} LoRA module(s) have no weight in the model, e.g. {', '.join(unmatched[:5])}"
        )
    out = dict(weights)
    by_weight: dict[str, list[str]] = {}
    for key, wkey in matched.items():
        by_weight.setdefault(wkey, []).append(key)
    for wkey, keys in tqdm(by_weight.items(), desc="fuse", unit="weight", disable=not progress):
        contributions = [
            (n, float(s), a.modules[k]) for k in keys for n, s, a in zip(names, strengths, adapters) if k in a.modules
        ]
        out[wkey] = _fused(weights[wkey], contributions, keys[0], wkey)
    return out


def fuse_into_module(
    module: torch.nn.Module,
    adapter: LoraAdapter,
    strength: float = 1.0,
    component: str = "unet",
    strict: bool = False,
    name: str = "adapter",
) -> list[str]:
    """In place: add ``strength`` · ΔW to the weights of ``module`` (a diffusers UNet or a
    transformers text encoder) for the adapter's ``<component>.*`` modules.

    Module paths are ``named_modules()`` names (the canonical key minus ``component.``, ``module_name_in``).
    Returns the fused canonical keys; other components' keys are ignored; keys of this
    component that are missing in ``module`` are skipped (``strict=True``: error).
    """
    _check_strengths([adapter], [strength], [name])
    prefix = component + "."
    submodules = dict(module.named_modules())
    fused, missing = [], []
    for key, lora in adapter.modules.items():
        if not key.startswith(prefix):
            continue
        target = submodules.get(module_name_in(module, key[len(prefix):]))  # transformers 5: no text_model level
        weight = getattr(target, "weight", None) if target is not None else None
        if not isinstance(weight, torch.Tensor):
            missing.append(key)
            continue
        new = _fused(weight.detach(), [(name, float(strength), lora)], key, key)
        with torch.no_grad():
            weight.copy_(new)
        fused.append(key)
    if strict and missing:
        raise AdapterFileError(
            name, f"{len(missing)} {component} LoRA module(s) not found in the model, e.g. {', '.join(missing[:5])}"
        )
    return fused
