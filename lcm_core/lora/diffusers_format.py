"""diffusers LoRA files (``pytorch_lora_weights.safetensors`` from ``save_lora_weights``).

Written as diffusers ≥ 0.30 does with a peft backend: ``unet.<path>.lora_A.weight`` /
``.lora_B.weight`` (``text_encoder.…``, ``text_encoder_2.…``), plus the safetensors
metadata entry ``lora_adapter_metadata`` = JSON of the per-component ``LoraConfig`` kwargs
with keys ``"<component>.<kwarg>"`` (``diffusers.loaders.lora_base._save_lora_weights`` /
``_pack_dict_with_prefix``); ``load_lora_weights`` rebuilds each ``LoraConfig`` from it, so
ranks and alphas survive exactly.

Read also: ``.lora.down/up.weight`` (``convert_state_dict_to_diffusers``),
``.lora_linear_layer.down/up.weight`` (old text-encoder LoRA), the old attention-processor
layout ``…attn1.processor.to_q_lora.down.weight`` / ``to_out_lora``, and ``.alpha`` keys.
"""
from __future__ import annotations

import json

import torch

from ..errors import AdapterFileError
from .adapter import COMPONENTS, LoraAdapter
from .keys import te_path
from .peft_format import lora_config_dict

METADATA_KEY = "lora_adapter_metadata"
_OLD_TE_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def normalise_path(comp: str, path: str) -> str:
    """Undo diffusers' historical spellings of a module path."""
    path = path.replace(".processor.", ".")
    if comp == "unet":
        if path.endswith(".to_out"):
            path += ".0"
        return path
    parts = path.split(".")
    if len(parts) >= 2 and parts[-2] == "self_attn" and parts[-1] in _OLD_TE_ATTN:
        parts[-1] = _OLD_TE_ATTN[parts[-1]]
    return te_path(".".join(parts))


def module_to_canonical(name: str, component: str | None = None) -> str | None:
    comp, _, path = name.partition(".")
    if comp not in COMPONENTS or not path:
        return None
    return f"{comp}.{normalise_path(comp, path)}"


def bare_to_canonical(name: str, component: str | None = None) -> str | None:
    """peft/diffusers module path without component prefix (``get_peft_model_state_dict(unet)``)."""
    if name.startswith(("text_model.", "encoder.layers.", "text_projection")):
        comp = component if component in ("text_encoder", "text_encoder_2") else "text_encoder"
    else:
        comp = component or "unet"
    return f"{comp}.{normalise_path(comp, name)}"


def to_state_dict(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, m in adapter.modules.items():
        if m.mid is not None:
            raise ValueError(f"{key}: the diffusers format cannot hold a lora_mid (Tucker) module")
        out[f"{key}.lora_A.weight"] = m.down
        out[f"{key}.lora_B.weight"] = m.up
    return out


def adapter_metadata(adapter: LoraAdapter) -> dict[str, str]:
    """``{"lora_adapter_metadata": json}`` with ``<component>.<LoraConfig kwarg>`` keys."""
    packed: dict = {}
    for comp in COMPONENTS:
        mods = {k.split(".", 1)[1]: m for k, m in adapter.modules.items() if k.startswith(comp + ".")}
        if mods:
            for kwarg, value in lora_config_dict(comp, mods).items():
                packed[f"{comp}.{kwarg}"] = value
    return {METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)} if packed else {}


def configs_from_metadata(source, metadata: dict[str, str]) -> dict[str, dict]:
    """Per-component LoraConfig kwargs from ``lora_adapter_metadata`` (empty if absent)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AdapterFileError(source, f"metadata {METADATA_KEY} is not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # over-long integer literal, nesting too deep
        raise AdapterFileError(source, f"metadata {METADATA_KEY} is not valid JSON "
                                       f"({'nested too deeply' if isinstance(e, RecursionError) else e})") from None
    if not isinstance(packed, dict):
        raise AdapterFileError(source, f"metadata {METADATA_KEY} is not a JSON object")
    out: dict[str, dict] = {}
    for key, value in packed.items():
        comp, _, kwarg = key.partition(".")
        if comp in COMPONENTS and kwarg:
            out.setdefault(comp, {})[kwarg] = value
    return out
