"""Consistency-model boundary conditions (LCM paper §3, Eq. 4; Song et al. 2023 Eq. 7).

f_θ(x, t) = c_skip(t)·x + c_out(t)·F_θ(x, t), with c_skip(0) = 1 and c_out(0) = 0, so
f_θ(x, 0) = x. Discrete-timestep form used by LCM-LoRA (diffusers
``LCMScheduler.get_scalings_for_boundary_condition_discrete``): the timestep is
multiplied by ``timestep_scaling`` (10) and sigma_data is 0.5.
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
