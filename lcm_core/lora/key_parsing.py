"""Split LoRA state-dict keys into (module name, tensor role) and classify their format family.

Suffixes follow the loaders that define them: sd-scripts / ComfyUI ``.lora_down.weight``,
``.lora_up.weight``, ``.lora_mid.weight``, ``.alpha``; peft ``.lora_A.weight`` /
``.lora_B.weight``; diffusers ``.lora.down.weight``, ``.lora_linear_layer.down.weight`` and
the old attention-processor ``to_q_lora.down.weight`` (ComfyUI ``comfy/weight_adapter/lora.py``
lists the same set); LyCORIS ``.hada_*``, ``.lokr_*``, ``.diff``/``.diff_b``, ``.oft_blocks``,
``.rescale``, ``.dora_scale`` and peft's ``.lora_magnitude_vector`` (DoRA).
"""
from __future__ import annotations

from ..errors import AdapterFileError

from .lycoris_modules import LYCORIS_ROLES

DOWN, UP, MID, ALPHA, MAGNITUDE = "down", "up", "mid", "alpha", "lora_magnitude_vector"

_ROLE_SUFFIXES = (
    (".lora_down.weight", DOWN), (".lora_up.weight", UP), (".lora_mid.weight", MID),
    (".lora_A.default.weight", DOWN), (".lora_B.default.weight", UP),
    (".lora_A.weight", DOWN), (".lora_B.weight", UP),
    (".lora_linear_layer.down.weight", DOWN), (".lora_linear_layer.up.weight", UP),
    (".lora.down.weight", DOWN), (".lora.up.weight", UP),
    ("_lora.down.weight", DOWN), ("_lora.up.weight", UP),
    (".alpha", ALPHA),
    # LyCORIS (kohya naming; ComfyUI comfy/weight_adapter/{loha,lokr,oft,boft}.py, comfy/lora.py load_lora)
    *((f".{r}", r) for r in LYCORIS_ROLES),
    # peft DoRA: the magnitude vector m (out,), saved without its adapter name and ".weight"
    (".lora_magnitude_vector.weight", MAGNITUDE), (".lora_magnitude_vector", MAGNITUDE),
)
_UNSUPPORTED_PARTS = ()
_UNSUPPORTED_SUFFIXES = (
    (".w_norm", "norm weight patch"),
    (".b_norm", "norm bias patch"), (".set_weight", "set_weight patch"), (".reshape_weight", "reshape_weight"),
    (".bias", "LoRA bias"),
)
SUPPORTED = "LoRA/LoCon, LoHa, LoKr, full diff, DoRA, OFT, BOFT"

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
            raise AdapterFileError(source, f"{key}: {what} is not supported ({SUPPORTED} only)")
    for marker, what in _UNSUPPORTED_SUFFIXES:
        if key.endswith(marker):
            raise AdapterFileError(source, f"{key}: {what} is not supported ({SUPPORTED} only)")
    raise AdapterFileError(source, f"{key}: not a LoRA tensor name (expected .lora_down/.lora_up/.lora_A/"
                                   ".lora_B/.alpha or LyCORIS .hada_*/.lokr_*/.diff/.oft_blocks/.dora_scale suffixes)")


def is_adapter_key(key: str) -> bool:
    return any(key.endswith(suffix) and len(key) > len(suffix) for suffix, _ in _ROLE_SUFFIXES)


def family_of(module_name: str) -> str:
    for prefixes, fam in _FAMILY_PREFIXES:
        if module_name.startswith(prefixes):
            return fam
    return BARE
