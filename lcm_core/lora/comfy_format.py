"""ComfyUI's own LoRA layout: ``diffusion_model.<LDM key>`` and ``text_encoders.<clip>.transformer.<path>``
with kohya suffixes (``.lora_up.weight``, ``.lora_down.weight``, ``.alpha``).

This is what ComfyUI's LoRA extraction writes (``comfy_extras/nodes_lora_extract.py``,
prefixes ``diffusion_model.`` and ``text_encoders.``) and what ``comfy.lora.model_lora_keys_unet``
/ ``model_lora_keys_clip`` accept as the "generic lora format" (keys = model state-dict keys
without ``.weight``). ``clip`` is ``clip_l`` / ``clip_h`` (SD2) / ``clip_g`` (SDXL ``text_encoder_2``).
"""
from __future__ import annotations

import torch

from .adapter import LoraAdapter
from .keys import COMFY_CLIP_NAMES, canonical_to_ldm, ldm_to_canonical, split_key
from .kohya import to_state_dict as _kohya_state_dict
from .unet_names import UnetLayout

UNET_PREFIX = "diffusion_model."
TE_PREFIX = "text_encoders."


def canonical_to_module(key: str, arch: str | None, layout: UnetLayout | None = None) -> str:
    comp, _ = split_key(key)
    if comp != "unet" and arch not in COMFY_CLIP_NAMES:
        raise ValueError(f"{key}: the base architecture must be known to name text-encoder modules for ComfyUI")
    name = canonical_to_ldm(key, arch, style="comfy", layout=layout)
    if name is None:
        raise ValueError(f"{key}: no ComfyUI/LDM name for this module")
    return name if comp == "unet" else TE_PREFIX + name


def module_to_canonical(name: str, arch: str | None = None, layout: UnetLayout | None = None) -> str | None:
    if name.startswith(TE_PREFIX):
        name = name[len(TE_PREFIX):]
    elif not name.startswith(UNET_PREFIX):
        return None
    return ldm_to_canonical(name, arch, layout=layout)


def to_state_dict(adapter: LoraAdapter, arch: str | None, *, layout: UnetLayout | None = None) -> dict[str, torch.Tensor]:
    return _kohya_state_dict(adapter, arch, name_of=lambda k: canonical_to_module(k, arch, layout))
