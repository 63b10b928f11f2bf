"""Read any supported LoRA format into a :class:`LoraAdapter`; write one in any format.

Formats: ``kohya`` (sd-scripts), ``diffusers`` (``save_lora_weights``), ``peft``
(adapter folder), ``comfy`` (ComfyUI ``diffusion_model.`` / ``text_encoders.`` keys). Reading
auto-detects the format, checks every module (pairs, ranks, shapes, NaN/Inf; see
:mod:`.validate`) and the base architecture (:mod:`.architecture`). Writing is
atomic and never overwrites unless asked; tensors keep their dtype; round trips between
formats reproduce every tensor and alpha exactly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from . import architecture as _architecture
from ..atomic_write import atomic_dir
from ..errors import AdapterFileError, ArchitectureMismatchError, ConfigError, LcmLoraError, OutputExistsError
from ..model_configs import ARCHITECTURES
from ..safetensors_io import read_safetensors, write_safetensors
from . import comfy_format, diffusers_format, kohya, peft_format
from .adapter import COMPONENTS, LoraAdapter, LoraModule
from .key_parsing import (ALPHA, BARE, COMFY, DIFFUSERS, DOWN, KOHYA, MAGNITUDE, MID, PEFT, UP, family_of,
                          is_adapter_key, split_role)
from .lycoris_modules import LYCORIS_ROLES, build_lycoris_module, check_dora_scale
from .keys import KOHYA_TE1, KOHYA_TE2, KOHYA_UNET, decode_underscored, is_ldm_unet_path
from .metadata import BASE_ARCHITECTURE_KEY, alpha_none_keys, build_metadata
from .module_table import architecture_modules, known_kinds, module_kind
from .unet_names import UnetLayout
from .validate import alpha_from_tensor, check_against_architecture, check_finite, check_module

FORMATS = ("kohya", "diffusers", "peft", "comfy")
DIFFUSERS_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors",)


# --------------------------------------------------------------------------- reading


def _uses_ldm_names(family: str, names) -> bool:
    if family == COMFY:
        return any(n.startswith(comfy_format.UNET_PREFIX) for n in names)
    if family == KOHYA:
        return any(n.startswith(KOHYA_UNET) and is_ldm_unet_path(decode_underscored(n[len(KOHYA_UNET):]))
                   for n in names)
    return False


def _mapper(family: str, component: str | None):
    if family == KOHYA:
        return lambda n, arch, layout: kohya.module_to_canonical(n, arch, layout)
    if family == COMFY:
        return lambda n, arch, layout: comfy_format.module_to_canonical(n, arch, layout)
    if family == DIFFUSERS:
        return lambda n, arch, layout: diffusers_format.module_to_canonical(n)
    if family == PEFT:
        return lambda n, arch, layout: diffusers_format.bare_to_canonical(n[len(peft_format.PEFT_PREFIX):], component)
    return lambda n, arch, layout: diffusers_format.bare_to_canonical(n, component)


def _weight_shape(groups: dict, name: str) -> tuple[int, ...] | None:
    g = groups[name]
    lyco = {r: t for r, (_, t) in g.items() if r in LYCORIS_ROLES and r != "dora_scale"}
    if lyco:
        try:
            m = build_lycoris_module("?", name, lyco, None)
        except LcmLoraError:
            return None  # malformed: named when the module is built
        shape = tuple(m.weight_shape) if m is not None else None
        return None if shape is None or -1 in shape else shape
    if DOWN not in g or UP not in g:
        return None
    down, up = g[DOWN][1], g[UP][1]
    if down.dim() not in (2, 4) or up.dim() != down.dim() or (MID in g and g[MID][1].dim() != 4):
        return None  # malformed: check_module names the problem later
    if down.dim() == 2:
        return (up.shape[0], down.shape[1])
    kernel = g[MID][1].shape[2:] if MID in g else down.shape[2:]
    return (up.shape[0], down.shape[1], *kernel)


def _pick_layout(groups, family, mapper, arch_hints: list[str]):
    """Choose the UNet block layout that explains LDM-style names (SDXL vs SD1/SD2 vs SSD-1B)."""
    order = [a for a in arch_hints if a in ARCHITECTURES] + [a for a in ("sdxl", "ssd1b", "sd1", "sd2")]
    best, best_score = None, (-1, -1)
    for arch in dict.fromkeys(order):
        layout = UnetLayout.for_arch(arch)
        table = architecture_modules(arch)
        mapped = fits = 0
        for name in groups:
            key = mapper(name, arch, layout)
            if key is None:
                continue
            mapped += 1
            shape = _weight_shape(groups, name)
            if key in table and shape is not None:
                fits += int(_shape_fits(shape, table[key].shape))
        score = (mapped, fits)
        if score > best_score:
            best, best_score = (arch, layout), score
    return best


def _shape_fits(got, want) -> bool:
    strip = lambda s: tuple(s[:2]) if len(s) == 4 and tuple(s[2:]) == (1, 1) else tuple(s)  # noqa: E731
    return tuple(got) == tuple(want) or strip(got) == strip(want)


def adapter_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike = "<state dict>",
    metadata: Mapping[str, str] | None = None,
    *,
    expected_arch: str | None = None,
    component: str | None = None,
    unet_config: dict | None = None,
    peft_configs: Mapping[str, dict] | None = None,
    check_values: bool = True,
    require_known_arch: bool = False,
    require_fit: bool = False,
) -> LoraAdapter:
    """Build a :class:`LoraAdapter` from a LoRA state dict in any supported format.

    ``component`` names the model of component-less keys (peft ``base_model.model.…`` or
    bare module paths); ``unet_config`` (diffusers UNet kwargs) describes a non-standard UNet
    for LDM-named keys; ``peft_configs`` (component → LoraConfig dict) gives peft alphas.
    ``expected_arch`` raises :class:`ArchitectureMismatchError` on a different architecture;
    ``require_known_arch`` raises :class:`AdapterFileError` (with the detection evidence) when
    no supported architecture fits (e.g. keys of two architectures mixed in one file);
    ``require_fit`` raises only when the modules fit no single architecture (ambiguous partial
    adapters pass), naming the foreign modules (the CLI and the nodes read with it).
    Raises :class:`AdapterFileError` naming the offending key for every inconsistency.
    """
    metadata = dict(metadata or {})
    if component is not None and component not in COMPONENTS:
        raise ConfigError(source, f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")
    if not state_dict:
        raise AdapterFileError(source, "contains no tensors (empty adapter)")
    _refuse_checkpoint(source, state_dict)
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise AdapterFileError(source, f"{key}: not a tensor")
        name, role = split_role(source, key)
        group = groups.setdefault(name, {})
        if role in group:  # e.g. `x.lora_A.weight` and `x.lora.down.weight`: which one is meant?
            raise AdapterFileError(source, f"{group[role][0]} and {key} are both the {role} weight of {name} "
                                           "(duplicate key in two spellings)")
        group[role] = (key, tensor)

    families: dict[str, str] = {}
    for name in groups:
        families.setdefault(family_of(name), name)
    if len(families) > 1:
        desc = " and ".join(f"{f} (e.g. {n})" for f, n in list(families.items())[:2])
        raise AdapterFileError(source, f"mixed LoRA key formats: {desc}")
    family = next(iter(families))
    mapper = _mapper(family, component)

    hints = _architecture.hints_from_metadata(metadata)
    if family == KOHYA and any(n.startswith((KOHYA_TE1, KOHYA_TE2)) for n in groups):
        hints.append("sdxl_family")
    if expected_arch:
        hints.insert(0, expected_arch)
    arch_for_names = expected_arch if expected_arch in ARCHITECTURES else None
    layout = UnetLayout.from_config(unet_config) if unet_config is not None else None
    if layout is None and _uses_ldm_names(family, groups):
        picked = _pick_layout(groups, family, mapper, hints)
        if picked is not None:
            arch_for_names, layout = picked
    if layout is None and arch_for_names is not None:
        layout = UnetLayout.for_arch(arch_for_names)

    modules: dict[str, LoraModule] = {}
    names: dict[str, str] = {}
    for name, g in groups.items():
        key = mapper(name, arch_for_names, layout)
        if key is None or module_kind(key) not in known_kinds():
            raise AdapterFileError(source, f"{name}: does not name a known UNet or text-encoder module")
        if key in modules:
            raise AdapterFileError(source, f"duplicate module: {names[key]} and {name} both address {key}")
        modules[key] = _build_module(source, name, g, key, arch_for_names)
        names[key] = name

    # peft / diffusers alphas from LoraConfig kwargs (adapter_config.json or lora_adapter_metadata).
    configs = dict(peft_configs or {})
    if family in (DIFFUSERS, PEFT, BARE) and not configs:
        configs = diffusers_format.configs_from_metadata(source, metadata)
    if configs:
        for comp, cfg in configs.items():  # peft writes a DoRA adapter's magnitudes (lora_magnitude_vector) with it
            mine = [m for k, m in modules.items() if k.split(".", 1)[0] == comp]
            if cfg.get("use_dora") and mine and not any(getattr(m, "dora_scale", None) is not None for m in mine):
                raise AdapterFileError(source, f"{comp}: its LoraConfig says use_dora, but the file holds no DoRA "
                                               "magnitude (lora_magnitude_vector): damaged or mislabelled")
        for key, m in modules.items():
            comp, path = key.split(".", 1)
            cfg = configs.get(comp)
            if cfg is not None and ALPHA not in groups[names[key]] and isinstance(m, LoraModule):
                m.alpha = peft_format.alpha_from_config(source, cfg, path, m.rank)
                check_module(source, names[key], m.down, m.up, m.mid, m.alpha)
    for key in alpha_none_keys(metadata, modules):
        m = modules.get(key)
        if m is not None and m.alpha is not None and m.alpha == m.rank:
            m.alpha = None

    if check_values:
        check_finite(source, dict(state_dict))

    adapter = LoraAdapter(modules=modules, metadata=metadata,
                          source_format="peft" if family == BARE else family)
    det = _architecture.detect_adapter_architecture(adapter, hints=hints)
    return _apply_detection(adapter, det, source, expected_arch, require_known_arch, names, require_fit)


def _refuse_checkpoint(source, state_dict) -> None:
    """A full model file given as an adapter: say so, instead of complaining about its first key."""
    keys = list(state_dict)
    if any(is_adapter_key(k) for k in keys):
        return
    weights = [k for k in keys if k.endswith((".weight", ".bias"))]
    if len(weights) < max(2, len(keys) // 2):
        return
    what = "a full model checkpoint"
    try:
        det = _architecture.detect_checkpoint_architecture(
            {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)})
        if det.known:
            what = f"a full {det.arch} model checkpoint"
    except Exception:  # detection is only a courtesy here
        pass
    raise AdapterFileError(source, f"is {what} ({len(keys)} tensors such as {weights[0]}), not a LoRA or LyCORIS "
                                   "adapter: load it as the base model (Load Checkpoint in ComfyUI, or the first "
                                   "argument of `lcm-lora fuse CHECKPOINT ADAPTER...`)")


def _resolve_shape(module, key: str, arch: str | None):
    """LoHa/LoKr factors store a k×k conv weight flattened (out, in·k·k): take the full
    base-weight shape from the architecture tables (Linear and 1×1 conv are interchangeable and
    need nothing; OFT knows only ``out`` and stays ``(out, -1)``, a wildcard for detection)."""
    if not hasattr(module, "shape") or module.shape is not None:
        return
    got = tuple(module.weight_shape)
    if len(got) == 4:
        return
    order = ([arch] if arch in ARCHITECTURES else []) + [a for a in ARCHITECTURES if a != arch]
    for a in order:
        spec = architecture_modules(a).get(key)
        if spec is None:
            continue
        want = tuple(spec.shape)
        if len(want) == 4 and want[2:] != (1, 1) and want[0] == got[0] and want[1] * want[2] * want[3] == got[1]:
            module.shape = want
            return
        if want == got:
            return


def _build_module(source, name: str, g: dict, key: str, arch: str | None):
    """One module from its tensors by role: LoRA/LoCon/Tucker (+ DoRA) or a LyCORIS type."""
    roles = {r: t for r, (_, t) in g.items()}
    alpha = alpha_from_tensor(source, name, roles[ALPHA]) if ALPHA in roles else None
    if MAGNITUDE in roles:
        if "dora_scale" in roles:
            raise AdapterFileError(source, f"{name}: has both dora_scale and lora_magnitude_vector")
        mag = roles.pop(MAGNITUDE)
        ndim = roles[DOWN].dim() if DOWN in roles else 2
        # peft's magnitude is always per output channel: (out,) for a Linear, (1, out, 1, 1) for a Conv2d (its
        # conv weight norm is transposed, peft/tuners/lora/dora.py) — never the input axis a (1, in, …) dora_scale means
        roles["dora_scale"] = mag.reshape(-1, *[1] * (ndim - 1))
    lyco = build_lycoris_module(source, name, {r: t for r, t in roles.items() if r in LYCORIS_ROLES}, alpha)
    if lyco is not None:
        plain = [r for r in (DOWN, UP, MID) if r in roles]
        if plain:
            raise AdapterFileError(source, f"{name}: mixes LoRA ({', '.join(plain)}) and {lyco.algo} tensors")
        _resolve_shape(lyco, key, arch)
        return lyco
    down, up, mid = roles.get(DOWN), roles.get(UP), roles.get(MID)
    check_module(source, name, down, up, mid, alpha)
    module = LoraModule(down=down, up=up, alpha=alpha, mid=mid, dora_scale=roles.get("dora_scale"))
    check_dora_scale(source, name, module.dora_scale, module.weight_shape)
    return module


def check_one_architecture(source, adapter: LoraAdapter, det=None, names: dict | None = None) -> None:
    """Every module must fit one supported architecture (several candidates, e.g. a partial
    SDXL / SSD-1B adapter, are fine): else an error naming the foreign modules."""
    det = det or _architecture.detect_adapter_architecture(adapter)
    if det.known or det.candidates:
        return
    shapes = {k: tuple(m.weight_shape) for k, m in adapter.modules.items()}
    best, fit, foreign = _architecture.foreign_modules(shapes)
    names = names or {}
    shown = ", ".join(names.get(k, k) for k in foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
    if (adapter.metadata or {}).get(BASE_ARCHITECTURE_KEY) == "custom":
        # written by lcm-lora train for a teacher that is no SD architecture (e.g. the demo's digit teacher)
        why = ("its metadata says lcm_lora.base_architecture: custom — lcm-lora train wrote it for a model of its own "
               "(e.g. the demo's digit teacher), not a damaged file; --allow-unknown-arch reads it")
    else:
        why = "mixed or damaged file? --allow-unknown-arch accepts adapters of other models"
    raise AdapterFileError(source, f"its modules do not all fit one supported architecture (sd1, sd2, sdxl, ssd1b): "
                                   f"{fit} of {len(shapes)} fit {best}, {len(foreign)} foreign: {shown} ({why})")


def _apply_detection(adapter, det, source, expected_arch, require_known_arch, names=None,
                     require_fit: bool = False) -> LoraAdapter:
    if require_fit and expected_arch in (None, "auto", "unknown"):
        check_one_architecture(source, adapter, det, names)
    if expected_arch not in (None, "auto", "unknown"):
        if det.known and det.arch != expected_arch:
            raise ArchitectureMismatchError(source, expected_arch, det.arch, det.evidence[0] if det.evidence else "")
        check_against_architecture(source, adapter, expected_arch, names)
        adapter.architecture = expected_arch
        return adapter
    if require_known_arch and not det.known:
        raise AdapterFileError(source, "cannot determine the base architecture: " + "; ".join(det.evidence[:3]))
    adapter.architecture = det.arch if det.known else None
    return adapter


def _read_peft_folder(folder: Path, source, component, **kw) -> LoraAdapter:
    cfg = peft_format.read_config(source, folder / peft_format.CONFIG_NAME)
    tensors, metadata = read_safetensors(folder / peft_format.WEIGHTS_NAME, max_bytes=kw.pop("max_bytes", None))
    comp = component or metadata.pop("lcm_lora.component", None)
    metadata.pop("lcm_lora.component", None)
    if comp is None and folder.name in COMPONENTS:
        comp = folder.name
    if comp is None and tensors:  # infer from the module paths (text_model.… → text encoder)
        first = split_role(source, next(iter(tensors)))[0]
        if first.startswith(peft_format.PEFT_PREFIX):
            first = first[len(peft_format.PEFT_PREFIX):]
        comp = diffusers_format.bare_to_canonical(first).split(".", 1)[0]
    adapter = adapter_from_state_dict(tensors, source, metadata, component=comp,
                                      peft_configs={comp: cfg}, **kw)
    adapter.source_format = "peft"
    return adapter


def read_adapter(
    path: str | os.PathLike,
    *,
    expected_arch: str | None = None,
    component: str | None = None,
    unet_config: dict | None = None,
    max_bytes: int | None = None,
    check_values: bool = True,
    require_known_arch: bool = False,
    require_fit: bool = False,
) -> LoraAdapter:
    """Read a LoRA file (kohya / diffusers / comfy ``.safetensors``) or folder (peft adapter
    folder, per-component peft sub-folders, or a diffusers output folder with
    ``pytorch_lora_weights.safetensors``). See :func:`adapter_from_state_dict`."""
    p = Path(path)
    kw = dict(expected_arch=expected_arch, unet_config=unet_config, check_values=check_values,
              require_known_arch=require_known_arch, require_fit=require_fit and unet_config is None)
    if p.is_dir():
        try:
            (p / peft_format.CONFIG_NAME).is_file()  # raises for a folder that cannot be entered (permissions)
        except OSError as e:
            raise AdapterFileError(p, f"cannot read the folder: {e.strerror or e}") from None
        if (p / peft_format.CONFIG_NAME).is_file() and (p / peft_format.WEIGHTS_NAME).is_file():
            return _read_peft_folder(p, p, component, max_bytes=max_bytes, **kw)
        subs = [c for c in COMPONENTS if (p / c / peft_format.CONFIG_NAME).is_file()
                and (p / c / peft_format.WEIGHTS_NAME).is_file()]
        if subs:
            merged: dict[str, LoraModule] = {}
            metadata: dict[str, str] = {}
            kw_no_arch = dict(kw, expected_arch=None, require_known_arch=False, require_fit=False)
            for c in subs:
                part = _read_peft_folder(p / c, p / c, c, max_bytes=max_bytes, **kw_no_arch)
                merged.update(part.modules)
                metadata.update(part.metadata)
            adapter = LoraAdapter(modules=merged, metadata=metadata, source_format="peft")
            det = _architecture.detect_adapter_architecture(adapter)
            return _apply_detection(adapter, det, p, expected_arch, require_known_arch, require_fit=require_fit)
        for name in DIFFUSERS_WEIGHT_NAMES:
            if (p / name).is_file():
                return read_adapter(p / name, component=component, max_bytes=max_bytes, **kw)
        pickles = sorted(f.name for f in p.glob("*") if f.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        if pickles:  # e.g. an old peft / diffusers save: adapter_model.bin, pytorch_lora_weights.bin
            raise AdapterFileError(p, f"holds only pickle-based weights ({', '.join(pickles[:3])}), which are never "
                                      "loaded (unpickling can run arbitrary code): use the .safetensors version")
        raise AdapterFileError(p, "is a directory, not a LoRA file (no adapter_config.json + "
                                  "adapter_model.safetensors, no pytorch_lora_weights.safetensors)")
    tensors, metadata = read_safetensors(p, max_bytes=max_bytes)
    return adapter_from_state_dict(tensors, p, metadata, component=component, **kw)


# --------------------------------------------------------------------------- writing


def _resolve_arch(adapter: LoraAdapter, arch: str | None) -> str | None:
    if arch in ARCHITECTURES:
        return arch
    if adapter.architecture in ARCHITECTURES:
        return adapter.architecture
    det = _architecture.detect_adapter_architecture(adapter)
    return det.arch if det.known else None


def adapter_to_state_dict(
    adapter: LoraAdapter,
    format: str = "kohya",
    arch: str | None = None,
    *,
    unet_names: str = "native",
    unet_config: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of ``adapter`` in ``format`` (``kohya`` | ``diffusers`` | ``comfy`` | ``peft``).

    ``peft`` gives ``base_model.model.…`` keys and needs a single-component adapter.
    ``unet_names`` (kohya only): ``native`` | ``diffusers`` | ``ldm`` (see
    :func:`.keys.canonical_to_kohya`). Raises ValueError when a module cannot be expressed.
    """
    arch = _resolve_arch(adapter, arch)
    layout = UnetLayout.from_config(unet_config) if unet_config is not None else None
    if arch is None and layout is None and (format == "comfy" or (format == "kohya" and unet_names == "ldm")):
        arch = _naming_architecture(adapter, format, unet_names)
    if format in ("diffusers", "peft"):
        _require_plain(adapter, format)
    if format == "kohya":
        return kohya.to_state_dict(adapter, arch, unet_names=unet_names, layout=layout)
    if format == "comfy":
        return comfy_format.to_state_dict(adapter, arch, layout=layout)
    if format == "diffusers":
        return diffusers_format.to_state_dict(adapter)
    if format == "peft":
        comps = adapter.components()
        if len(comps) != 1:
            raise ValueError(f"peft state dicts hold one component, adapter has {sorted(comps)}")
        out = {}
        for key, m in adapter.modules.items():
            if m.mid is not None:
                raise ValueError(f"{key}: peft cannot hold a lora_mid (Tucker) module")
            path = key.split(".", 1)[1]
            out[f"{peft_format.PEFT_PREFIX}{path}.lora_A.weight"] = m.down
            out[f"{peft_format.PEFT_PREFIX}{path}.lora_B.weight"] = m.up
        return out
    raise ValueError(f"unknown LoRA format {format!r}; expected one of {', '.join(FORMATS)}")


def _naming_architecture(adapter: LoraAdapter, fmt: str, unet_names: str) -> str | None:
    """The architecture whose ComfyUI / LDM block numbering names an adapter that fits several (a partial SD1 / SD2
    one, say): any of them when their names agree (SD1 and SD2 number alike), else an error — SD1's
    ``output_blocks.2.1.conv`` is SDXL's ``2.2``, and a name of the wrong one is skipped by ComfyUI without a word
    (the SDXL numbering used to be taken for any adapter without a known architecture)."""
    candidates = _architecture.detect_adapter_architecture(adapter).candidates
    names = {}
    for cand in candidates:
        sd = (comfy_format.to_state_dict(adapter, cand) if fmt == "comfy"
              else kohya.to_state_dict(adapter, cand, unet_names=unet_names))
        names.setdefault(frozenset(sd), []).append(cand)
    if len(names) > 1:
        raise ValueError(f"the adapter fits {', '.join(candidates)}, whose {fmt} names of its UNet modules differ: give "
                         "the architecture (lcm-lora convert --arch)")
    return candidates[0] if candidates else None


def _require_plain(adapter: LoraAdapter, fmt: str) -> None:
    """diffusers / peft files hold plain LoRA only (kohya and comfy names hold every LyCORIS type)."""
    from .lycoris_modules import ALGO_NAMES, algo_of

    for key, m in adapter.modules.items():
        if not isinstance(m, LoraModule) or m.dora_scale is not None:
            algo = algo_of(m)
            raise ValueError(f"{key}: a {ALGO_NAMES.get(algo.split('+')[0], algo)}"
                             f"{' + DoRA' if '+dora' in algo else ''} module cannot be written in the {fmt} format; "
                             f"write kohya/comfy, or convert it to a plain LoRA (`lcm-lora convert --to {fmt} --rank N`)")


def _check_writable(adapter: LoraAdapter, path) -> None:
    if not adapter.modules:
        raise ConfigError(path, "adapter has no modules; nothing to write")
    for key, m in adapter.modules.items():
        if isinstance(m, LoraModule):
            check_module(path, key, m.down, m.up, m.mid, m.alpha)
            check_dora_scale(path, key, m.dora_scale, m.weight_shape)
        else:
            m.validate(path, key)
    check_finite(path, {f"{k}.{r}": t for k, m in adapter.modules.items() for r, t in m.tensors().items()})


def write_adapter(
    adapter: LoraAdapter,
    path: str | os.PathLike,
    format: str = "kohya",
    overwrite: bool = False,
    extra_metadata: Mapping[str, str] | None = None,
    *,
    arch: str | None = None,
    unet_names: str = "native",
    unet_config: dict | None = None,
) -> None:
    """Write ``adapter`` atomically (``peft``: a folder; others: one ``.safetensors`` file).

    ``arch`` overrides the adapter's architecture for naming and metadata. Metadata: the
    adapter's own plus ours (:mod:`.metadata`) plus ``extra_metadata`` (str → str).
    """
    if format not in FORMATS:
        raise ConfigError(path, f"unknown LoRA format {format!r}; expected one of {', '.join(FORMATS)}")
    _check_writable(adapter, path)
    arch = _resolve_arch(adapter, arch)
    md = build_metadata(adapter, format, arch, extra_metadata)
    try:
        if format == "peft":
            _write_peft(adapter, Path(path), md, overwrite)
            return
        tensors = adapter_to_state_dict(adapter, format, arch, unet_names=unet_names, unet_config=unet_config)
        if format == "diffusers":
            md.update(diffusers_format.adapter_metadata(adapter))
    except ValueError as e:
        raise ConfigError(path, f"cannot write {format} format: {e}") from None
    write_safetensors(path, tensors, md, overwrite=overwrite)


def _write_peft(adapter: LoraAdapter, path: Path, md: dict[str, str], overwrite: bool) -> None:
    try:
        _write_peft_folders(adapter, path, md, overwrite)
    except OSError as e:  # disk full, permission denied: atomic_dir leaves nothing at `path`
        raise LcmLoraError(path, f"cannot write: {e.strerror or e}") from None
    except LcmLoraError as e:
        if e.source is None or Path(e.source) == path:
            raise
        # a file inside atomic_dir's hidden temporary folder failed: name the output the user asked for
        raise LcmLoraError(path, f"{e.problem} (writing {Path(e.source).name})") from None


def _check_replaceable_peft_folder(path: Path) -> None:
    """``--force`` replaces a peft adapter folder (its config and weights, per component or not), never a folder
    holding anything else: the whole folder is replaced, and other files in it would be lost."""
    adapter_files = {peft_format.CONFIG_NAME, peft_format.WEIGHTS_NAME}
    for child in path.iterdir():
        if child.name in adapter_files and child.is_file():
            continue
        if child.name in COMPONENTS and child.is_dir() and not child.is_symlink() and all(
                c.name in adapter_files and c.is_file() for c in child.iterdir()):
            continue
        raise OutputExistsError(path, f"is a folder holding more than a peft adapter (e.g. {child.name}): not "
                                      "replaced, even with --force (the whole folder would be); choose another output")


def _write_peft_folders(adapter: LoraAdapter, path: Path, md: dict[str, str], overwrite: bool) -> None:
    import json

    comps = [c for c in COMPONENTS if c in adapter.components()]
    if overwrite and path.is_dir() and not path.is_symlink():
        _check_replaceable_peft_folder(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        for comp in comps:
            folder = tmp if len(comps) == 1 else tmp / comp
            folder.mkdir(exist_ok=True)
            mods = {k.split(".", 1)[1]: m for k, m in adapter.modules.items() if k.startswith(comp + ".")}
            part = LoraAdapter(modules={f"{comp}.{p}": m for p, m in mods.items()})
            tensors = adapter_to_state_dict(part, "peft")
            cfg = peft_format.folder_config(comp, mods)
            (folder / peft_format.CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
            write_safetensors(folder / peft_format.WEIGHTS_NAME, tensors, dict(md, **{"lcm_lora.component": comp}),
                              overwrite=True)
