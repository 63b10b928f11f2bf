"""A style LoRA for the demo's merge experiment, trained with the ordinary diffusion loss.

The LCM-LoRA paper (arXiv 2311.05556, §3.3) combines a style LoRA τ_style, fine-tuned with
the usual ε-prediction objective, with the LCM-LoRA acceleration vector τ_LCM:
τ' = λ1·τ_style + λ2·τ_LCM. This module trains τ_style on the ``train`` split rendered in a
style (``dataset.apply_style``: "bold" strokes by default), same captions, 10 % empty captions
so the styled model still supports CFG. The LoRA layers are added and exported by the trainer's
own code (``training.student.add_lora``: peft on the LCM-LoRA's target modules;
``training.export.peft_state_to_adapter``), so τ_style and τ_LCM have the same modules and
format; the result is a :class:`~lcm_core.lora.adapter.LoraAdapter` ready for
``merge_adapters`` / ``fuse_into_module``.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from ..lcm_core.cpu_threads import training_threads


@dataclass
class StyleLoraSettings:
    style: str = "bold"
    steps: int = 400
    batch_size: int = 64
    rank: int = 8
    learning_rate: float = 1e-3
    cond_dropout: float = 0.1
    snr_gamma: float | None = 5.0
    split_seed: int = 0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def train_style_lora(teacher, settings: StyleLoraSettings | None = None, progress: bool = True):
    """Train τ_style on a copy of ``teacher.unet`` (the teacher is left untouched); return a LoraAdapter."""
    from ..training.export import peft_state_to_adapter
    from ..training.student import add_lora, lora_state_dict

    s = settings or StyleLoraSettings()
    torch.manual_seed(s.seed)
    unet = copy.deepcopy(teacher.unet).float().train()
    params = [p for _, p in add_lora(unet, rank=s.rank, alpha=float(s.rank), dropout=0.0, targets=None)]
    diffusion_finetune(unet, params, teacher, s, desc=f"style LoRA ({s.style})", progress=progress)
    adapter = peft_state_to_adapter(lora_state_dict(unet), alpha=float(s.rank), arch=None, dtype=torch.float32)
    adapter.metadata = {"lcm_lora_demo": "style", "style": s.style, "rank": str(s.rank), "steps": str(s.steps)}
    return adapter


def diffusion_finetune(unet, params, teacher, s, desc: str = "fine-tune", progress: bool = True) -> None:
    """Train ``params`` of ``unet`` in place with the ordinary ε-prediction loss (min-SNR-γ weighting,
    Hang et al. 2023, if ``s.snr_gamma``) on the ``train`` split rendered in ``s.style``; captions as
    the teacher's, ``s.cond_dropout`` of them empty. ``s`` needs style, steps, batch_size,
    learning_rate, cond_dropout, snr_gamma, split_seed, seed."""
    from .dataset import apply_style, load_digit_images, prompt_for, split_indices

    opt = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=0.0)

    resolution = unet.config.sample_size
    images, labels = load_digit_images(resolution)
    split = split_indices(labels, seed=s.split_seed)
    x_train = apply_style(images[split.train], s.style)
    y_train = labels[split.train]
    ids = teacher.tokenizer([prompt_for(c) for c in range(10)] + [""], padding="max_length",
                            max_length=teacher.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb_table = teacher.text_encoder(ids, return_dict=False)[0].float()
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(teacher.scheduler_config)
    acs = noise_scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(s.seed)
    with training_threads(unet, "cpu"):  # small UNet: one thread (lcm_core/cpu_threads.py)
        _steps(unet, opt, s, x_train, y_train, emb_table, noise_scheduler, acs, g, desc, progress)


def _steps(unet, opt, s, x_train, y_train, emb_table, noise_scheduler, acs, g, desc, progress) -> None:
    from tqdm.auto import tqdm

    from .min_snr_loss import min_snr_eps_loss

    for _ in tqdm(range(s.steps), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(0, len(x_train), (s.batch_size,), generator=g)
        x0, cls = x_train[idx], y_train[idx].clone()
        cls[torch.rand(s.batch_size, generator=g) < s.cond_dropout] = 10
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (s.batch_size,), generator=g)
        a = acs[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=emb_table[cls], return_dict=False)[0]
        loss = min_snr_eps_loss(pred, noise, t, noise_scheduler, s.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
