"""Train the demo's small text-conditioned teacher: SD's structure, digit-sized.

Same parts as Stable Diffusion (and the same folder format as ``training/tiny_models.py``):
a diffusers ``UNet2DConditionModel`` with cross-attention, a transformers ``CLIPTextModel``,
a ``CLIPTokenizer`` and SD's scheduler (scaled_linear 0.00085 → 0.012, 1000 steps, ε
prediction). Pixel space (no ``vae/``): the UNet denoises 1×16×16 images in [-1, 1].

Objective: DDPM ε-prediction (Ho et al. 2020, Eq. 14) with Min-SNR-γ loss weighting
(Hang et al. 2023, ``min(SNR, γ)/SNR`` for ε targets, as diffusers'
``train_text_to_image.py --snr_gamma``), 10 % empty captions for classifier-free guidance
(Ho & Salimans 2022), the text encoder trained jointly (there is no pretrained CLIP here),
and an EMA of the weights (diffusers ``EMAModel``), which is what gets saved.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


def teacher_unet_config(resolution: int = 16, block_out_channels=(16, 32, 64), layers_per_block: int = 1,
                        cross_attention_dim: int | None = None) -> dict:
    """``UNet2DConditionModel`` kwargs: SD 1.5's block layout scaled down (3 levels; cross-attention
    at 8×8 and 4×4, a plain ResNet level at full resolution, as SD's deepest level is plain)."""
    from ..training.tiny_models import TINY_TEXT_DIM

    return dict(
        sample_size=resolution,
        in_channels=1,
        out_channels=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim or TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


@dataclass
class TeacherSettings:
    """Everything that determines the trained teacher (recorded in the saved weights' metadata)."""

    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    text_encoder_lr: float = 2e-4
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    snr_gamma: float | None = 5.0
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    resolution: int = 16
    block_out_channels: list = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    split_seed: int = 0
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _snapshot(target: Path, laid_out: Path, unet, text_encoder, ema, params, s: TeacherSettings, step: int) -> None:
    import shutil

    ema.store(params)
    ema.copy_to(params)
    target.mkdir(parents=True, exist_ok=True)
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(laid_out / part, target / part, dirs_exist_ok=True)
    unet.save_pretrained(target / "unet")
    text_encoder.save_pretrained(target / "text_encoder")
    info = {**json.loads(s.to_json()), "stopped_after": step}
    (target / "demo_teacher.json").write_text(json.dumps(info, sort_keys=True), encoding="utf-8")
    ema.restore(params)


def _encode(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(ids, return_dict=False)[0]


def train_teacher(folder: str | os.PathLike, settings: TeacherSettings | None = None, device: str = "cpu",
                  progress: bool = True, overwrite: bool = False, log_every: int = 100,
                  snapshot_every: int = 0, snapshot_dir: str | os.PathLike | None = None,
                  stop_after: int | None = None) -> Path:
    """Train a teacher on the ``train`` split and write it as a diffusers folder (D's tiny format).

    The folder is first laid out by ``training.tiny_models.build_tiny_teacher`` (tokenizer,
    tiny CLIP text encoder, SD scheduler; pixel space, 1 channel), then its ``unet/`` is
    replaced by :func:`teacher_unet_config`'s UNet and both networks are trained.
    Writes atomically (a temporary folder renamed at the end). ``snapshot_every`` > 0 also
    writes the EMA weights so far to ``snapshot_dir/unet`` and ``snapshot_dir/text_encoder``
    (plus the tokenizer/scheduler) every that many steps, for looking at a long run early.
    ``stop_after`` ends the run early (the LR schedule still spans ``settings.steps``) and saves
    the EMA weights at that step — the same weights a snapshot at that step holds.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm
    from transformers import CLIPTextModel, CLIPTokenizer

    from ..lcm_core.atomic_write import atomic_dir
    from ..training.tiny_models import build_tiny_teacher
    from .dataset import load_digit_images, prompt_for, split_indices
    from .min_snr_loss import min_snr_eps_loss

    s = settings or TeacherSettings()
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        build_tiny_teacher(tmp, image_channels=1, image_size=s.resolution, with_vae=False, seed=s.seed, overwrite=True)
        torch.manual_seed(s.seed)
        unet = UNet2DConditionModel(**teacher_unet_config(s.resolution, s.block_out_channels, s.layers_per_block))
        text_encoder = CLIPTextModel.from_pretrained(tmp / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(tmp / "tokenizer")
        noise_scheduler = DDPMScheduler.from_pretrained(tmp / "scheduler")
        unet.to(device).train()
        text_encoder.to(device).train()

        images, labels = load_digit_images(s.resolution)
        split = split_indices(labels, seed=s.split_seed)
        x_train = images[split.train].to(device)
        y_train = labels[split.train].to(device)
        prompts = [prompt_for(c) for c in range(10)] + [""]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)

        params = [
            {"params": list(unet.parameters()), "lr": s.learning_rate},
            {"params": list(text_encoder.parameters()), "lr": s.text_encoder_lr},
        ]
        opt = torch.optim.AdamW(params, weight_decay=s.weight_decay)
        from diffusers.optimization import get_cosine_schedule_with_warmup

        lr_sched = get_cosine_schedule_with_warmup(opt, s.warmup_steps, s.steps)
        all_params = list(unet.parameters()) + list(text_encoder.parameters())
        ema = EMAModel(all_params, decay=s.ema_decay)
        g = torch.Generator(device=device).manual_seed(s.seed)
        acs = noise_scheduler.alphas_cumprod.to(device)
        running = None
        last = min(s.steps, stop_after or s.steps)
        bar = tqdm(range(last), desc="teacher", disable=not progress)
        for step in bar:
            idx = torch.randint(0, len(x_train), (s.batch_size,), device=device, generator=g)
            x0 = x_train[idx]
            cls = y_train[idx].clone()
            drop = torch.rand(s.batch_size, device=device, generator=g) < s.cond_dropout
            cls[drop] = 10
            noise = torch.randn(x0.shape, device=device, generator=g)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (s.batch_size,), device=device, generator=g)
            a = acs[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            emb = _encode(text_encoder, ids)[cls]
            pred = unet(xt, t, encoder_hidden_states=emb, return_dict=False)[0]
            loss = min_snr_eps_loss(pred, noise, t, noise_scheduler, s.snr_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(all_params, 1.0)
            opt.step()
            lr_sched.step()
            ema.step(all_params)
            running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{running:.4f}")
            if log_every and not progress and step % log_every == 0:
                print(f"teacher step {step}: loss {running:.4f}", flush=True)
            if snapshot_every and snapshot_dir and (step + 1) % snapshot_every == 0 and step + 1 < s.steps:
                _snapshot(Path(snapshot_dir), tmp, unet, text_encoder, ema, all_params, s, step + 1)
        ema.copy_to(all_params)
        unet.to("cpu").eval()
        text_encoder.to("cpu").eval()
        unet.save_pretrained(tmp / "unet")
        text_encoder.save_pretrained(tmp / "text_encoder")
        info = json.loads(s.to_json())
        if last < s.steps:
            info["stopped_after"] = last
        (tmp / "demo_teacher.json").write_text(json.dumps(info, sort_keys=True), encoding="utf-8")
    return folder
