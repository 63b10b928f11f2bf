"""Stable Diffusion's discrete noise schedule and sigma <-> timestep conversion.

SD (1.x, 2.x, XL) is trained on 1000 discrete timesteps with "scaled_linear" betas
``beta_t = linspace(sqrt(0.00085), sqrt(0.012), 1000)[t] ** 2``;
``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`` (DDPM, Ho et al. 2020, Eq. 4).

Two spaces appear in this project:

* diffusers' VP ("scaled") space: ``sample = sqrt(ac_t) * x0 + sqrt(1 - ac_t) * eps``;
* k-diffusion / ComfyUI "sigma" space: ``x = x0 + sigma_t * eps`` with
  ``sigma_t = sqrt((1 - ac_t) / ac_t)``, so ``sample = x / sqrt(1 + sigma_t**2)``.

Two numeric conventions exist for the same schedule:

* ``convention="diffusers"``: betas and their cumulative product in float32
  (``LCMScheduler.__init__`` / ``TCDScheduler.__init__``). ``alphas_cumprod`` equals
  diffusers' bit for bit; sigmas are derived from it in float32.
* ``convention="comfyui"``: betas and cumulative product in float64, sigmas cast to
  float32 (``comfy.ldm.modules.diffusionmodules.util.make_beta_schedule`` +
  ``comfy.model_sampling.ModelSamplingDiscrete._register_schedule``). ``sigmas`` equal
  ComfyUI's bit for bit. The two conventions' sigmas differ by up to ~1.3e-5 relative
  (at small t, where ``1 - ᾱ_t`` cancels in float32), far below one timestep's spacing.

Timestep <-> sigma conversion follows ``ComfyUI ModelSamplingDiscrete``: ``timestep_to_sigma``
interpolates log-sigma linearly between neighbouring integer timesteps (clamped to
[0, T-1]); ``sigma_to_timestep`` returns the integer timestep whose log-sigma is nearest.
:class:`DistilledDiscreteSchedule` mirrors ComfyUI's ``ModelSamplingDiscreteDistilled``
(used by ``ModelSamplingDiscrete(sampling="lcm")``): only the LCM grid of
``original_inference_steps`` timesteps ``k*skip - 1`` is valid.
"""
from __future__ import annotations

import torch

from .errors import ConfigError

SD_NUM_TRAIN_TIMESTEPS = 1000
SD_BETA_START = 0.00085
SD_BETA_END = 0.012

_CONVENTIONS = ("diffusers", "comfyui")
_BETA_SCHEDULES = ("scaled_linear", "linear")


def _betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, dtype) -> torch.Tensor:
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=dtype) ** 2
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=dtype)


def _rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
    Algorithm 1) on a σ table, as ComfyUI's ``rescale_zero_terminal_snr_sigmas`` (its ``zsnr`` models): √ᾱ shifted so
    the last is 0 and scaled so the first is unchanged; the last ᾱ is then set to 4.8973451890853435e-08 (σ ≈ 4519)."""
    alphas_bar_sqrt = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


class DiscreteSchedule:
    """SD's discrete DDPM schedule (default: scaled_linear 0.00085 -> 0.012, 1000 steps).

    Attributes: ``betas``, ``alphas_cumprod`` (float32), ``sigmas`` and ``log_sigmas``
    (float32, index = timestep, ascending), ``sigma_min``, ``sigma_max``.
    """

    def __init__(
        self,
        num_train_timesteps: int = SD_NUM_TRAIN_TIMESTEPS,
        beta_start: float = SD_BETA_START,
        beta_end: float = SD_BETA_END,
        beta_schedule: str = "scaled_linear",
        convention: str = "diffusers",
        zero_terminal_snr: bool = False,
    ):
        if convention not in _CONVENTIONS:
            raise ConfigError("DiscreteSchedule", f"convention must be one of {_CONVENTIONS}, got {convention!r}")
        if zero_terminal_snr and convention != "comfyui":
            raise ConfigError("DiscreteSchedule", "zero_terminal_snr needs convention 'comfyui': diffusers' rescaled "
                                                  "schedule has ᾱ = 0 at the last timestep (an infinite σ)")
        if beta_schedule not in _BETA_SCHEDULES:
            raise ConfigError("DiscreteSchedule", f"beta_schedule must be one of {_BETA_SCHEDULES}, got {beta_schedule!r}")
        if int(num_train_timesteps) < 2:
            raise ConfigError("DiscreteSchedule", f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ConfigError("DiscreteSchedule", f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.beta_schedule = beta_schedule
        self.convention = convention

        dtype = torch.float32 if convention == "diffusers" else torch.float64
        betas = _betas(self.num_train_timesteps, beta_start, beta_end, beta_schedule, dtype)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.zero_terminal_snr = bool(zero_terminal_snr)
        if self.zero_terminal_snr:
            sigmas = _rescale_zero_terminal_snr_sigmas(sigmas)
            alphas_cumprod = 1 / (sigmas * sigmas + 1)
            betas = 1 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        self.betas = betas.float()
        self.alphas_cumprod = alphas_cumprod.float()
        # log taken before the float32 cast, as ModelSamplingDiscrete.set_sigmas does
        self._set_sigmas(sigmas.float(), sigmas.log().float())

    # -- table -----------------------------------------------------------------------
    def _set_sigmas(self, sigmas: torch.Tensor, log_sigmas: torch.Tensor | None = None) -> None:
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log() if log_sigmas is None else log_sigmas

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, "
            f"beta_end={self.beta_end}, beta_schedule={self.beta_schedule!r}, convention={self.convention!r}"
            + (", zero_terminal_snr=True)" if self.zero_terminal_snr else ")")
        )

    # -- conversions (ComfyUI ModelSamplingDiscrete.timestep / .sigma) --------------------
    def _index_to_timestep(self, index: torch.Tensor) -> torch.Tensor:
        return index

    def _timestep_to_index(self, timestep: torch.Tensor) -> torch.Tensor:
        return timestep

    def sigma_to_timestep(self, sigma) -> torch.Tensor:
        """Integer timestep (int64) whose log-sigma is nearest to ``log(sigma)``.

        ``ModelSamplingDiscrete.timestep``; ``sigma = 0`` maps to timestep 0 (the
        first entry, as ComfyUI's argmin does for ``log 0 = -inf``).
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(-1)[None, :] - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return self._index_to_timestep(index)

    def timestep_to_sigma(self, timestep) -> torch.Tensor:
        """Sigma at (possibly fractional) ``timestep``: log-linear interpolation, clamped.

        ``ModelSamplingDiscrete.sigma``: exact table value at integer timesteps.
        """
        t = torch.as_tensor(timestep).float()
        t = torch.clamp(self._timestep_to_index(t), min=0, max=len(self.sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()

    def grid_sigma(self, timestep) -> torch.Tensor:
        """Sigma at ``timestep``: the exact table entry for grid timesteps, :meth:`timestep_to_sigma` otherwise.

        ``timestep_to_sigma`` returns ``exp(log(sigma))``, which can differ from the table entry
        by one float32 ulp; ComfyUI's schedulers (e.g. ``simple``) emit table entries.
        """
        t = torch.as_tensor(timestep).float()
        out = self.timestep_to_sigma(t).reshape(-1)
        index = self._timestep_to_index(t).reshape(-1)
        on_grid = (index == index.round()) & (index >= 0) & (index <= len(self.sigmas) - 1)
        out[on_grid] = self.sigmas[index[on_grid].long()]
        return out.view(t.shape)

    def sigma_to_continuous_timestep(self, sigma) -> torch.Tensor:
        """Inverse of :meth:`timestep_to_sigma` (float timestep; k-diffusion ``DiscreteSchedule.sigma_to_t``).

        Exact integer values for table sigmas. Sigmas outside the table clamp to the ends.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log().reshape(-1)
        n = len(self.log_sigmas)
        low = torch.searchsorted(self.log_sigmas, log_sigma, right=True).sub(1).clamp(0, n - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        index = (low.float() + w).view(sigma.shape)
        return self._index_to_timestep(index)

    # -- VP <-> sigma space ----------------------------------------------------------------
    def alpha_cumprod_at(self, timestep) -> torch.Tensor:
        """``alphas_cumprod[t]`` for integer timesteps (as diffusers indexes it)."""
        return self.alphas_cumprod[torch.as_tensor(timestep).long()]

    @staticmethod
    def to_scaled(x: torch.Tensor, sigma) -> torch.Tensor:
        """Sigma space -> diffusers VP space: ``x / sqrt(1 + sigma^2)`` (ComfyUI ``EPS.calculate_input``)."""
        sigma = _as_batch_sigma(sigma, x)
        return x / (sigma**2 + 1.0) ** 0.5

    @staticmethod
    def from_scaled(sample: torch.Tensor, sigma) -> torch.Tensor:
        """Diffusers VP space -> sigma space: ``sample * sqrt(1 + sigma^2)``."""
        sigma = _as_batch_sigma(sigma, sample)
        return sample * (sigma**2 + 1.0) ** 0.5

    def distilled(self, original_inference_steps: int = 50) -> "DistilledDiscreteSchedule":
        """The LCM-distilled view of this schedule (ComfyUI ``ModelSamplingDiscreteDistilled``)."""
        return DistilledDiscreteSchedule(self, original_inference_steps)


class DistilledDiscreteSchedule(DiscreteSchedule):
    """Only the ``original_inference_steps`` LCM timesteps ``k*skip - 1`` (19, 39, ..., 999 for 50).

    Mirrors ``comfy_extras.nodes_model_advanced.ModelSamplingDiscreteDistilled``:
    ``sigmas`` has ``original_inference_steps`` entries, ``sigma_to_timestep`` snaps to
    the nearest grid timestep, ``timestep_to_sigma`` interpolates along the grid.
    ``alphas_cumprod``/``betas`` stay the full 1000-step tables; ``base`` is the full schedule.
    """

    def __init__(self, base: DiscreteSchedule | None = None, original_inference_steps: int = 50):
        base = DiscreteSchedule() if base is None else base
        original_inference_steps = int(original_inference_steps)
        if not 1 <= original_inference_steps <= base.num_train_timesteps:
            raise ConfigError(
                "DistilledDiscreteSchedule",
                f"original_inference_steps must be in [1, {base.num_train_timesteps}], got {original_inference_steps}",
            )
        self.__dict__.update({k: v for k, v in base.__dict__.items() if k not in ("sigmas", "log_sigmas")})
        self.base = base
        self.original_inference_steps = original_inference_steps
        self.skip_steps = base.num_train_timesteps // original_inference_steps
        # valid[n - 1 - i] = full[T - 1 - i * skip]  (ComfyUI indexing from the top)
        top = base.num_train_timesteps - 1
        idx = torch.tensor([top - i * self.skip_steps for i in range(original_inference_steps)][::-1])
        self.grid_timesteps = idx
        self._set_sigmas(base.sigmas[idx].clone())

    def __repr__(self) -> str:
        return f"DistilledDiscreteSchedule(original_inference_steps={self.original_inference_steps}, convention={self.convention!r})"

    def _index_to_timestep(self, index: torch.Tensor) -> torch.Tensor:
        return index * self.skip_steps + (self.skip_steps - 1)

    def _timestep_to_index(self, timestep: torch.Tensor) -> torch.Tensor:
        return (timestep - (self.skip_steps - 1)) / self.skip_steps


def _as_batch_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a tensor broadcastable against ``x`` (scalar, or one per batch item)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1))

