"""Consistency-model boundary conditions (LCM paper §3, Eq. 4; Song et al. 2023 Eq. 7).

f_θ(x, t) = c_skip(t)·x + c_out(t)·F_θ(x, t), with c_skip(0) = 1 and c_out(0) = 0, so
f_θ(x, 0) = x. Discrete-timestep form used by LCM-LoRA (diffusers
``LCMScheduler.get_scalings_for_boundary_condition_discrete``): the timestep is
multiplied by ``timestep_scaling`` (10) and sigma_data is 0.5.

Which ``x`` multiplies c_skip differs between the two implementations we target:

* diffusers (``LCMScheduler.step``, ``train_lcm_distill_lora_sd.py``): the VP-scaled model
  input ``sample = sqrt(ᾱ_t)·x_sigma = x_sigma / sqrt(1 + σ_t²)``;
* ComfyUI (``comfy_extras.nodes_model_advanced.LCM.calculate_denoised``): the unscaled
  sigma-space input ``x_sigma = x0 + σ_t·ε``.

Hence, for the same model output, exactly::

    denoised_comfyui - denoised_diffusers = c_skip(t) · (1 - 1/sqrt(1 + σ_t²)) · x_sigma

(:func:`comfyui_minus_diffusers`). With timestep_scaling 10 and SD's schedule the factor
``c_skip(t)·(1 - 1/sqrt(1 + σ_t²))`` is at most 6.2e-8 for every t ≥ 19 (all LCM timesteps with
50 original steps; maximum at t = 19), i.e. below float32 resolution of ``x``; it is 2.1e-6 at
t = 1 and 4.3e-4 at t = 0.
"""
from __future__ import annotations

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_scalings(timestep, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
    """Return ``(c_skip, c_out)`` for integer (or float) timesteps ``t`` in [0, 999]."""
    t = torch.as_tensor(timestep, dtype=torch.float32) * timestep_scaling
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _per_batch(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = v.to(device=like.device, dtype=like.dtype)
    if v.numel() == 1:
        return v.reshape(())
    return v.reshape(v.shape[:1] + (1,) * (like.ndim - 1))


def consistency_output(sample: torch.Tensor, pred_x0: torch.Tensor, timestep,
                       sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING) -> torch.Tensor:
    """Paper Eq. 4: ``c_skip(t)·sample + c_out(t)·pred_x0`` (``timestep``: scalar or one per batch item).

    Diffusers convention: ``sample`` is the VP-scaled model input (as in ``LCMScheduler.step``
    and the LCM distillation scripts). Passing the unscaled sigma-space ``x`` instead gives
    ComfyUI's ``LCM`` model-sampling output.
    """
    c_skip, c_out = boundary_scalings(timestep, sigma_data, timestep_scaling)
    return _per_batch(c_out, pred_x0) * pred_x0 + _per_batch(c_skip, sample) * sample


def comfyui_minus_diffusers(x_sigma: torch.Tensor, sigma, timestep,
                            sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING) -> torch.Tensor:
    """Closed-form gap ``c_skip(t)·(1 - 1/sqrt(1 + σ²))·x_sigma`` between the two conventions."""
    c_skip, _ = boundary_scalings(timestep, sigma_data, timestep_scaling)
    sigma = _per_batch(torch.as_tensor(sigma, dtype=torch.float32), x_sigma)
    return _per_batch(c_skip, x_sigma) * (1 - 1 / (sigma**2 + 1) ** 0.5) * x_sigma
