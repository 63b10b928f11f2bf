"""The DDIM ODE solver of latent consistency distillation (LCM paper §4.2/§4.3, Algorithm 1).

Follows diffusers ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py``:
``DDIMSolver`` (ref. l. 416-441), ``get_predicted_original_sample`` (l. 373-389),
``get_predicted_noise`` (l. 392-407) and the timestep sampling in the training loop (l. 1259-1263):

* solver grid ("trailing" spacing): ``tau_i = (i + 1) * k - 1`` for i = 0..N-1, k = T // N
  (N = 50, k = 20 → 19, 39, ..., 999);
* a training pair is ``t_{n+k} = tau_i`` (``start``) and ``t_n = max(tau_i - k, 0)``;
* one DDIM step (Song et al. 2021, Eq. 12, η = 0) from ``t_{n+k}`` to ``t_n`` given the (guided)
  x0 and ε estimates: ``z_{t_n} = sqrt(ᾱ_prev) x0 + sqrt(1 − ᾱ_prev) ε`` with ``ᾱ_prev = ᾱ[tau_{i-1}]``
  and ``ᾱ[0]`` for i = 0 (the reference's ``ddim_alpha_cumprods_prev``), i.e. exactly
  ``ᾱ[t_n]``.

Everything is computed in float32 schedule tensors, as the reference; a float64 ``alphas_cumprod`` keeps float64
(the exact step, which the reference-step parity tests compare with the reference's own float64 run).
"""
from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def gather_at(values: torch.Tensor, index: torch.Tensor, ndim: int) -> torch.Tensor:
    """``values[index]`` reshaped to broadcast over a (B, ...) sample of ``ndim`` dims (ref. ``extract_into_tensor``)."""
    out = values.to(index.device).gather(-1, index)
    return out.reshape(index.shape[0], *((1,) * (ndim - 1)))


class DDIMSolver:
    """DDIM on the ``num_ddim_timesteps`` grid of a discrete schedule ``alphas_cumprod`` (length T; float32, or float64
    when given float64)."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_ddim_timesteps: int = 50):
        alphas_cumprod = torch.as_tensor(alphas_cumprod).cpu()
        alphas_cumprod = alphas_cumprod.to(torch.float64 if alphas_cumprod.dtype == torch.float64 else torch.float32)
        num_train = alphas_cumprod.shape[0]
        if not 1 <= num_ddim_timesteps <= num_train:
            raise ValueError(f"num_ddim_timesteps must be in [1, {num_train}], got {num_ddim_timesteps}")
        self.num_train_timesteps = num_train
        self.num_ddim_timesteps = num_ddim_timesteps
        self.skip = num_train // num_ddim_timesteps  # k (ref: topk = T // num_ddim_timesteps)
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1, dtype=torch.int64) * self.skip - 1
        self.alphas_cumprod = alphas_cumprod
        self.alpha_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])
        # Noise-level schedules sqrt(ᾱ) and sqrt(1 − ᾱ) (ref. ``alpha_schedule`` / ``sigma_schedule``).
        self.alpha_schedule = alphas_cumprod.sqrt()
        self.sigma_schedule = (1 - alphas_cumprod).sqrt()

    def to(self, device) -> "DDIMSolver":
        for name in ("timesteps", "alphas_cumprod", "alpha_prev", "alpha_schedule", "sigma_schedule"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def start_and_target_timesteps(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_{n+k}, t_n)`` for solver indices ``index`` (ref. l. 1261-1263)."""
        start = self.timesteps.to(index.device)[index]
        return start, torch.clamp(start - self.skip, min=0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process ``sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε`` (``DDPMScheduler.add_noise``)."""
        a = gather_at(self.alpha_schedule, timesteps, x0.ndim).to(x0.dtype)
        s = gather_at(self.sigma_schedule, timesteps, x0.ndim).to(x0.dtype)
        return a * x0 + s * noise

    def predicted_x0(self, model_output, timesteps, sample, prediction_type: str = "epsilon"):
        """x0 estimate from the model output (ref. ``get_predicted_original_sample``)."""
        a = gather_at(self.alpha_schedule, timesteps, sample.ndim)
        s = gather_at(self.sigma_schedule, timesteps, sample.ndim)
        if prediction_type == "epsilon":
            return (sample - s * model_output) / a
        if prediction_type == "v_prediction":
            return a * sample - s * model_output
        if prediction_type == "sample":
            return model_output
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

    def predicted_eps(self, model_output, timesteps, sample, prediction_type: str = "epsilon"):
        """ε estimate from the model output (ref. ``get_predicted_noise``)."""
        a = gather_at(self.alpha_schedule, timesteps, sample.ndim)
        s = gather_at(self.sigma_schedule, timesteps, sample.ndim)
        if prediction_type == "epsilon":
            return model_output
        if prediction_type == "v_prediction":
            return a * model_output + s * sample
        if prediction_type == "sample":
            return (sample - a * model_output) / s
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")

    def ddim_step(self, pred_x0: torch.Tensor, pred_eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One η = 0 DDIM step from ``tau_index`` to the previous grid point (ref. ``DDIMSolver.ddim_step``)."""
        a_prev = gather_at(self.alpha_prev, index, pred_x0.ndim)
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * pred_eps
