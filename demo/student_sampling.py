"""Few-step sampling of a UNet that carries a distilled adapter: the project's own LCM and TCD samplers.

Uses exactly what the ComfyUI nodes use: ``lcm_core.timesteps.lcm_timesteps`` /
``tcd_timesteps`` (diffusers ``LCMScheduler`` / ``TCDScheduler.set_timesteps``),
``lcm_core.denoisers.unet_denoiser`` (ε → x0; the LCM boundary condition in diffusers convention
for an LCM-LoRA, none for a TCD adapter, whose map has no c_skip/c_out) and
``lcm_core.sampling.sample_lcm`` (LCM paper Algorithm 1) / ``sample_tcd`` (TCD paper Algorithm 4,
Strategic Stochastic Sampling with γ). A phased adapter (PCM) is sampled as its recipe says
(``sample_phased_student``): ``sample_tcd`` at γ 0 on ``lcm_core.phased_timesteps``' phase edges.
No CFG by default (guidance 1): the adapters were distilled with ω baked in, so each step is one
UNet evaluation.

``guidance_scale > 1`` with an ``uncond`` (negative) embedding runs real CFG
(``ε = ε(neg) + g·(ε(cond) − ε(neg))``, two evaluations per step); ``cfg_steps = k`` limits it to the
first k steps (the negative prompt shapes the layout while the noise is high; later steps cost one
evaluation), so a run costs ``steps + k`` UNet evaluations. ``cfg_interval = (lo, hi)`` instead guides the
steps whose timestep lies in ``[lo, hi]`` (guidance in a limited interval, Kynkäänniemi et al. 2024,
arXiv 2404.07724): no guidance at the highest noise, where it costs diversity.
"""
from __future__ import annotations

import time

import torch

from .teacher_samplers import SampleResult


class _CfgOnSteps:
    """A k-diffusion denoiser that is ``guided`` on the calls (steps) numbered in ``steps`` and ``plain`` otherwise."""

    def __init__(self, guided, plain, steps: set[int]):
        self.guided, self.plain, self.steps, self.calls = guided, plain, set(steps), 0

    def __call__(self, x, sigma, **kwargs):
        fn = self.guided if self.calls in self.steps else self.plain
        self.calls += 1
        return fn(x, sigma, **kwargs)


def _denoiser(unet, cond, uncond, guidance_scale: float, cfg_steps: int | None, boundary, steps: int,
              cfg_interval: tuple[int, int] | None = None, timesteps: list[int] | None = None):
    """The denoiser and its UNet evaluations per image for ``steps`` steps (``timesteps``: the steps' own, needed
    with ``cfg_interval``)."""
    from ..lcm_core.denoisers import unet_denoiser

    plain = unet_denoiser(unet, cond, boundary=boundary)
    if not (guidance_scale > 1.0 and uncond is not None):
        return plain, steps
    guided = unet_denoiser(unet, cond, boundary=boundary, negative_encoder_hidden_states=uncond,
                           guidance_scale=guidance_scale)
    if cfg_interval is not None:
        on = {i for i, t in enumerate(timesteps[:steps]) if cfg_interval[0] <= int(t) <= cfg_interval[1]}
    else:
        on = set(range(steps if cfg_steps is None else max(0, min(int(cfg_steps), steps))))
    if len(on) >= steps:
        return guided, 2 * steps
    return _CfgOnSteps(guided, plain, on), steps + len(on)


@torch.no_grad()
def sample_lcm_student(unet, cond: torch.Tensor, noise: torch.Tensor, steps: int, seed: int = 0,
                       original_inference_steps: int = 50, guidance_scale: float = 1.0,
                       uncond: torch.Tensor | None = None, cfg_steps: int | None = None,
                       cfg_interval: tuple[int, int] | None = None) -> SampleResult:
    """LCM samples for per-image embeddings ``cond``; ``noise`` unit Gaussian (diffusers start:
    ``sample = noise``, i.e. ``x = noise·sqrt(1 + σ_max²)`` in sigma space)."""
    from ..lcm_core.sampling import sample_lcm
    from ..lcm_core.timesteps import lcm_timesteps, timesteps_to_sigmas

    start = time.perf_counter()
    ts = lcm_timesteps(steps, original_inference_steps)
    sigmas = timesteps_to_sigmas(ts).to(noise.device)
    model, nfe = _denoiser(unet, cond, uncond, guidance_scale, cfg_steps, "diffusers", steps, cfg_interval, list(ts))
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5
    out = sample_lcm(model, x, sigmas, extra_args={"seed": seed}, disable=True)
    return SampleResult(images=out, nfe=nfe, seconds=time.perf_counter() - start)


@torch.no_grad()
def sample_tcd_student(unet, cond: torch.Tensor, noise: torch.Tensor, steps: int, gamma: float = 0.3, seed: int = 0,
                       guidance_scale: float = 1.0, uncond: torch.Tensor | None = None,
                       cfg_steps: int | None = None, timesteps: list[int] | None = None,
                       cfg_interval: tuple[int, int] | None = None) -> SampleResult:
    """TCD samples (γ = ``gamma``; diffusers ``TCDScheduler`` timesteps on the 50-step grid, or the given
    ``timesteps`` (a phased adapter's, ``lcm_core.phased_timesteps``), plain ε model sampling,
    diffusers' final step) for per-image embeddings ``cond``."""
    from ..lcm_core.sampling import sample_tcd
    from ..lcm_core.timesteps import tcd_timesteps, timesteps_to_sigmas

    start = time.perf_counter()
    ts = tcd_timesteps(steps) if timesteps is None else timesteps
    sigmas = timesteps_to_sigmas(ts).to(noise.device)
    model, nfe = _denoiser(unet, cond, uncond, guidance_scale, cfg_steps, None, steps, cfg_interval, list(ts))
    x = noise * (1.0 + sigmas[0] ** 2) ** 0.5
    out = sample_tcd(model, x, sigmas, extra_args={"seed": seed}, disable=True, gamma=gamma)
    return SampleResult(images=out, nfe=nfe, seconds=time.perf_counter() - start)


def phased_recipe(adapter, source: str = "PCM adapter"):
    """The sampling recipe a phased (PCM / TSCD) adapter carries in its metadata
    (``lcm_core.sampling_recipe.read_recipe``: objective, phases, γ 0); an error naming ``source`` when
    the adapter has no phased recipe (the demo then cannot know its phase edges)."""
    from ..lcm_core.errors import LcmLoraError
    from ..lcm_core.sampling_recipe import PHASED, read_recipe

    recipe = read_recipe(getattr(adapter, "metadata", None))
    if recipe is None or recipe.objective not in PHASED:
        raise LcmLoraError(source, "carries no phased sampling recipe (metadata lcm_lora.objective pcm/tscd and "
                                   "lcm_lora.phases, written by lcm-lora train with lcd.objective=pcm)")
    return recipe


@torch.no_grad()
def sample_phased_student(unet, cond: torch.Tensor, noise: torch.Tensor, steps: int, recipe=None, seed: int = 0,
                          guidance_scale: float | None = None, uncond: torch.Tensor | None = None,
                          cfg_steps: int | None = None) -> SampleResult:
    """A phased adapter's samples: the TCD sampler at the recipe's γ (0: deterministic edge-to-edge jumps) on
    the recipe's phase edges (``lcm_core.sampling_recipe.recipe_timesteps`` →
    ``lcm_core.phased_timesteps.phased_timesteps(steps, phases, objective)``), as the LCM KSampler's
    ``mode: auto`` does for such an adapter in ComfyUI.

    ``guidance_scale`` None: the recipe's cfg — 1 for a guided adapter; for a normal-CFG one
    (``lcd.solver_guidance=false``) its recommended cfg on every step, with ``uncond`` as the negative."""
    from ..lcm_core.sampling_recipe import recipe_timesteps

    if guidance_scale is None:
        guidance_scale = float(recipe.cfg)
    if guidance_scale != 1.0 and uncond is None:
        raise ValueError(f"cfg {guidance_scale:g} needs uncond (the adapter's recipe asks for real CFG)")
    return sample_tcd_student(unet, cond, noise, steps, gamma=float(recipe.gamma or 0.0), seed=seed,
                              guidance_scale=guidance_scale, uncond=uncond, cfg_steps=cfg_steps,
                              timesteps=recipe_timesteps(recipe, steps))
