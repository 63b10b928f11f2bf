"""LoRA target modules of the released LCM-LoRA adapters (Luo et al. 2023, arXiv 2311.05556).

``LCM_LORA_UNET_TARGETS`` is the ``lora_target_modules`` default of diffusers
``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py`` and
``train_lcm_distill_lora_sdxl_wds.py`` (identical lists in both, and in the authors'
``LCM_Training_Script/consistency_distillation/train_lcm_distill_lora_*_wds.py``):
every attention projection, the transformer proj_in/out and feed-forward, and the
resnet convs, shortcut, time-embedding projection and up/down-sampler convs.
Matching is peft's: a module is targeted when its name equals a target or ends with
``"." + target`` (``peft.tuners.tuners_utils.check_target_module_exists``).

Paper check (LCM-LoRA report, Table 1 / §3): rank 64 gives 67.5M parameters on SD1.5 and
197M on SDXL; these targets give 67,252,224 (SD1.5) and 196,751,360 (SDXL) — see
``tests/test_targets.py`` and the report for the 0.4% SD1.5 gap.
"""
from __future__ import annotations

LCM_LORA_UNET_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
# sd-scripts' text-encoder targets (CLIPAttention / CLIPMLP children), for optional TE LoRA.
TEXT_ENCODER_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def matches_target(name: str, targets=LCM_LORA_UNET_TARGETS) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_target_names(unet, targets=LCM_LORA_UNET_TARGETS) -> list[str]:
    """Names of the Linear/Conv2d modules of ``unet`` that ``targets`` select.

    ``unet`` is a live ``torch.nn.Module`` or an architecture name (``sd1|sd2|sdxl|ssd1b``,
    resolved through the pure-Python module table, no diffusers needed).
    """
    if isinstance(unet, str):
        from .lora.module_table import architecture_modules

        return [k[len("unet."):] for k in architecture_modules(unet) if k.startswith("unet.")
                and matches_target(k[len("unet."):], targets)]
    import torch

    return [n for n, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and matches_target(n, targets)]


def lora_parameter_count(arch: str, rank: int = 64, targets=LCM_LORA_UNET_TARGETS) -> int:
    """LoRA parameters on ``arch``'s UNet: Linear r·(in+out); Conv r·(in·kh·kw + out)."""
    from .lora.module_table import architecture_modules

    total = 0
    for key, spec in architecture_modules(arch).items():
        if key.startswith("unet.") and matches_target(key[len("unet."):], targets):
            out, inp, *kernel = spec.shape
            k = 1
            for d in kernel:
                k *= d
            total += rank * (inp * k + out)
    return total
