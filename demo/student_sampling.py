"""Few-step sampling of a UNet that carries an LCM-LoRA: the project's own LCM sampler.

Uses exactly what the ComfyUI nodes use: ``lcm_core.timesteps.lcm_timesteps`` (diffusers
``LCMScheduler.set_timesteps``), ``lcm_core.denoisers.unet_denoiser`` (ε → x0 with the LCM
boundary condition, diffusers convention) and ``lcm_core.sampling.sample_lcm`` (LCM paper
Algorithm 1). No CFG (guidance 1): the LCM-LoRA was distilled with ω baked in, so each step
is one UNet evaluation.
"""
from __future__ import annotations

import time

import torch

from .teacher_samplers import SampleResult


@torch.no_grad()
def sample_lcm_student(unet, cond: torch.Tensor, noise: torch.Tensor, steps: int, seed: int = 0,
                       original_inference_steps: int = 50, guidance_scale: float = 1.0,
                       uncond: torch.Tensor | None = None) -> SampleResult:
    """LCM samples for per-image embeddings ``cond``; ``noise`` unit Gaussian (diffusers start:
    ``sample = noise``, i.e. ``x = noise·sqrt(1 + σ_max²)`` in sigma space)."""
    from ..lcm_core.denoisers import unet_denoiser
    from ..lcm_core.sampling import sample_lcm
    from ..lcm_core.timesteps import lcm_timesteps, timesteps_to_sigmas

    start = time.perf_counter()
    sigmas = timesteps_to_sigmas(lcm_timesteps(steps, original_inference_steps)).to(noise.device)
    cfg = guidance_scale > 1.0 and uncond is not None
    model = unet_denoiser(unet, cond, boundary="diffusers", negative_encoder_hidden_states=uncond if cfg else None,
                          guidance_scale=guidance_scale)
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5
    out = sample_lcm(model, x, sigmas, extra_args={"seed": seed}, disable=True)
    return SampleResult(images=out, nfe=steps * (2 if cfg else 1), seconds=time.perf_counter() - start)
