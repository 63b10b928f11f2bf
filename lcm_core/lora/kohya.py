"""kohya / sd-scripts LoRA format: ``<lora_name>.lora_down.weight``, ``.lora_up.weight``,
optional ``.lora_mid.weight`` (LyCORIS Tucker) and ``.alpha`` (scale = alpha / rank).

Module names as sd-scripts ``networks/lora.py`` ``LoRANetwork.create_modules`` builds them
(prefix ``lora_unet`` / ``lora_te`` / ``lora_te1`` / ``lora_te2`` + module path with ``.`` →
``_``); see :mod:`.keys` for the SDXL/LDM naming choice. A module without ``.alpha`` has
scale 1 (sd-scripts: "support old LoRA without alpha"; ComfyUI and diffusers agree), so
``alpha=None`` is written by omitting the key.
"""
from __future__ import annotations

import torch

from .adapter import LoraAdapter, LoraModule
from .keys import canonical_to_kohya, kohya_to_canonical
from .unet_names import UnetLayout

SUFFIX = {"down": ".lora_down.weight", "up": ".lora_up.weight", "mid": ".lora_mid.weight", "alpha": ".alpha"}


def alpha_tensor(alpha: float) -> torch.Tensor:
    """0-dim alpha tensor: float32 when that holds the value exactly, else float64 (exact round trips)."""
    t32 = torch.tensor(alpha, dtype=torch.float32)
    return t32 if float(t32.item()) == float(alpha) else torch.tensor(alpha, dtype=torch.float64)


def module_to_canonical(name: str, arch: str | None = None, layout: UnetLayout | None = None) -> str | None:
    return kohya_to_canonical(name, arch, layout=layout)


def to_state_dict(adapter: LoraAdapter, arch: str | None = None, *, unet_names: str = "native",
                  layout: UnetLayout | None = None, suffix: dict[str, str] = SUFFIX,
                  name_of=None) -> dict[str, torch.Tensor]:
    """Tensors of ``adapter`` under kohya names (``name_of`` overrides the module naming)."""
    out: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    dual = True if "text_encoder_2" in adapter.components() else None
    for key, m in adapter.modules.items():
        name = name_of(key) if name_of is not None else canonical_to_kohya(
            key, arch, unet_names=unet_names, layout=layout, dual_text_encoders=dual)
        if name in names:
            raise ValueError(f"two modules map to the same name {name}")
        names.add(name)
        if isinstance(m, LoraModule):
            out[f"{name}{suffix['down']}"] = m.down
            out[f"{name}{suffix['up']}"] = m.up
            if m.mid is not None:
                out[f"{name}{suffix['mid']}"] = m.mid
        else:  # LyCORIS: the tensors under their own suffixes (lycoris ``kohya`` naming, as ComfyUI reads them)
            for role, t in m.tensors().items():
                if role in ("w1b", "w2b") and t.dim() > 2:
                    t = t.reshape(t.shape[0], -1)  # LyCORIS' stored layout (rank, in·k·k): ComfyUI multiplies 2-D
                if role != "dora_scale":
                    out[f"{name}.{m.SUFFIX[role]}"] = t
        if m.dora_scale is not None:
            out[f"{name}.dora_scale"] = m.dora_scale
        if m.alpha is not None:
            out[f"{name}{suffix['alpha']}"] = alpha_tensor(m.alpha)
    return out
