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
    """The released LCM-LoRA's UNet targets (the reference scripts' ``lora_target_modules`` default)."""
    from ..lcm_core.targets import LCM_LORA_UNET_TARGETS

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


class AdapterSwitch:
    """Turns every LoRA layer of a UNet off and on (the teacher pass) — fast.

    diffusers' ``disable_adapters()``/``enable_adapters()`` walk all ``named_modules()`` and
    toggle ``requires_grad`` of every LoRA tensor on each call (≈10 % of a tiny-model step).
    The LoRA layers are collected once here and only peft's per-layer switch
    (``BaseTunerLayer._disable_adapters``, read by its ``disable_adapters`` property in every
    LoRA ``forward``) is flipped; ``requires_grad`` is left alone, which is harmless because the
    teacher pass runs under ``no_grad``. Falls back to the public API if peft lacks the attribute.
    """

    def __init__(self, unet):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.unet = unet
        self.layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        self.fast = bool(self.layers) and all(hasattr(m, "_disable_adapters") for m in self.layers)

    @contextmanager
    def disabled(self):
        if not self.fast:
            self.unet.disable_adapters()
            try:
                yield self.unet
            finally:
                self.unet.enable_adapters()
            return
        for layer in self.layers:
            layer._disable_adapters = True
        try:
            yield self.unet
        finally:
            for layer in self.layers:
                layer._disable_adapters = False


@contextmanager
def adapters_disabled(unet):
    """The teacher: the same UNet with every LoRA layer bypassed (public diffusers API)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """peft-format LoRA tensors (``<module>.lora_A.weight`` / ``.lora_B.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)
