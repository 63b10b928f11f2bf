"""A full fine-tune of the teacher on a new style, after distillation: the TCD paper's "universal
acceleration" test (Zheng et al. 2024, §5; TDM, arXiv 2503.06674, Table 2 measures the same on
community SD1.5 checkpoints).

Every UNet weight of a copy of the teacher is trained with the ordinary ε loss on the ``train``
split rendered in ``style`` (default bold strokes), which the distilled adapters never saw. The
adapters (LCM-LoRA, TCD) are then fused into that fine-tune and sampled at few steps; the
reference is the fine-tune's own 25-step DDIM with CFG. See ``run.universal_acceleration``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch


@dataclass
class FinetuneSettings:
    style: str = "bold"
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 2e-4
    cond_dropout: float = 0.1
    snr_gamma: float | None = 5.0
    split_seed: int = 0
    seed: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def finetune_teacher(teacher, settings: FinetuneSettings | None = None, progress: bool = True) -> dict:
    """Fully fine-tune a copy of ``teacher.unet`` (all parameters); return its float32 state dict."""
    from .style_lora import diffusion_finetune

    s = settings or FinetuneSettings()
    torch.manual_seed(s.seed)
    unet = copy.deepcopy(teacher.unet).float().train()
    params = [p for p in unet.parameters() if p.requires_grad]
    diffusion_finetune(unet, params, teacher, s, desc=f"full fine-tune ({s.style})", progress=progress)
    return {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
