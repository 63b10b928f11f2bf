"""Split LoRA state-dict keys into (module name, tensor role) and classify their format family.

Suffixes follow the loaders that define them: sd-scripts / ComfyUI ``.lora_down.weight``,
``.lora_up.weight``, ``.lora_mid.weight``, ``.alpha``; peft ``.lora_A.weight`` /
``.lora_B.weight``; diffusers ``.lora.down.weight``, ``.lora_linear_layer.down.weight`` and
the old attention-processor ``to_q_lora.down.weight`` (ComfyUI ``comfy/weight_adapter/lora.py``
lists the same set).
"""
from __future__ import annotations

from ..errors import AdapterFileError

DOWN, UP, MID, ALPHA = "down", "up", "mid", "alpha"

_ROLE_SUFFIXES = (
    (".lora_down.weight", DOWN), (".lora_up.weight", UP), (".lora_mid.weight", MID),
    (".lora_A.default.weight", DOWN), (".lora_B.default.weight", UP),
    (".lora_A.weight", DOWN), (".lora_B.weight", UP),
    (".lora_linear_layer.down.weight", DOWN), (".lora_linear_layer.up.weight", UP),
    (".lora.down.weight", DOWN), (".lora.up.weight", UP),
    ("_lora.down.weight", DOWN), ("_lora.up.weight", UP),
    (".alpha", ALPHA),
)
_UNSUPPORTED_PARTS = (
    ("dora_scale", "DoRA (dora_scale)"), ("lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
    (".hada_", "LyCORIS LoHa"), (".lokr_", "LyCORIS LoKr"), (".oft_", "OFT"),
)
_UNSUPPORTED_SUFFIXES = (
    (".diff_b", "full bias diff"), (".diff", "full weight diff"), (".w_norm", "norm weight patch"),
    (".b_norm", "norm bias patch"), (".set_weight", "set_weight patch"), (".reshape_weight", "reshape_weight"),
    (".bias", "LoRA bias"),
)

KOHYA, DIFFUSERS, PEFT, COMFY, BARE = "kohya", "diffusers", "peft", "comfy", "bare"
_FAMILY_PREFIXES = (
    (("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"), KOHYA),
    (("unet.", "text_encoder.", "text_encoder_2."), DIFFUSERS),
    (("base_model.model.",), PEFT),
    (("diffusion_model.", "text_encoders."), COMFY),
)


def split_role(source, key: str) -> tuple[str, str]:
    """``"lora_unet_x.lora_down.weight"`` → ``("lora_unet_x", "down")``; raises for non-LoRA keys."""
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    for marker, what in _UNSUPPORTED_PARTS:
        if marker in key:
            raise AdapterFileError(source, f"{key}: {what} is not supported (plain LoRA/LoCon only)")
    for marker, what in _UNSUPPORTED_SUFFIXES:
        if key.endswith(marker):
            raise AdapterFileError(source, f"{key}: {what} is not supported (plain LoRA/LoCon only)")
    raise AdapterFileError(source, f"{key}: not a LoRA tensor name (expected .lora_down/.lora_up/.lora_A/"
                                   ".lora_B/.alpha suffixes)")


def family_of(module_name: str) -> str:
    for prefixes, fam in _FAMILY_PREFIXES:
        if module_name.startswith(prefixes):
            return fam
    return BARE
