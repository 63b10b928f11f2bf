"""Prompts-only mode: distil without a dataset by sampling the training latents from the teacher.

Users who fine-tuned a checkpoint often have prompts but no images. Every (prompt, sample)
pair gets its own seed, is sampled with the teacher (DDIM, ``prompts_only.steps`` steps on the
trailing grid, classifier-free guidance ``ε_u + g (ε_c − ε_u)``) and stored as one
safetensors file holding the scaled latent. Files are written atomically and named by their
index inside a folder keyed by the teacher identity and the sampling settings, so an
interrupted generation resumes where it stopped and changed settings never reuse stale samples.
Processes of a multi-process run split the work and meet at a barrier.

LCD then treats each latent as a data point (a posterior with zero variance).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .cache import load_tensors, save_tensors
from .data import Record
from .teacher import Teacher, build_cond, unet_forward


def _sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"lcm-lora-prompt-{seed}-{prompt_index}-{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def sample_teacher(teacher: Teacher, prompts: list[str], seeds: list[int], resolution: int, steps: int,
                   guidance_scale: float, device, autocast) -> torch.Tensor:
    """Teacher DDIM samples (scaled latents, float32) for ``prompts`` with per-sample ``seeds``."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(
        teacher.noise_scheduler.config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False
    )
    scheduler.set_timesteps(steps, device=device)
    n = len(prompts)
    size = resolution // teacher.downsample
    latents = torch.stack(
        [torch.randn((teacher.latent_channels, size, size), generator=torch.Generator().manual_seed(s)) for s in seeds]
    ).to(device)
    latents = latents * scheduler.init_noise_sigma
    time_ids = None
    if teacher.uses_pooled:
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * n, dtype=torch.float32, device=device)
    cond = build_cond(teacher.encode_text(prompts, device), time_ids)
    uncond_text = {k: v.expand(n, *v.shape[1:]) for k, v in teacher.uncond_text("auto", device).items()}
    uncond = build_cond(uncond_text, time_ids)
    use_cfg = guidance_scale != 1.0
    both = {
        "encoder_hidden_states": torch.cat([uncond["encoder_hidden_states"], cond["encoder_hidden_states"]]),
        "added_cond_kwargs": (
            {k: torch.cat([uncond["added_cond_kwargs"][k], v]) for k, v in cond["added_cond_kwargs"].items()}
            if "added_cond_kwargs" in cond else None
        ),
    }
    for t in scheduler.timesteps:
        tt = torch.full((n,), int(t), device=device, dtype=torch.int64)
        with autocast():
            if use_cfg:
                out = unet_forward(teacher.unet, torch.cat([latents, latents]), torch.cat([tt, tt]), both).float()
                out_u, out_c = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)  # linear, so valid for ε and v outputs alike
            else:
                out = unet_forward(teacher.unet, latents, tt, cond).float()
        latents = scheduler.step(out, t, latents).prev_sample
    return latents.float()


def generate_prompt_samples(teacher: Teacher, prompts: list[str], po_cfg, resolution: int, root: Path, device,
                            autocast, rank: int = 0, world: int = 1, barrier=lambda: None, progress_factory=None) -> list[Record]:
    """Sample (or reuse) ``samples_per_prompt`` latents per prompt; return them as training records."""
    settings = dict(teacher=teacher.identity, steps=po_cfg.steps, guidance=po_cfg.guidance_scale,
                    resolution=resolution, seed=po_cfg.seed)
    folder = Path(root) / hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    work = [(p, j) for p in range(len(prompts)) for j in range(po_cfg.samples_per_prompt)]
    path_of = {(p, j): folder / f"p{p:06d}_s{j:03d}.safetensors" for p, j in work}

    def valid(path: Path, prompt: str) -> bool:
        if not path.is_file():
            return False
        try:
            return load_tensors(path)[1].get("prompt") == prompt
        except Exception:
            return False

    todo = [w for k, w in enumerate(work) if k % world == rank and not valid(path_of[w], prompts[w[0]])]
    bar = progress_factory(len(todo), "teacher samples") if progress_factory and todo else None
    for start in range(0, len(todo), po_cfg.batch_size):
        chunk = todo[start : start + po_cfg.batch_size]
        seeds = [_sample_seed(po_cfg.seed, p, j) for p, j in chunk]
        latents = sample_teacher(teacher, [prompts[p] for p, _ in chunk], seeds, resolution, po_cfg.steps,
                                 po_cfg.guidance_scale, device, autocast)
        for (p, j), latent, seed in zip(chunk, latents, seeds):
            save_tensors(path_of[(p, j)], {"latent": latent}, {"prompt": prompts[p], "seed": str(seed)})
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    barrier()
    return [Record(captions=[prompts[p]], width=resolution, height=resolution, latent_file=str(path_of[(p, j)])) for p, j in work]
