"""The student: the teacher's UNet with LoRA layers (peft), sharing the frozen base weights.

As diffusers' ``train_lcm_distill_lora_sdxl.py``: one UNet; the LoRA is added with
``unet.add_adapter(LoraConfig(...))`` (peft), the teacher is the same UNet with the adapters
disabled (ref. l. 1307 ``disable_adapters``), so no second UNet copy is held in memory
(``train_lcm_distill_lora_sd_wds.py`` keeps a separate ``teacher_unet``). Frozen weights may be
stored in the mixed-precision dtype; LoRA weights are always float32 (ref. ``cast_training_params``).
LoRA init as peft's default (A Kaiming-uniform, B zero): the student starts equal to the teacher.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def default_targets() -> list[str]:
    try:  # TEMP-SHIM until lcm_core.targets lands
        from ..lcm_core.targets import LCM_LORA_UNET_TARGETS
    except ImportError:  # TEMP-SHIM
        LCM_LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # TEMP-SHIM

    return list(LCM_LORA_UNET_TARGETS)


def add_lora(unet, rank: int, alpha: float | None, dropout: float, targets: list[str] | None) -> list[tuple[str, torch.nn.Parameter]]:
    """Inject LoRA into ``unet``; return the trainable (name, parameter) pairs, float32."""
    from peft import LoraConfig

    from ..lcm_core.errors import ConfigError

    targets = list(targets) if targets else default_targets()
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout, target_modules=targets)
    unet.requires_grad_(False)
    try:
        unet.add_adapter(config)
    except ValueError as e:
        raise ConfigError("lora.targets", f"no UNet module matches the LoRA targets {targets}: {e}") from None
    named = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    for _, p in named:
        p.data = p.data.float()
    return named


@contextmanager
def adapters_disabled(unet):
    """The teacher: the same UNet with every LoRA layer bypassed."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """peft-format LoRA tensors (``<module>.lora_A.weight`` / ``.lora_B.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)
