"""LCM and TCD samplers as k-diffusion-style pure functions.

Signature (ComfyUI ``comfy.k_diffusion.sampling``; hand them to ``comfy.samplers.KSAMPLER``)::

    sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **options)

``model(x, sigma_batch, **extra_args)`` returns the x0 estimate ("denoised") in sigma space
(``x = x0 + σ·ε``, unscaled); ``sigmas`` is descending and normally ends with 0;
``noise_sampler(sigma, sigma_next)`` returns unit Gaussian noise shaped like ``x``
(default: :func:`default_noise_sampler` seeded from ``extra_args["seed"]``, bit-identical to
ComfyUI's). ``callback`` gets ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``; ``disable``
hides the tqdm bar. Everything runs under ``torch.no_grad``.

Relation to diffusers (VP space, ``sample = x / sqrt(1 + σ²)``): with
:class:`~.denoisers.EpsDenoiser` and ``timesteps_to_sigmas(lcm_timesteps(...))``, every
intermediate ``x / sqrt(1 + σ_next²)`` equals ``LCMScheduler.step(...).prev_sample`` /
``TCDScheduler.step(...).prev_sample`` for the same ε outputs and noise (tests: ≤ 1e-5 fp32).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from .errors import ConfigError
from .schedule import DiscreteSchedule


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """Unit normal noise like ``x`` from one generator seeded with ``seed``.

    Same stream as ComfyUI's ``default_noise_sampler`` and as diffusers' ``randn_tensor``
    with ``torch.Generator(x.device).manual_seed(seed)`` (one draw of the whole batch per call).
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(int(seed))

    def noise_sampler(sigma, sigma_next):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return noise_sampler


# Seed offset of a re-noising stream independent of initial noise drawn with ``torch.manual_seed(seed)``.
INDEPENDENT_NOISE_SEED_OFFSET = 1_000_003


def independent_noise_seed(seed: int) -> int:
    """Seed of a re-noising stream independent of the initial noise drawn from ``seed``.

    A sampler that re-noises from ``default_noise_sampler(x, seed)`` on the CPU, where the initial noise
    came from ``torch.manual_seed(seed)`` (ComfyUI's ``comfy.sample.prepare_noise``, the demo's sample
    plans), draws that same noise ε₀ again as its first "fresh" noise. TCD then adds
    ``σ_down·ε̂ + σ_up·ε₀`` with ε̂ ≈ ε₀: noise of size σ_down + σ_up instead of
    sqrt(σ_down² + σ_up²) = σ_next (demo: TCD 4 steps γ 0.3 FD 66.7 vs 30.0; demo/README.md).
    """
    return (int(seed) + INDEPENDENT_NOISE_SEED_OFFSET) % 2**64  # torch generators take seeds below 2⁶⁴ (ComfyUI's max)


def comfyui_tcd_noise_sampler(x: torch.Tensor, seed: int | None, noise_sampler=None):
    """The re-noising noise sampler of the nodes' TCD path in ComfyUI (None: ``sample_tcd``'s default).

    ComfyUI draws the initial noise on the CPU (``prepare_noise``: ``torch.manual_seed(seed)``) and hands
    the sampler ``extra_args["seed"]`` = the same seed. On the CPU (``--cpu``, or any latent on the CPU)
    ``default_noise_sampler(x, seed)`` is then that very stream (see :func:`independent_noise_seed`), so
    there the stream is seeded with ``independent_noise_seed(seed)``. On other devices the generator is
    that device's own stream, already independent: kept as it is, so GPU results do not change. A
    ``noise_sampler`` given by the caller, or no seed, is left alone.
    """
    if noise_sampler is not None or seed is None or x.device.type != "cpu":
        return noise_sampler
    return default_noise_sampler(x, seed=independent_noise_seed(seed))


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """LCM multistep sampling (LCM paper Algorithm 1 / diffusers ``LCMScheduler.step``).

    Each step: ``denoised = model(x, σ_i)``; then ``x = denoised + σ_{i+1}·z`` while
    ``σ_{i+1} > 0`` (re-noising in sigma space, as ComfyUI's ``sample_lcm`` does through
    ``EPS.noise_scaling``), else ``x = denoised``. Numerically identical to ComfyUI's
    ``sample_lcm`` for an EPS-type model sampling.
    """
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x
    return x


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ConfigError("sample_tcd", f"{name} must be in [0, 1], got {value}")
    return value


def _tcd_timestep(sigma: torch.Tensor, schedule: DiscreteSchedule) -> torch.Tensor:
    """Float32 timestep of ``sigma`` (0 for σ = 0, as TCDScheduler's last step); snapped to integers within 1e-3."""
    if sigma <= 0:
        return torch.tensor(0.0)
    t = schedule.sigma_to_continuous_timestep(sigma.detach().float().cpu())
    r = t.round()
    return r if (t - r).abs() < 1e-3 else t


@torch.no_grad()
def sample_tcd(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
               gamma: float = 0.3, eta: float = 1.0, schedule: DiscreteSchedule | None = None,
               diffusers_final: bool = True):
    """TCD Strategic Stochastic Sampling (TCD paper, Zheng et al. 2024, Algorithm 4; diffusers ``TCDScheduler.step``).

    Per step from σ_i to σ_{i+1} (timestep t_next, 0 for σ = 0), with ``ε̂ = (x - denoised)/σ_i``:

    * ``s = floor((1 - gamma)·t_next)``; ``σ_s = σ(s)`` — jump back along the trajectory to s;
    * ``x = denoised + σ_down·ε̂ + σ_up·z`` with ``σ_up = eta·sqrt(σ_{i+1}² − σ_s²)`` and
      ``σ_down = sqrt(σ_s² + (1 − eta²)(σ_{i+1}² − σ_s²))`` (noise level stays σ_{i+1}).

    ``gamma`` is the paper's γ — what diffusers' ``TCDScheduler.step(eta=...)`` and community
    TCD nodes call "eta": 0 = deterministic, 1 = fully stochastic; default 0.3.
    ``eta`` here scales the freshly injected noise (DDIM/ancestral-style η, variance preserving):
    1.0 (default) is exactly TCD/diffusers, 0.0 replaces the fresh noise by the model's own ε̂
    (deterministic for any gamma). ``gamma = 0`` is deterministic for any eta.

    Last step (σ_{i+1} = 0): TCDScheduler lands on timestep 0, not on clean data; with
    ``diffusers_final=True`` (default) the result is its final latent
    ``sqrt(ᾱ_0)·x0 + sqrt(1−ᾱ_0)·ε̂ = (x0 + σ_min·ε̂)/sqrt(1 + σ_min²)`` (σ_min = σ(0) ≈ 0.029), so
    the image equals the diffusers pipeline's; ``diffusers_final=False`` returns the clean ``denoised``.

    ``schedule`` (default: SD's :class:`DiscreteSchedule`) gives σ ↔ timestep; pass the model's
    full schedule (a distilled view is replaced by its base).
    """
    gamma = _check_unit("gamma", gamma)
    eta = _check_unit("eta", eta)
    schedule = DiscreteSchedule() if schedule is None else schedule
    schedule = getattr(schedule, "base", schedule)
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if sigma <= 0:  # a repeated final 0 (hand-made or concatenated sigmas): already clean, as sample_lcm
            x = denoised
            continue
        eps = (x - denoised) / sigma
        # diffusers: torch.floor((1 - eta) * prev_timestep) with a long tensor -> float32 arithmetic
        t_s = torch.floor((1 - gamma) * _tcd_timestep(sigma_next, schedule).float())
        sigma_s = schedule.timestep_to_sigma(t_s).to(device=x.device, dtype=x.dtype)
        if sigma_next <= 0:
            if diffusers_final:
                x = (denoised + sigma_s * eps) / (sigma_s**2 + 1) ** 0.5
            else:
                x = denoised
            continue
        sigma_next = sigma_next.to(device=x.device, dtype=x.dtype)
        sigma_s = torch.minimum(sigma_s, sigma_next)
        if gamma > 0 and eta > 0:
            gap = sigma_next**2 - sigma_s**2
            sigma_up = eta * gap.clamp(min=0) ** 0.5
            sigma_down = (sigma_s**2 + (1 - eta**2) * gap).clamp(min=0) ** 0.5
            x = denoised + sigma_down * eps + sigma_up * noise_sampler(sigmas[i], sigmas[i + 1])
        else:
            x = denoised + sigma_next * eps
    return x


@torch.no_grad()
def sample_tcd_comfyui(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **options):
    """:func:`sample_tcd` as the nodes hand it to ComfyUI: re-noising from :func:`comfyui_tcd_noise_sampler`
    (on the CPU a stream independent of ComfyUI's initial noise); ``options`` go to :func:`sample_tcd`."""
    noise_sampler = comfyui_tcd_noise_sampler(x, (extra_args or {}).get("seed"), noise_sampler)
    mask = (extra_args or {}).get("denoise_mask")
    if mask is None or float(sigmas[-1]) > 0:
        return sample_tcd(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                          noise_sampler=noise_sampler, **options)
    # Inpainting (ComfyUI's denoise_mask): the model wrapper returns the input latent as ``denoised`` where the mask
    # keeps it, and ComfyUI's samplers end on ``denoised``; TCD's final latent adds σ(0)·ε̂ (diffusers' last step),
    # which would change the kept area. So the kept area takes the last ``denoised``, as with ComfyUI's samplers.
    last = {}

    def remember(step):
        last["denoised"] = step["denoised"]
        if callback is not None:
            callback(step)

    x = sample_tcd(model, x, sigmas, extra_args=extra_args, callback=remember, disable=disable,
                   noise_sampler=noise_sampler, **options)
    return x * mask + last["denoised"] * (1 - mask) if "denoised" in last else x
