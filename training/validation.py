"""Validation grids: the student sampled with 1/2/4 LCM steps on fixed prompts and seeds.

Sampling uses the project's own LCM sampler (``lcm_core.sampling.sample_lcm`` over
``lcm_core.denoisers.EpsDenoiser`` with the diffusers boundary convention and
``lcm_core.timesteps.lcm_sigmas``), i.e. what the ComfyUI nodes run, without classifier-free
guidance (the reference's ``log_validation`` samples 4 steps with ``guidance_scale=1.0``, i.e. no
CFG). Rows are step counts, columns prompts; the noise seed is fixed across validations.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .ddim_solver import DDIMSolver
from .teacher import Teacher, build_cond, unet_forward


def _schedule_of(teacher: Teacher):
    from ..lcm_core.schedule import DiscreteSchedule

    c = teacher.noise_scheduler.config
    if c.beta_schedule not in ("scaled_linear", "linear") or getattr(c, "trained_betas", None) is not None:
        return None
    return DiscreteSchedule(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule)


@torch.no_grad()
def sample_student(teacher: Teacher, unet, prompts: list[str], steps: int, resolution: int, seed: int,
                   device, autocast, solver: DDIMSolver, text: dict | None = None) -> torch.Tensor:
    """LCM samples of the (LoRA-equipped) ``unet`` → images in [0, 1], (N, C, H, W).

    ``text``: the prompts' embeddings encoded before the text encoders were released
    (``training/offload.py``); the VAE decoder is on the device only while it decodes."""
    from .offload import decoder_on
    from ..lcm_core.denoisers import EpsDenoiser
    from ..lcm_core.sampling import sample_lcm
    from ..lcm_core.timesteps import lcm_sigmas

    schedule = _schedule_of(teacher)
    if text is None:
        text = teacher.encode_text(prompts, device)
    text = {k: v.to(device) for k, v in text.items()}
    n = len(prompts)
    time_ids = None
    if teacher.uses_pooled:
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * n, dtype=torch.float32, device=device)
    cond = build_cond(text, time_ids)

    def eps_fn(x_scaled, t, **_):
        with autocast():
            raw = unet_forward(unet, x_scaled, t.to(device), cond).float()
        return solver.predicted_eps(raw, t.to(device), x_scaled.float(), teacher.prediction_type)

    size = resolution // teacher.downsample
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, teacher.latent_channels, size, size), generator=gen).to(device)
    sigmas = lcm_sigmas(steps, schedule=schedule).to(device)
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5  # sigma space; equals diffusers' unit-variance start
    denoiser = EpsDenoiser(eps_fn, schedule=schedule, boundary="diffusers")
    latents = sample_lcm(denoiser, x, sigmas, extra_args={"seed": seed}, disable=True)
    with decoder_on(teacher, torch.device(device)):
        return teacher.decode(latents)


def save_grid(rows: list[torch.Tensor], path: Path) -> Path:
    """Tile rows of (N, C, H, W) images in [0, 1] into one PNG (atomically)."""
    from PIL import Image

    from ..lcm_core.atomic_write import atomic_file

    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # (C, rows*H, N*W)
    array = (grid.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    image = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
    return path


def run_validation(teacher: Teacher, unet, cfg, step: int, output_dir: Path, device, autocast, solver,
                   text: dict | None = None) -> list[str]:
    """Write ``validation/step-XXXXXXXX.png`` and return its path(s); empty if the schedule is unsupported."""
    if _schedule_of(teacher) is None or not cfg.validation.prompts:
        return []
    resolution = cfg.validation.resolution or cfg.data.resolution
    was_training = unet.training
    unet.eval()
    try:
        rows = [
            sample_student(teacher, unet, cfg.validation.prompts, s, resolution, cfg.validation.seed, device, autocast, solver, text)
            for s in cfg.validation.steps
        ]
    finally:
        unet.train(was_training)
    path = save_grid(rows, Path(output_dir) / "validation" / f"step-{step:08d}.png")
    return [os.fspath(path)]
