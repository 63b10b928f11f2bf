"""Wrap an eps-prediction network into a k-diffusion denoiser ``model(x, sigma) -> x0``.

The samplers in :mod:`.sampling` work in sigma space (``x = x0 + σ·ε``, ComfyUI/k-diffusion).
An SD UNet predicts ε from the VP-scaled input at an integer timestep. :class:`EpsDenoiser`
does the conversion exactly like ComfyUI's ``BaseModel.apply_model`` with ``EPS`` model
sampling:

* ``t = schedule.sigma_to_timestep(σ)`` (nearest table timestep, ``ModelSamplingDiscrete.timestep``);
* ``x_in = x / sqrt(σ² + 1)`` (``EPS.calculate_input``; equals diffusers' ``sample``);
* ``x0 = x - σ·ε`` (``EPS.calculate_denoised``; equals diffusers'
  ``(sample - sqrt(1-ᾱ)·ε)/sqrt(ᾱ)``),

then optionally applies the LCM boundary condition (:mod:`.boundary`):

* ``boundary=None``: plain ε model (TCD, ordinary samplers);
* ``boundary="diffusers"``: ``c_out·x0 + c_skip·x_in`` — ``LCMScheduler.step``'s ``denoised``;
* ``boundary="comfyui"``: ``c_out·x0 + c_skip·x`` — ComfyUI ``LCM.calculate_denoised``.
"""
from __future__ import annotations

from typing import Callable

import torch

from .boundary import SIGMA_DATA, TIMESTEP_SCALING, consistency_output
from .errors import ConfigError
from .schedule import DiscreteSchedule

EpsFn = Callable[..., torch.Tensor]
_BOUNDARIES = (None, "diffusers", "comfyui")
# k-diffusion/ComfyUI put these in extra_args for the model wrapper; an eps network does not want them.
_SAMPLER_ONLY_KEYS = ("seed", "denoise_mask", "model_options")


def eps_to_denoised(x: torch.Tensor, sigma, eps: torch.Tensor, timestep, boundary: str | None = None,
                    sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING) -> torch.Tensor:
    """Sigma-space x0 estimate from an ε prediction, with the chosen LCM boundary convention.

    ``x``: unscaled model input; ``sigma``/``timestep``: scalar or one per batch item.
    A ComfyUI ``ModelSampling`` subclass can call this from ``calculate_denoised(sigma,
    model_output, model_input)`` with ``timestep=self.timestep(sigma)`` to get the
    diffusers-exact LCM output (``boundary="diffusers"``).
    """
    if boundary not in _BOUNDARIES:
        raise ConfigError("eps_to_denoised", f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
    s = torch.as_tensor(sigma, device=x.device).to(x.dtype)
    s = s.reshape(()) if s.numel() == 1 else s.reshape(s.shape[:1] + (1,) * (x.ndim - 1))
    x0 = x - eps * s
    if boundary is None:
        return x0
    skip_input = x / (s**2 + 1.0) ** 0.5 if boundary == "diffusers" else x
    return consistency_output(skip_input, x0, timestep, sigma_data, timestep_scaling)


class EpsDenoiser:
    """k-diffusion denoiser over ``eps_fn(x_scaled, timesteps, **kwargs) -> eps``.

    ``timesteps`` is an int64 tensor with one entry per batch item. ``__call__(x, sigma,
    **extra_args)`` returns the x0 estimate in sigma space; ``extra_args`` are passed on
    to ``eps_fn`` (minus ComfyUI sampler keys ``seed``, ``denoise_mask``, ``model_options``).
    """

    def __init__(self, eps_fn: EpsFn, schedule: DiscreteSchedule | None = None, boundary: str | None = None,
                 sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
        if boundary not in _BOUNDARIES:
            raise ConfigError("EpsDenoiser", f"boundary must be one of {_BOUNDARIES}, got {boundary!r}")
        self.eps_fn = eps_fn
        self.schedule = DiscreteSchedule() if schedule is None else schedule
        self.boundary = boundary
        self.sigma_data = sigma_data
        self.timestep_scaling = timestep_scaling

    def __call__(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        kwargs = {k: v for k, v in extra_args.items() if k not in _SAMPLER_ONLY_KEYS}
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        t = self.schedule.sigma_to_timestep(sigma.cpu()).to(x.device)
        s = sigma.to(x.dtype).reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))
        eps = self.eps_fn(x / (s**2 + 1.0) ** 0.5, t, **kwargs)
        return eps_to_denoised(x, sigma, eps, t, self.boundary, self.sigma_data, self.timestep_scaling)


def unet_eps_fn(unet, encoder_hidden_states: torch.Tensor, negative_encoder_hidden_states: torch.Tensor | None = None,
                guidance_scale: float = 1.0, added_cond_kwargs: dict | None = None,
                negative_added_cond_kwargs: dict | None = None, timestep_cond: torch.Tensor | None = None) -> EpsFn:
    """``eps_fn`` for a diffusers ``UNet2DConditionModel`` (ε prediction), with optional CFG.

    CFG as diffusers' SD/SDXL pipelines: the batch is ``[negative, positive]`` and
    ``ε = ε_neg + g·(ε_pos − ε_neg)``; used when ``guidance_scale > 1`` and negative
    embeddings are given (LCM-LoRA: g in 1..2). ``timestep_cond`` is the LCM w-embedding
    of full LCM models (``time_cond_proj_dim``), ``added_cond_kwargs`` SDXL's
    ``text_embeds``/``time_ids``.
    """
    cfg = guidance_scale > 1.0 and negative_encoder_hidden_states is not None
    if cfg:
        ehs = torch.cat([negative_encoder_hidden_states, encoder_hidden_states])
        if added_cond_kwargs is not None:
            neg = negative_added_cond_kwargs if negative_added_cond_kwargs is not None else added_cond_kwargs
            added = {k: torch.cat([neg[k], v]) for k, v in added_cond_kwargs.items()}
        else:
            added = None
        tcond = torch.cat([timestep_cond, timestep_cond]) if timestep_cond is not None else None
    else:
        ehs, added, tcond = encoder_hidden_states, added_cond_kwargs, timestep_cond

    def eps_fn(x_scaled: torch.Tensor, t: torch.Tensor, **_ignored) -> torch.Tensor:
        dtype = unet.dtype
        inp = torch.cat([x_scaled, x_scaled]) if cfg else x_scaled
        tt = torch.cat([t, t]) if cfg else t
        out = unet(inp.to(dtype), tt, encoder_hidden_states=ehs.to(dtype), timestep_cond=tcond,
                   added_cond_kwargs=added, return_dict=False)[0].to(x_scaled.dtype)
        if cfg:
            neg_out, pos_out = out.chunk(2)
            return neg_out + guidance_scale * (pos_out - neg_out)
        return out

    return eps_fn


def unet_denoiser(unet, encoder_hidden_states: torch.Tensor, *, boundary: str | None = "diffusers",
                  schedule: DiscreteSchedule | None = None, **cond) -> EpsDenoiser:
    """k-diffusion denoiser for a diffusers UNet (LCM boundary in diffusers convention by default).

    ``cond``: ``negative_encoder_hidden_states``, ``guidance_scale``, ``added_cond_kwargs``,
    ``negative_added_cond_kwargs``, ``timestep_cond`` (see :func:`unet_eps_fn`). Use
    ``boundary=None`` for TCD or ordinary samplers.
    """
    return EpsDenoiser(unet_eps_fn(unet, encoder_hidden_states, **cond), schedule=schedule, boundary=boundary)
