"""Canonical LoRA module keys and their names in other conventions.

Canonical key: ``<component>.<module path>`` (see :mod:`.adapter`). Text-encoder paths
always carry ``text_model.`` (``text_encoder.text_model.encoder.layers.0.mlp.fc1``), the
spelling used by every LoRA file and by transformers < 5 / ``CLIPTextModelWithProjection``;
transformers 5 flattened ``CLIPTextModel`` (no ``text_model`` attribute) — use
:func:`module_name_in` to address a live model.

Conventions handled here:

* kohya / sd-scripts (``networks/lora.py``): ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_`` + module path with ``.`` → ``_``. sd-scripts trains SD1/SD2 on a
  diffusers-named UNet and SDXL on the original SGM UNet (``sdxl_original_unet.py``), so its
  native SDXL names are LDM paths (``lora_unet_input_blocks_4_1_…``); the released
  LCM-LoRA files use diffusers-derived names for SDXL too. Both are read for every arch.
* original SD (LDM/SGM) state-dict names (:func:`canonical_to_ldm`): ``style="comfy"`` gives
  ComfyUI's model keys (``diffusion_model.…``, ``clip_l.transformer.…``,
  ``clip_g.transformer.…``, ``clip_h.transformer.…``); ``style="checkpoint"`` gives
  single-file checkpoint keys (``model.diffusion_model.…``, ``cond_stage_model.…``,
  ``conditioner.embedders.N.…``), where OpenCLIP text encoders (SD2, SDXL ``text_encoder_2``)
  keep q/k/v fused in ``attn.in_proj_weight`` (see :func:`canonical_to_ldm_weight`).
"""
from __future__ import annotations

import functools

import re
from dataclasses import dataclass

from .. import model_configs
from .adapter import COMPONENTS
from .unet_names import DEFAULT_LAYOUT, LDM_ROOTS, UnetLayout, diffusers_to_ldm, ldm_to_diffusers

KOHYA_UNET = "lora_unet_"
KOHYA_TE = "lora_te_"
KOHYA_TE1 = "lora_te1_"
KOHYA_TE2 = "lora_te2_"

SDXL_FAMILY = ("sdxl", "ssd1b")

# ComfyUI's CLIP model names per architecture and component (comfy/sd1_clip.py,
# comfy/sdxl_clip.py, comfy/text_encoders/sd2_clip.py).
COMFY_CLIP_NAMES = {
    "sd1": {"text_encoder": "clip_l"},
    "sd2": {"text_encoder": "clip_h"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "ssd1b": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
}
# Single-file checkpoint prefixes of the text encoders, and whether they are OpenCLIP-style.
_CHECKPOINT_TE = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", False)},
    "sd2": {"text_encoder": ("cond_stage_model.model.", True)},
    "sdxl": {"text_encoder": ("conditioner.embedders.0.transformer.", False),
             "text_encoder_2": ("conditioner.embedders.1.model.", True)},
}
_CHECKPOINT_TE["ssd1b"] = _CHECKPOINT_TE["sdxl"]
CHECKPOINT_UNET_PREFIX = "model.diffusion_model."
COMFY_UNET_PREFIX = "diffusion_model."

# Vocabulary of module-path segments that contain underscores (diffusers UNet, LDM UNet,
# transformers CLIP). Used to undo kohya's "." → "_" flattening by longest match.
_VOCAB = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "class_embedding", "input_blocks",
    "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers", "skip_connection",
    "time_embed", "label_emb", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "text_projection", "layer_norm1", "layer_norm2", "final_layer_norm", "token_embedding",
    "position_embedding", "encoder_hid_proj", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out",
}
_MAX_WORDS = max(len(v.split("_")) for v in _VOCAB)


def split_key(key: str) -> tuple[str, str]:
    """``"unet.a.b"`` → ``("unet", "a.b")``; raises ValueError for an unknown component."""
    comp, _, path = key.partition(".")
    if comp not in COMPONENTS or not path:
        raise ValueError(f"not a canonical LoRA key: {key!r}")
    return comp, path


def decode_underscored(encoded: str) -> str:
    """Undo kohya's flattening: ``down_blocks_0_attentions_0_proj_in`` → ``down_blocks.0.attentions.0.proj_in``.

    Real module names are short and repeat across files (a node loads the same adapter names again
    and again): those are memoised; long names (only in hostile files) are not, so the cache stays small."""
    if len(encoded) <= 160:
        return _decode_cached(encoded)
    return _decode(encoded)


def _decode(encoded: str) -> str:
    words = encoded.split("_")
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_WORDS, len(words) - i), 1, -1):
            cand = "_".join(words[i:i + n])
            if cand in _VOCAB:
                out.append(cand)
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return ".".join(out)


_decode_cached = functools.lru_cache(maxsize=16384)(_decode)


# --------------------------------------------------------------------------- UNet LDM names


def _layout(arch: str | None, layout: UnetLayout | None) -> UnetLayout:
    if layout is not None:
        return layout
    if arch in model_configs.ARCHITECTURES:
        return UnetLayout.for_arch(arch)
    return DEFAULT_LAYOUT


def is_ldm_unet_path(path: str) -> bool:
    return path.split(".", 1)[0] in LDM_ROOTS


# --------------------------------------------------------------------------- kohya


def canonical_to_kohya(key: str, arch: str | None = None, *, unet_names: str = "native",
                       layout: UnetLayout | None = None, dual_text_encoders: bool | None = None) -> str:
    """Kohya module name (no ``.lora_down.weight`` suffix).

    ``unet_names``: ``"native"`` (sd-scripts: LDM names for SDXL/SSD-1B, diffusers names
    otherwise), ``"diffusers"`` (diffusers-derived for every arch, as the released LCM-LoRA
    files), ``"ldm"`` (LDM names for every arch, as ComfyUI accepts).
    """
    comp, path = split_key(key)
    if comp == "unet":
        use_ldm = unet_names == "ldm" or (unet_names == "native" and arch in SDXL_FAMILY)
        if unet_names not in ("native", "diffusers", "ldm"):
            raise ValueError(f"unet_names must be native, diffusers or ldm, not {unet_names!r}")
        if use_ldm:
            ldm = diffusers_to_ldm(path, _layout(arch, layout))
            if ldm is None:
                raise ValueError(f"{key}: no LDM/SGM name for this module")
            path = ldm
        return KOHYA_UNET + path.replace(".", "_")
    if comp == "text_encoder":
        dual = dual_text_encoders if dual_text_encoders is not None else arch in SDXL_FAMILY
        prefix = KOHYA_TE1 if dual else KOHYA_TE
    else:
        prefix = KOHYA_TE2
    return prefix + path.replace(".", "_")


def kohya_to_canonical(name: str, arch: str | None = None, *, layout: UnetLayout | None = None) -> str | None:
    """``lora_unet_input_blocks_4_1_proj_in`` → ``unet.down_blocks.1.attentions.0.proj_in``."""
    if name.startswith(KOHYA_UNET):
        path = decode_underscored(name[len(KOHYA_UNET):])
        if is_ldm_unet_path(path):
            path = ldm_to_diffusers(path, _layout(arch, layout))
            if path is None:
                return None
        return "unet." + path
    for prefix, comp in ((KOHYA_TE1, "text_encoder"), (KOHYA_TE2, "text_encoder_2"), (KOHYA_TE, "text_encoder")):
        if name.startswith(prefix):
            return f"{comp}.{te_path(decode_underscored(name[len(prefix):]))}"
    return None


def te_path(path: str) -> str:
    """Normalise a text-encoder module path to the canonical ``text_model.…`` spelling."""
    if path.startswith(("encoder.", "embeddings.", "final_layer_norm")):
        return "text_model." + path
    return path


# --------------------------------------------------------------------------- LDM / ComfyUI names


@dataclass(frozen=True)
class LdmWeight:
    """Where a canonical module's weight lives in an LDM state dict.

    ``key`` is the full weight key; ``rows`` a ``(start, stop)`` slice of dim 0 when the
    weight is fused (OpenCLIP ``attn.in_proj_weight`` = [q; k; v]); ``transposed`` when
    stored as ``(in, out)`` (OpenCLIP ``text_projection``).
    """

    key: str
    rows: tuple[int, int] | None = None
    transposed: bool = False


_OPENCLIP_TO = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_OPENCLIP_FROM = {v: k for k, v in _OPENCLIP_TO.items()}
_TE_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")


def _te_hidden(arch: str, comp: str) -> int:
    return model_configs.text_encoder_configs(arch)[comp]["hidden_size"]


def canonical_to_ldm_weight(key: str, arch: str, *, style: str = "checkpoint",
                            layout: UnetLayout | None = None) -> LdmWeight | None:
    """Full LDM weight location of a canonical module (``None`` when it has none)."""
    comp, path = split_key(key)
    if style not in ("comfy", "checkpoint"):
        raise ValueError(f"style must be comfy or checkpoint, not {style!r}")
    if comp == "unet":
        ldm = diffusers_to_ldm(path, _layout(arch, layout))
        if ldm is None:
            return None
        prefix = COMFY_UNET_PREFIX if style == "comfy" else CHECKPOINT_UNET_PREFIX
        return LdmWeight(f"{prefix}{ldm}.weight")
    if arch not in COMFY_CLIP_NAMES or comp not in COMFY_CLIP_NAMES[arch]:
        return None
    if style == "comfy":
        return LdmWeight(f"{COMFY_CLIP_NAMES[arch][comp]}.transformer.{path}.weight")
    prefix, openclip = _CHECKPOINT_TE[arch][comp]
    if not openclip:
        return LdmWeight(f"{prefix}{path}.weight")
    if path == "text_projection":
        return LdmWeight(f"{prefix}text_projection", transposed=True)
    m = _TE_LAYER.match(path)
    if m is None:
        return None
    layer, rest = m.groups()
    block = f"{prefix}transformer.resblocks.{layer}"
    if rest in _OPENCLIP_TO:
        return LdmWeight(f"{block}.{_OPENCLIP_TO[rest]}.weight")
    qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    if rest in qkv:
        h = _te_hidden(arch, comp)
        return LdmWeight(f"{block}.attn.in_proj_weight", rows=(qkv[rest] * h, (qkv[rest] + 1) * h))
    return None


def canonical_to_ldm(key: str, arch: str, *, style: str = "comfy", layout: UnetLayout | None = None) -> str | None:
    """LDM module key (no ``.weight``) of a canonical key, e.g.
    ``unet.down_blocks.1.attentions.0.proj_in`` → ``diffusion_model.input_blocks.4.1.proj_in``.

    ``None`` when the module has no 1:1 LDM counterpart (fused OpenCLIP q/k/v, transposed
    OpenCLIP ``text_projection`` in ``style="checkpoint"``; use :func:`canonical_to_ldm_weight`).
    """
    ref = canonical_to_ldm_weight(key, arch, style=style, layout=layout)
    if ref is None or ref.rows is not None or ref.transposed or not ref.key.endswith(".weight"):
        return None
    return ref.key[: -len(".weight")]


def ldm_to_canonical(key: str, arch: str | None = None, *, layout: UnetLayout | None = None) -> str | None:
    """Inverse of :func:`canonical_to_ldm` for both styles; accepts a trailing ``.weight``.

    Text encoders: ComfyUI ``clip_l/clip_h/clip_g.transformer.…`` and checkpoint
    ``cond_stage_model.…`` / ``conditioner.embedders.N.…`` keys (OpenCLIP ``attn.out_proj``,
    ``mlp.c_fc``, ``mlp.c_proj``; fused ``in_proj_weight`` → None). ``clip_l`` is
    ``text_encoder`` and ``clip_g`` ``text_encoder_2``; ``arch`` picks the component for
    SD2's ``clip_h`` (always ``text_encoder``).
    """
    k = key[: -len(".weight")] if key.endswith(".weight") else key
    for prefix in (CHECKPOINT_UNET_PREFIX, COMFY_UNET_PREFIX):
        if k.startswith(prefix):
            path = ldm_to_diffusers(k[len(prefix):], _layout(arch, layout))
            return None if path is None else "unet." + path
    for name, comp in (("clip_l", "text_encoder"), ("clip_h", "text_encoder"), ("clip_g", "text_encoder_2")):
        if k.startswith(f"{name}.transformer."):
            if name == "clip_g" and arch is not None and arch not in SDXL_FAMILY:
                return None
            return f"{comp}.{te_path(k[len(name) + len('.transformer.'):])}"
    for a in ("sd1", "sd2", "sdxl"):  # the prefixes are distinct, no arch needed
        for comp, (prefix, openclip) in _CHECKPOINT_TE[a].items():
            if not k.startswith(prefix):
                continue
            rest = k[len(prefix):]
            if not openclip:
                return f"{comp}.{te_path(rest)}"
            if rest == "text_projection":
                return None  # stored transposed, not a module weight
            m = _OC_LAYER.match(rest)
            if m and m.group(2) in _OPENCLIP_FROM:
                return f"{comp}.text_model.encoder.layers.{m.group(1)}.{_OPENCLIP_FROM[m.group(2)]}"
            return None
    return None


# --------------------------------------------------------------------------- live models


def module_name_in(model, path: str) -> str:
    """Name of canonical module ``path`` (component stripped) inside a live ``model``.

    transformers ≥ 5 ``CLIPTextModel`` has no ``text_model`` level; older versions and
    ``CLIPTextModelWithProjection`` do.
    """
    if path.startswith("text_model.") and not hasattr(model, "text_model"):
        return path[len("text_model."):]
    return path


def canonical_path_of(model, name: str) -> str:
    """Inverse of :func:`module_name_in`: live module name → canonical path."""
    if not hasattr(model, "text_model") and name.startswith(("encoder.", "embeddings.", "final_layer_norm")):
        return "text_model." + name
    return name
