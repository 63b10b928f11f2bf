"""A tiny pixel-space teacher (:mod:`.tiny_models`) fitted to a tiny image folder, its guided DDIM samples and the
distance that judges few-step samples against them: the setting of ``tests/test_train_tiny_sample_quality.py``
and ``benchmarks/trainer/objective_quality.py``.

* :func:`fit_tiny_teacher`: plain ε-prediction DDPM training (Ho et al. 2020, Eq. 14), 10 % empty prompts so the
  teacher supports classifier-free guidance; AdamW lr 2e-3, batch 64, 8×8 one-channel images.
* :func:`guided_ddim`: the teacher's own samples, diffusers' ``DDIMScheduler`` (trailing spacing) with CFG in
  the LCM paper's form ε_u + (1 + ω)(ε_c − ε_u) (Eq. 9).
* :func:`per_pixel_w2`: the 2-Wasserstein distance between per-pixel Gaussian fits of two sample sets,
  sqrt(Σ_pixels (Δmean² + Δstd²)) (the closed form for independent 1-D Gaussians).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch


def fit_tiny_teacher(folder: Path, data: Path, steps: int = 800) -> None:
    """Train every weight of the UNet in teacher ``folder`` on the images of ``data`` (seeded); save it in place."""
    from .config import load_config
    from .data import load_image, scan_image_folder
    from .teacher import build_cond, load_teacher_folder, unet_forward

    teacher = load_teacher_folder(folder)
    cfg = load_config({"data": {"path": str(data), "resolution": 8, "buckets": False}}).data
    records = scan_image_folder(cfg)
    images = torch.stack([load_image(r, (8, 8), 1, "center", False, random.Random(0))[0] for r in records])
    text = teacher.encode_text([r.captions[0] for r in records])
    empty = teacher.encode_text([""])
    unet = teacher.unet.train()
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    ac = teacher.alphas_cumprod
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(records), (64,), generator=gen)
        x0 = images[idx]
        hidden = text["hidden"][idx].clone()
        hidden[torch.rand(64, generator=gen) < 0.1] = empty["hidden"][0]
        t = torch.randint(0, 1000, (64,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a, s = ac[t].sqrt().reshape(-1, 1, 1, 1), (1 - ac[t]).sqrt().reshape(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(unet_forward(unet, a * x0 + s * noise, t, build_cond({"hidden": hidden})), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.save_pretrained(folder / "unet")


@torch.no_grad()
def guided_ddim(teacher, cond: dict, uncond: dict, x: torch.Tensor, steps: int, omega: float) -> torch.Tensor:
    """``steps`` DDIM steps of ``teacher`` from noise ``x`` with guidance ω = ``omega``; the samples."""
    from diffusers import DDIMScheduler

    from .teacher import unet_forward

    sched = DDIMScheduler.from_config(teacher.noise_scheduler.config, timestep_spacing="trailing", set_alpha_to_one=False,
                                      clip_sample=False)
    sched.set_timesteps(steps)
    x = x.clone()
    for t in sched.timesteps:
        tt = torch.full((x.shape[0],), int(t))
        e_c, e_u = unet_forward(teacher.unet, x, tt, cond), unet_forward(teacher.unet, x, tt, uncond)
        x = sched.step(e_u + (1 + omega) * (e_c - e_u), t, x).prev_sample
    return x


def per_pixel_w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """W2 between per-pixel Gaussian fits of sample sets ``a`` and ``b`` (first dimension: samples)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return float(((a.mean(0) - b.mean(0)) ** 2 + (a.std(0) - b.std(0)) ** 2).sum().sqrt())
