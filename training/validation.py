"""Validation grids: the student sampled with 1/2/4 LCM (or TCD) steps on fixed prompts and seeds.

Prompts: ``validation.prompts`` from the config, or (``null``, the default) the first
``MAX_DATA_PROMPTS`` distinct captions of the training data — so a run on any teacher is
validated on prompts that teacher knows. The grid is labelled (a header row with each prompt, a
left column with the step count) and each image is enlarged with nearest-neighbour to at least
``MIN_TILE`` px so tiny runs (16 px) can be seen.

Sampling uses the project's own samplers, i.e. what the ComfyUI nodes run: for ``lcd.objective: lcm``
``lcm_core.sampling.sample_lcm`` over ``lcm_core.denoisers.EpsDenoiser`` with the diffusers boundary
convention and ``lcm_core.timesteps.lcm_sigmas``; for ``tcd`` ``sample_tcd`` (γ of the adapter's
recipe, :func:`.export.adapter_recipe`) over the plain ε denoiser (no boundary condition) and
``tcd_sigmas`` — TCD's map has no c_skip/c_out, so an LCM boundary would be wrong for it; for ``pcm`` /
``tscd`` ``sample_tcd`` at γ 0 on the phased timesteps (``lcm_core.sampling_recipe.recipe_timesteps``). Without classifier-free
guidance (the reference's ``log_validation`` samples 4 steps with ``guidance_scale=1.0``, i.e. no
CFG) — except for a "normal CFG" run (``lcd.solver_guidance: false``: nothing distilled in), sampled at the
recipe's cfg (``lcd.normal_cfg``) with ComfyUI's / diffusers' convention ε = ε_u + cfg·(ε_c − ε_u) and the
trainer's unconditional embedding (``lcd.uncond``). Rows are step counts, columns prompts; the noise seed is
fixed across validations.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .ddim_solver import DDIMSolver

MAX_DATA_PROMPTS = 4
MIN_TILE = 128  # px: images smaller than this are enlarged by an integer factor (nearest-neighbour)
LABEL_WIDTH = 72  # px, left column ("4 steps")
FONT_SIZE = 12
HEADER_LINES = 3
from .teacher import Teacher, build_cond, unet_forward


def _schedule_of(teacher: Teacher):
    from ..lcm_core.schedule import DiscreteSchedule

    c = teacher.noise_scheduler.config
    if c.beta_schedule not in ("scaled_linear", "linear") or getattr(c, "trained_betas", None) is not None:
        return None
    return DiscreteSchedule(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule)


@torch.no_grad()
def sample_student(teacher: Teacher, unet, prompts: list[str], steps: int, resolution: int, seed: int,
                   device, autocast, solver: DDIMSolver, objective: str = "lcm", gamma: float = 0.3,
                   text: dict | None = None, timesteps: list[int] | None = None, guidance: float = 1.0,
                   uncond: dict | None = None) -> torch.Tensor:
    """LCM (``objective="lcm"``) or TCD (``"tcd"``, stochasticity ``gamma``) samples of the
    (LoRA-equipped) ``unet`` → images in [0, 1], (N, C, H, W). ``timesteps``: the TCD sampler's
    descending timesteps instead of TCD's own schedule (PCM/TSCD adapters: the phased timesteps,
    ``lcm_core.sampling_recipe.recipe_timesteps``, at γ 0).

    ``text``: the prompts' embeddings encoded before the text encoders were released
    (``training/offload.py``); the VAE decoder is on the device only while it decodes. ``guidance`` ≠ 1 with
    ``uncond`` (one unconditional embedding, ``Teacher.uncond_text``): classifier-free guidance
    ε = ε_u + guidance·(ε_c − ε_u) on every step, both branches in one UNet batch."""
    from .offload import decoder_on
    from ..lcm_core.denoisers import EpsDenoiser
    from ..lcm_core.sampling import sample_lcm, sample_tcd
    from ..lcm_core.timesteps import lcm_sigmas, tcd_sigmas, timesteps_to_sigmas

    schedule = _schedule_of(teacher)
    if text is None:
        text = teacher.encode_text(prompts, device)
    text = {k: v.to(device) for k, v in text.items()}
    n = len(prompts)
    time_ids = None
    if teacher.uses_pooled:
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * n, dtype=torch.float32, device=device)
    guided = guidance != 1.0 and uncond is not None
    if guided:  # rows: n conditional, then n unconditional (same time ids)
        both = {k: torch.cat([v, uncond[k].to(device).expand(n, *v.shape[1:])]) for k, v in text.items()}
        cond = build_cond(both, None if time_ids is None else torch.cat([time_ids, time_ids]))
    else:
        cond = build_cond(text, time_ids)

    def eps_fn(x_scaled, t, **_):
        if guided:
            x_in, t_in = torch.cat([x_scaled, x_scaled]), torch.cat([t, t]).to(device)
            with autocast():
                raw = unet_forward(unet, x_in, t_in, cond).float()
            eps_c, eps_u = solver.predicted_eps(raw, t_in, x_in.float(), teacher.prediction_type).chunk(2)
            return eps_u + guidance * (eps_c - eps_u)
        with autocast():
            raw = unet_forward(unet, x_scaled, t.to(device), cond).float()
        return solver.predicted_eps(raw, t.to(device), x_scaled.float(), teacher.prediction_type)

    size = resolution // teacher.downsample
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, teacher.latent_channels, size, size), generator=gen).to(device)
    if objective == "tcd":
        sigmas = (tcd_sigmas(steps, schedule=schedule) if timesteps is None
                  else timesteps_to_sigmas(timesteps, schedule=schedule)).to(device)
        denoiser = EpsDenoiser(eps_fn, schedule=schedule, boundary=None)
        x = noise * (1.0 + sigmas[0] ** 2) ** 0.5  # sigma space; equals diffusers' unit-variance start
        latents = sample_tcd(denoiser, x, sigmas, extra_args={"seed": seed}, disable=True, gamma=gamma, schedule=schedule)
        with decoder_on(teacher, torch.device(device)):
            return teacher.decode(latents)
    sigmas = lcm_sigmas(steps, schedule=schedule).to(device)
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5  # sigma space; equals diffusers' unit-variance start
    denoiser = EpsDenoiser(eps_fn, schedule=schedule, boundary="diffusers")
    latents = sample_lcm(denoiser, x, sigmas, extra_args={"seed": seed}, disable=True)
    with decoder_on(teacher, torch.device(device)):
        return teacher.decode(latents)


def validation_prompts(cfg, records) -> list[str]:
    """``validation.prompts``, or the first :data:`MAX_DATA_PROMPTS` distinct non-empty captions of the data."""
    if cfg.validation.prompts:
        return list(cfg.validation.prompts)
    seen: list[str] = []
    for record in records:
        for caption in getattr(record, "captions", None) or []:
            if caption and caption not in seen:
                seen.append(caption)
                break
        if len(seen) >= MAX_DATA_PROMPTS:
            break
    return seen


def tile_scale(height: int, width: int) -> int:
    """Integer nearest-neighbour enlargement so the smaller side is at least :data:`MIN_TILE` px."""
    return max(1, -(-MIN_TILE // max(1, min(height, width))))


def step_label(steps: int) -> str:
    return f"{steps} step" if steps == 1 else f"{steps} steps"


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, lines: int) -> list[str]:
    """Greedy word wrap to ``width`` px, at most ``lines`` lines (the last one ends in '…' if cut)."""
    words, out, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            out.append(line)
            line = word
    if line:
        out.append(line)
    if len(out) > lines:
        out = out[:lines]
        last = out[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        out[-1] = last + "…"
    return out


def grid_geometry(n_rows: int, n_cols: int, height: int, width: int) -> dict:
    """Pixel layout of a labelled grid of ``n_rows`` x ``n_cols`` images of ``height`` x ``width``."""
    scale = tile_scale(height, width)
    header = HEADER_LINES * (FONT_SIZE + 3) + 6
    th, tw = height * scale, width * scale
    return {"scale": scale, "tile": (th, tw), "left": LABEL_WIDTH, "top": header,
            "size": (LABEL_WIDTH + n_cols * tw, header + n_rows * th)}


def save_grid(rows: list[torch.Tensor], path: Path, prompts: list[str] | None = None,
              row_labels: list[str] | None = None) -> Path:
    """Tile rows of (N, C, H, W) images in [0, 1] into one labelled PNG (atomically): a header row
    with the prompts, a left column with ``row_labels``, images enlarged per :func:`tile_scale`."""
    from PIL import Image, ImageDraw

    from ..lcm_core.atomic_write import atomic_file

    n_cols, (c, h, w) = rows[0].shape[0], rows[0].shape[1:]
    geo = grid_geometry(len(rows), n_cols, h, w)
    th, tw = geo["tile"]
    canvas = Image.new("RGB", geo["size"], (255, 255, 255))
    for r, row in enumerate(rows):
        for j, img in enumerate(row):
            array = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            array = array.repeat(geo["scale"], axis=0).repeat(geo["scale"], axis=1)  # nearest-neighbour
            tile = Image.fromarray(array[:, :, 0], "L") if c == 1 else Image.fromarray(array[:, :, :3], "RGB")
            canvas.paste(tile.convert("RGB"), (geo["left"] + j * tw, geo["top"] + r * th))
    draw, font = ImageDraw.Draw(canvas), _font()
    for j, prompt in enumerate(prompts or []):
        for k, line in enumerate(_wrap(prompt, font, tw - 4, HEADER_LINES)):
            draw.text((geo["left"] + j * tw + 2, 3 + k * (FONT_SIZE + 3)), line, fill=(0, 0, 0), font=font)
    for r, label in enumerate(row_labels or []):
        draw.text((4, geo["top"] + r * th + th // 2 - FONT_SIZE // 2), label, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def run_validation(teacher: Teacher, unet, cfg, step: int, output_dir: Path, device, autocast, solver,
                   prompts: list[str] | None = None, text: dict | None = None) -> list[str]:
    """Write ``validation/step-XXXXXXXX.png`` and return its path(s); empty if the schedule is unsupported
    or there is no prompt. ``prompts``: see :func:`validation_prompts` (default ``validation.prompts``);
    ``text``: their embeddings when the text encoders were released (``training/offload.py``)."""
    prompts = list(cfg.validation.prompts or []) if prompts is None else prompts
    if _schedule_of(teacher) is None or not prompts:
        return []
    from ..lcm_core.sampling_recipe import recipe_timesteps
    from .export import adapter_recipe

    resolution = cfg.validation.resolution or cfg.data.resolution
    recipe = adapter_recipe(cfg)
    gamma = recipe.gamma if recipe.gamma is not None else 0.3
    # a normal-CFG adapter (recipe cfg > 1) is sampled with real CFG; guided ones at cfg 1 as before
    uncond = teacher.uncond_text(cfg.lcd.uncond, device) if recipe.cfg != 1.0 else None
    was_training = unet.training
    unet.eval()
    try:
        rows = [
            sample_student(teacher, unet, prompts, s, resolution, cfg.validation.seed, device, autocast, solver,
                           objective=recipe.sampler, gamma=gamma, text=text, timesteps=recipe_timesteps(recipe, s),
                           guidance=recipe.cfg, uncond=uncond)
            for s in cfg.validation.steps
        ]
    finally:
        unet.train(was_training)
    path = save_grid(rows, Path(output_dir) / "validation" / f"step-{step:08d}.png", prompts,
                     [step_label(s) for s in cfg.validation.steps])
    return [os.fspath(path)]
