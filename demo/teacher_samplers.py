"""The teacher's few-step baselines: DDIM, Euler and DPM++ 2M, all with classifier-free guidance.

Each sampler is the diffusers scheduler itself (``DDIMScheduler``, ``EulerDiscreteScheduler``,
``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++", solver_order=2``), built
from the teacher's own scheduler config, driven by the loop every diffusers pipeline runs
(``scale_model_input`` → UNet → ``step``). Two settings differ from SD's shipped config, both
in the teacher's favour at few steps:

* ``timestep_spacing="trailing"`` (Lin et al. 2024, "Common Diffusion Noise Schedules and
  Sample Steps are Flawed", Table 2): the first step starts at t = 999. SD's "leading"
  spacing starts a 1-step DDIM run at t = 1, i.e. from pure noise with no denoising;
* DDIM ``set_alpha_to_one=True``: the last step lands on the clean x0 estimate (Euler and
  DPM++ end at σ = 0 anyway).

UNet evaluations (NFE) are counted honestly: with CFG every step costs two (conditional and
unconditional halves of one batched call, as diffusers' pipelines do).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

SAMPLERS = ("ddim", "euler", "dpmpp_2m")
SAMPLER_LABELS = {"ddim": "DDIM", "euler": "Euler", "dpmpp_2m": "DPM++ 2M", "lcm": "LCM", "tcd": "TCD",
                  "pcm": "phase edges, TCD γ 0"}
MODEL_LABELS = {"teacher": "teacher", "lcm_lora": "LCM-LoRA", "tcd": "TCD adapter", "pcm": "PCM adapter"}


def steps_text(k: int) -> str:
    """"1 step", "4 steps": the step count in the demo's labels."""
    return f"{k} step" if k == 1 else f"{k} steps"


def make_scheduler(name: str, scheduler_config: dict):
    """A fresh diffusers scheduler for ``name`` from the teacher's ``scheduler_config``."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    # Explicit keyword overrides: a config's "_use_default_values" entries are otherwise replaced
    # by the target class's defaults (diffusers ConfigMixin.from_config), e.g. "leading" spacing.
    cfg = {k: v for k, v in scheduler_config.items() if k != "_use_default_values"}
    common = dict(timestep_spacing="trailing", prediction_type="epsilon")
    if name == "ddim":
        return DDIMScheduler.from_config(cfg, set_alpha_to_one=True, clip_sample=False, **common)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(cfg, **common)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero", **common)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


@dataclass
class SampleResult:
    images: torch.Tensor
    nfe: int  # UNet evaluations per image (a CFG step counts 2)
    seconds: float


@torch.no_grad()
def run_scheduler(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, steps: int,
                  noise: torch.Tensor, evals_per_call: int = 1) -> SampleResult:
    """Sample with a diffusers scheduler; ``eps_fn(sample, t_batch)`` returns the (guided) ε.

    ``noise`` is unit Gaussian; the start is ``noise · scheduler.init_noise_sigma`` as in
    diffusers' ``prepare_latents``.
    """
    start = time.perf_counter()
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    calls = 0
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        eps = eps_fn(inp, t.expand(x.shape[0]))
        calls += 1
        x = scheduler.step(eps, t, x, return_dict=False)[0]
    return SampleResult(images=x, nfe=calls * evals_per_call, seconds=time.perf_counter() - start)


def sample_teacher(unet, cond: torch.Tensor, uncond: torch.Tensor | None, noise: torch.Tensor, sampler: str,
                   steps: int, scheduler_config: dict, guidance_scale: float = 3.0) -> SampleResult:
    """Teacher samples for per-image text embeddings ``cond`` (``N×L×D``), CFG against ``uncond``."""
    from ..lcm_core.denoisers import unet_eps_fn

    cfg = guidance_scale > 1.0 and uncond is not None
    fn = unet_eps_fn(unet, cond, negative_encoder_hidden_states=uncond if cfg else None,
                     guidance_scale=guidance_scale)
    return run_scheduler(fn, make_scheduler(sampler, scheduler_config), steps, noise, evals_per_call=2 if cfg else 1)
