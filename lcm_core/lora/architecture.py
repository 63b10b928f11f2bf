"""Base-architecture detection (SD1.x, SD2.x, SDXL, SSD-1B) from an adapter or a checkpoint.

Method (no hard-coded fingerprints): an input is *consistent* with an architecture when
each of its Linear/Conv modules exists in that full-size model with a matching weight
shape (:mod:`lcm_core.lora.module_table`, checked against diffusers/transformers in the
tests). Cross-attention and text-encoder widths separate SD1 (768) / SD2 (1024) / SDXL
(2048, two encoders); transformer depths and the mid block separate SDXL from its
distilled SSD-1B (depths 0/2/4 vs 0/2/10, no mid attention). Partial adapters
(UNet-only, attention-only) are consistent with every architecture that contains them;
then *coverage* decides: an adapter that has, for every module kind it uses (e.g.
``transformer_blocks.#.attn1.to_q``), all modules of that kind in one architecture but
not in another (SSD-1B's set is a subset of SDXL's) belongs to the first. Otherwise hints
from metadata (``ss_base_model_version``, ``lcm_lora.architecture``) or kohya prefixes
(``lora_te1_`` = SDXL family) break ties; else the answer is ``unknown`` with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..errors import ArchitectureMismatchError
from .module_table import ModuleSpec, architecture_modules
from ..model_configs import ARCHITECTURES

UNKNOWN = "unknown"
_SDXL_FAMILY = {"sdxl", "ssd1b"}


@dataclass
class Detection:
    arch: str  # sd1 | sd2 | sdxl | ssd1b | unknown
    evidence: list[str] = field(default_factory=list)
    candidates: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.arch != UNKNOWN

    def __str__(self) -> str:
        return f"{self.arch} ({'; '.join(self.evidence)})" if self.evidence else self.arch


def _kind(path: str) -> str:
    return re.sub(r"\.\d+(?=\.|$)", ".#", path)


def _strip11(s: tuple[int, ...]) -> tuple[int, ...]:
    return s[:2] if len(s) == 4 and s[2:] == (1, 1) else s


def _mismatch(shapes: Mapping[str, tuple[int, ...]], table: dict[str, ModuleSpec], strict: bool) -> tuple[str, str] | None:
    for key, shape in shapes.items():
        spec = table.get(key)
        if spec is None:
            return key, "no such module"
        want = tuple(spec.shape)
        shape = tuple(shape)
        if -1 in shape:  # OFT knows only its output size
            if shape[0] != want[0]:
                return key, f"shape {shape} ≠ {want}"
            continue
        if shape != want and (strict or _strip11(shape) != _strip11(want)):
            return key, f"shape {shape} ≠ {want}"
    return None


def foreign_modules(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, int, list[str]]:
    """``(best architecture, modules that fit it, modules that do not)`` — for an adapter that fits
    no single architecture, the one that explains most of it and the keys that are foreign to it."""
    best = None
    for a in ARCHITECTURES:
        table = architecture_modules(a)
        bad = [k for k in shapes if _mismatch({k: shapes[k]}, table, strict=False) is not None]
        if best is None or len(bad) < len(best[2]):
            best = (a, len(shapes) - len(bad), bad)
    return best


def _missing_of_used_kinds(shapes: Mapping[str, tuple[int, ...]], table: dict[str, ModuleSpec]) -> int:
    used = {_kind(k) for k in shapes}
    return sum(1 for k in table if _kind(k) in used and k not in shapes)


def _hint_archs(hints: Iterable[str]) -> set[str]:
    """Map metadata/prefix hints to candidate sets."""
    out: set[str] = set()
    for h in hints:
        h = (h or "").lower()
        if h in ARCHITECTURES:
            out.add(h)
        elif h.startswith("sdxl") or h in ("sdxl_family", "lora_te1", "lora_te2"):
            out |= _SDXL_FAMILY
        elif h.startswith(("sd_v2", "sd2", "v2")):
            out.add("sd2")
        elif h.startswith(("sd_v1", "sd1", "v1")):
            out.add("sd1")
        elif "ssd" in h:
            out.add("ssd1b")
    return out


def hints_from_metadata(metadata: Mapping[str, str] | None) -> list[str]:
    md = metadata or {}
    hints = []
    for key in ("lcm_lora.architecture", "ss_base_model_version"):
        if md.get(key):
            hints.append(md[key])
    if md.get("ss_v2") == "True" and "ss_base_model_version" not in md:
        hints.append("sd2")
    return hints


def detect_from_shapes(shapes: Mapping[str, tuple[int, ...]], hints: Iterable[str] = (),
                       what: str = "adapter", loose: Iterable[str] = ()) -> Detection:
    """Core: canonical module key → base weight shape."""
    if not shapes:
        return Detection(UNKNOWN, [f"{what} has no LoRA-targetable modules"])
    tables = {a: architecture_modules(a) for a in ARCHITECTURES}
    evidence: list[str] = []
    consistent = []
    for a in ARCHITECTURES:
        bad = _mismatch(shapes, tables[a], strict=False)
        if bad is None:
            consistent.append(a)
        else:
            evidence.append(f"not {a}: {bad[0]} ({bad[1]})")
    if not consistent:
        return Detection(UNKNOWN, ["no supported architecture has all modules with these shapes", *evidence])
    loose = set(loose)
    strict_shapes = {k: v for k, v in shapes.items() if k not in loose} if loose else None
    chosen = _choose(shapes, tables, consistent, [h for h in hints if _hint_archs([h])], evidence, strict_shapes)
    return Detection(chosen, evidence, tuple(consistent))


def _choose(shapes, tables, consistent, hinted, evidence, strict_shapes=None) -> str:
    if len(consistent) == 1:
        a = consistent[0]
        evidence.insert(0, f"all {len(shapes)} modules exist in {a} with matching shapes")
        return a
    strict_shapes = shapes if strict_shapes is None else strict_shapes
    strict = [a for a in consistent if _mismatch(strict_shapes, tables[a], strict=True) is None]
    if len(strict) == 1:
        evidence.insert(0, f"only {strict[0]} matches the conv/linear layout exactly (among {', '.join(consistent)})")
        return strict[0]
    pool = strict or consistent
    missing = {a: _missing_of_used_kinds(shapes, tables[a]) for a in pool}
    complete = [a for a in pool if missing[a] == 0]
    detail = ", ".join(f"{a} lacks {missing[a]}" for a in pool)
    if len(complete) == 1:
        evidence.insert(0, f"covers every module of the kinds it uses only in {complete[0]} ({detail})")
        return complete[0]
    group = complete or pool
    for hint in hinted:  # most specific first (our own metadata, then sd-scripts', then key prefixes)
        narrowed = [a for a in group if a in _hint_archs([hint])]
        if len(narrowed) == 1:
            evidence.insert(0, f"consistent with {', '.join(group)}; {hint!r} (metadata/key prefix) says {narrowed[0]}")
            return narrowed[0]
    if any(set(group) & _hint_archs([h]) == _SDXL_FAMILY for h in hinted):
        evidence.insert(0, f"consistent with {', '.join(group)}; SDXL-family metadata/key prefixes; "
                           "modules shared by sdxl and ssd1b, reported as sdxl")
        return "sdxl"
    evidence.insert(0, f"ambiguous: consistent with {', '.join(group)} (coverage: {detail})")
    return UNKNOWN


def detect_adapter_architecture(adapter, hints: Iterable[str] | None = None) -> Detection:
    """Detect the base architecture of a :class:`LoraAdapter` (or canonical key → weight shape map).

    ``hints`` default to the adapter's metadata (``ss_base_model_version``,
    ``lcm_lora.architecture``); they only break ties between consistent architectures.
    """
    if isinstance(adapter, Mapping):
        shapes = {k: tuple(v) for k, v in adapter.items()}
        hint_list = list(hints or [])
    else:
        shapes = {k: tuple(m.weight_shape) for k, m in adapter.modules.items()}
        hint_list = list(hints) if hints is not None else hints_from_metadata(adapter.metadata)
        if hints is None and getattr(adapter, "architecture", None):
            hint_list.append(adapter.architecture)
        # LoHa / LoKr store a Linear and a 1×1 conv alike (flattened factors): no layout evidence
        loose = [k for k, m in adapter.modules.items() if getattr(m, "shape", 0) is None and len(shapes[k]) == 2]
        return detect_from_shapes(shapes, hint_list, "adapter", loose)
    return detect_from_shapes(shapes, hint_list, "adapter")


def checkpoint_shapes_to_canonical(shapes: Mapping[str, tuple], arch: str,
                                   origin: dict[str, str] | None = None) -> tuple[dict[str, tuple], list[str]]:
    """Map checkpoint weight keys (LDM single-file, ComfyUI, or diffusers UNet/text-encoder keys)
    to canonical keys using ``arch``'s block layout.

    Returns ``(canonical key → shape`` for modules of ``arch``, UNet Linear/Conv weight keys
    that have no counterpart in ``arch``)``. Norms (1-D), embeddings and OpenCLIP's fused
    ``in_proj_weight`` are ignored. ``origin`` (optional) receives canonical key → checkpoint key.
    """
    from .keys import ldm_to_canonical, te_path
    from .unet_names import UnetLayout

    layout = UnetLayout.for_arch(arch)
    table = architecture_modules(arch)
    out: dict[str, tuple] = {}
    unmapped: list[str] = []
    for key, shape in shapes.items():
        shape = tuple(shape)
        if not key.endswith(".weight") or key.startswith(("model_ema.", "first_stage_model.", "vae.")):
            continue
        mod = key[: -len(".weight")]
        if mod.startswith(("model.diffusion_model.", "diffusion_model.", "cond_stage_model.", "conditioner.",
                           "clip_l.", "clip_g.", "clip_h.")):
            canon = ldm_to_canonical(key, arch, layout=layout)
        elif mod.split(".", 1)[0] in ("unet", "text_encoder", "text_encoder_2"):
            comp, _, path = mod.partition(".")
            canon = f"{comp}.{path if comp == 'unet' else te_path(path)}"
        elif mod.startswith(("text_model.", "encoder.layers.")):
            canon = "text_encoder." + te_path(mod)
        else:
            canon = "unet." + mod
        is_unet_weight = "diffusion_model." in key or (canon or "").startswith("unet.")
        if canon is not None and canon in table:
            out[canon] = shape
            if origin is not None:
                origin[canon] = key
        elif is_unet_weight and len(shape) in (2, 4):
            unmapped.append(key)
    return out, unmapped


def detect_checkpoint_architecture(shapes: Mapping[str, tuple]) -> Detection:
    """Detect the architecture of a checkpoint from its ``key → shape`` map (no tensors needed).

    Accepts single-file LDM/SGM layouts (``model.diffusion_model.…``, ``cond_stage_model.…``,
    ``conditioner.embedders.…``), ComfyUI model keys and diffusers UNet keys. For a full
    checkpoint the chosen architecture must explain every UNet Linear/Conv weight.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if not shapes:
        return Detection(UNKNOWN, ["checkpoint has no tensors"])
    evidence: list[str] = []
    consistent: list[str] = []
    per_arch: dict[str, dict] = {}
    for a in ARCHITECTURES:
        origin: dict[str, str] = {}
        mapped, unmapped = checkpoint_shapes_to_canonical(shapes, a, origin)
        table = architecture_modules(a)
        if unmapped:
            evidence.append(f"not {a}: {unmapped[0]} has no counterpart")
            continue
        if not mapped:
            evidence.append(f"not {a}: no weight maps to a {a} module")
            continue
        bad = _mismatch(mapped, table, strict=False)
        if bad is not None:
            evidence.append(f"not {a}: {origin.get(bad[0], bad[0])} ({bad[1]})")
            continue
        unet_missing = [k for k in table if k.startswith("unet.") and k not in mapped]
        has_unet = any(k.startswith("unet.") for k in mapped)
        if has_unet and unet_missing:
            evidence.append(f"not {a}: UNet weight {unet_missing[0]} missing ({len(unet_missing)} missing)")
            continue
        consistent.append(a)
        per_arch[a] = mapped
    if not consistent:
        return Detection(UNKNOWN, ["no supported architecture explains these weights", *evidence])
    if len(consistent) == 1:
        a = consistent[0]
        evidence.insert(0, f"all {len(per_arch[a])} Linear/Conv weights match {a}")
        return Detection(a, evidence, tuple(consistent))
    tables = {a: architecture_modules(a) for a in consistent}
    # Same canonical keys under every consistent arch only if the layouts agree; pick by coverage.
    best = _choose(per_arch[consistent[0]], tables, consistent, [], evidence)
    return Detection(best, evidence, tuple(consistent))


def _allowed(found) -> tuple[str, ...]:
    """Architectures ``found`` (arch string, :class:`Detection` or None) may still be.

    A known architecture allows itself; an unknown detection allows its candidates
    (every architecture whose modules and shapes it fits, e.g. ``('sdxl', 'ssd1b')`` for a
    partial SDXL-family adapter); an unknown without candidates allows anything (``()``).
    """
    if isinstance(found, Detection):
        return (found.arch,) if found.known else tuple(found.candidates)
    return () if found in (None, UNKNOWN) else (found,)


def describe_architectures(archs) -> str:
    """``('sdxl', 'ssd1b')`` → ``"sdxl or ssd1b"`` (for error messages)."""
    return " or ".join(archs) if archs else UNKNOWN


def require_architecture(found, expected: str | None, source, *, allow_unknown: bool = True) -> None:
    """Raise :class:`ArchitectureMismatchError` naming both when ``found`` ≠ ``expected``.

    ``found`` is an arch string or a :class:`Detection`; ``expected`` None/"auto"/"unknown"
    accepts anything. An unknown ``found`` whose candidate set is non-empty and excludes
    ``expected`` is a mismatch ("expected sd1, found sdxl or ssd1b"); an unknown ``found``
    that could still be ``expected`` (or has no candidates) passes unless ``allow_unknown=False``.
    """
    if expected in (None, "auto", UNKNOWN):
        return
    det = found if isinstance(found, Detection) else Detection(found or UNKNOWN)
    if det.arch == expected:
        return
    detail = det.evidence[0] if det.evidence else ""
    allowed = _allowed(det)
    if det.arch == UNKNOWN:
        if allowed and expected not in allowed:
            raise ArchitectureMismatchError(source, expected, describe_architectures(allowed), detail)
        if allow_unknown:
            return
    raise ArchitectureMismatchError(source, expected, det.arch, detail)


def require_same_architecture(items) -> str | None:
    """All inputs must be able to share one architecture; returns it when it is determined.

    ``items``: ``{source: arch | Detection | None}`` or an iterable of ``(source, found)``
    pairs (sources may repeat). Known architectures must agree; unknown detections narrow
    the common set to their candidates (an ``sd1`` adapter and a partial SDXL-family one,
    candidates ``sdxl``/``ssd1b``, cannot be combined). Raises
    :class:`ArchitectureMismatchError` naming both sides; returns the single architecture
    all inputs allow, or None while that is still ambiguous (or nothing is known).
    """
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    common: set[str] | None = None
    seen: list[tuple[str, tuple[str, ...]]] = []  # (source, allowed) of inputs that constrain
    for source, found in pairs:
        allowed = _allowed(found)
        if not allowed:
            continue
        if common is not None and not common & set(allowed):
            here = describe_architectures(allowed)
            clash = next(((s, a) for s, a in seen if not set(a) & set(allowed)), None)
            if clash is not None:
                other = describe_architectures(clash[1])
                detail = f"{clash[0]} is {other}, {source} is {here}"
            else:
                other = describe_architectures([a for a in ARCHITECTURES if a in common])
                detail = f"{', '.join(s for s, _ in seen)} together allow only {other}, {source} is {here}"
            raise ArchitectureMismatchError(source, other, here, detail)
        common = set(allowed) if common is None else common & set(allowed)
        seen.append((str(source), allowed))
    if common is not None and len(common) == 1:
        return next(iter(common))
    return None
