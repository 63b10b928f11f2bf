"""LCM and TCD inference timesteps, and their ComfyUI SIGMAS.

:func:`lcm_timesteps` reproduces diffusers ``LCMScheduler.set_timesteps`` and
:func:`tcd_timesteps` reproduces ``TCDScheduler.set_timesteps`` exactly (same
arithmetic, same validation, same quirks), returning plain ``list[int]``:

* LCM (LCM paper, Luo et al. 2023, §4.3 "skipping-step"): the distillation grid is
  ``t_k = k * (T // original_inference_steps) - 1`` for ``k = 1 .. int(original * strength)``
  (19, 39, ..., 999 for 50 original steps); ``num_inference_steps`` entries are taken,
  descending, at indices ``floor(linspace(0, len, n, endpoint=False))``.
* img2img ``strength`` (ComfyUI "denoise") truncates the grid at the top before the pick.
* Custom ``timesteps`` (strictly descending) are used as given; ``strength < 1`` keeps the
  last ``int(len * strength)`` of them.
* TCD quirk (diffusers ``TCDScheduler``): when ``original_inference_steps`` is passed
  explicitly, the grid becomes *all* training timesteps ``0 .. int(T * strength) - 1`` and the
  value is used only for validation; leaving it ``None`` uses the 50-step LCM grid.

:func:`timesteps_to_sigmas` turns a timestep list into ComfyUI SIGMAS (descending,
float32, trailing 0); :func:`sigmas_to_timesteps` is the reverse.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError
from .schedule import DiscreteSchedule

log = logging.getLogger(__name__)

LCM_ORIGINAL_INFERENCE_STEPS = 50


def _check_custom(name: str, timesteps: Sequence[int], grid: np.ndarray, num_train_timesteps: int,
                  strength: float, max_len: int | None) -> np.ndarray:
    """Validation and warnings of ``set_timesteps(timesteps=...)`` (diffusers LCM/TCD)."""
    timesteps = [int(t) for t in timesteps]
    if len(timesteps) == 0:
        raise ConfigError(name, "custom timesteps list is empty")
    if min(timesteps) < 0:
        raise ConfigError(name, f"custom timesteps must be >= 0, got {timesteps}")
    train = set(grid.tolist())
    off_grid = []
    for i in range(1, len(timesteps)):
        if timesteps[i] >= timesteps[i - 1]:
            raise ConfigError(name, f"custom timesteps must be strictly descending, got {timesteps}")
        if timesteps[i] not in train:
            off_grid.append(timesteps[i])
    if timesteps[0] >= num_train_timesteps:
        raise ConfigError(name, f"custom timesteps must start below num_train_timesteps={num_train_timesteps}, got {timesteps[0]}")
    if strength == 1.0 and timesteps[0] != num_train_timesteps - 1:
        log.warning("%s: first custom timestep is %d, not %d; results may be unexpected", name, timesteps[0], num_train_timesteps - 1)
    if off_grid:
        log.warning("%s: custom timesteps %s are not on the distillation grid; results may be unexpected", name, off_grid)
    if max_len is not None and len(timesteps) > max_len:
        log.warning("%s: %d custom timesteps exceed the %d-step training schedule", name, len(timesteps), max_len)
    arr = np.array(timesteps, dtype=np.int64)
    n = len(arr)
    init_timestep = min(int(n * strength), n)
    t_start = max(n - init_timestep, 0)
    return arr[t_start:]


def _pick(name: str, grid: np.ndarray, num_inference_steps: int, num_train_timesteps: int,
          original_steps: int, strength: float) -> np.ndarray:
    """The evenly-indexed pick of ``set_timesteps(num_inference_steps)``."""
    n = int(num_inference_steps)
    if n < 1:
        raise ConfigError(name, f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if n > num_train_timesteps:
        raise ConfigError(name, f"num_inference_steps={n} cannot exceed num_train_timesteps={num_train_timesteps}")
    if len(grid) // n < 1:
        raise ConfigError(
            name,
            f"original_inference_steps x strength = {original_steps} x {strength} gives {len(grid)} grid timesteps, "
            f"fewer than num_inference_steps={n}: lower the steps to at most {len(grid)} "
            f"or raise strength/denoise above {n / original_steps}",
        )
    if n > original_steps:
        raise ConfigError(name, f"num_inference_steps={n} cannot exceed original_inference_steps={original_steps}")
    desc = grid[::-1].copy()
    indices = np.floor(np.linspace(0, len(desc), num=n, endpoint=False)).astype(np.int64)
    return desc[indices]


def _check_common(name, num_inference_steps, timesteps, strength):
    if num_inference_steps is None and timesteps is None:
        raise ConfigError(name, "pass exactly one of num_inference_steps or timesteps (got neither)")
    if num_inference_steps is not None and timesteps is not None:
        raise ConfigError(name, "pass exactly one of num_inference_steps or timesteps (got both)")
    if not 0.0 <= float(strength) <= 1.0:
        raise ConfigError(name, f"strength/denoise must be in [0, 1], got {strength}")


def check_lcm_inputs(steps: int, original_steps: int, denoise: float, node: str = "LCM Scheduler") -> None:
    """The checks of diffusers' ``LCMScheduler.set_timesteps``, worded with the node's input names
    (steps, original_steps, denoise) instead of diffusers' (num_inference_steps, …)."""
    steps, original_steps, denoise = int(steps), int(original_steps), float(denoise)
    if not 0.0 <= denoise <= 1.0:
        raise ConfigError(f"{node} denoise", f"must be between 0 and 1, got {denoise:g}")
    if not 1 <= original_steps <= 1000:
        raise ConfigError(f"{node} original_steps", f"must be between 1 and 1000, got {original_steps}")
    if steps < 1:
        raise ConfigError(f"{node} steps", f"must be at least 1, got {steps}")
    grid = int(original_steps * denoise)
    if denoise > 0 and steps > grid:
        # the smallest denoise on the 0.01 grid that fits, found by trying as the check does (int(original × denoise)):
        # float rounding makes ceil(steps / original, 2 decimals) miss both ways (29 of 50: 0.58 gives 28; 7: 0.15)
        need = math.floor(steps / original_steps * 100) / 100
        while int(original_steps * need) < steps:
            need = round(need + 0.01, 2)
        fix = f"lower steps to at most {grid}" if grid >= 1 else "raise denoise"
        if need <= 1.0:
            fix += f" or raise denoise to at least {need:g}"
        raise ConfigError(
            f"{node} steps",
            f"{steps} steps need {steps} timesteps of the distillation grid, but original_steps × denoise = "
            f"{original_steps} × {denoise:g} leaves {grid}: {fix}")


def lcm_timesteps(
    num_inference_steps: int | None = None,
    original_inference_steps: int = LCM_ORIGINAL_INFERENCE_STEPS,
    strength: float = 1.0,
    timesteps: Sequence[int] | None = None,
    num_train_timesteps: int = 1000,
) -> list[int]:
    """Descending LCM timesteps, exactly as diffusers ``LCMScheduler.set_timesteps``.

    ``strength`` is img2img strength (ComfyUI denoise). Raises :class:`ConfigError`
    where diffusers raises ``ValueError``.
    """
    name = "lcm_timesteps"
    _check_common(name, num_inference_steps, timesteps, strength)
    original_steps = int(original_inference_steps)
    if not 1 <= original_steps <= num_train_timesteps:
        raise ConfigError(name, f"original_inference_steps must be in [1, {num_train_timesteps}], got {original_inference_steps}")
    k = num_train_timesteps // original_steps
    grid = np.asarray(list(range(1, int(original_steps * strength) + 1)), dtype=np.int64) * k - 1
    if timesteps is not None:
        out = _check_custom(name, timesteps, grid, num_train_timesteps, strength, original_steps)
    else:
        out = _pick(name, grid, num_inference_steps, num_train_timesteps, original_steps, strength)
    return [int(t) for t in out]


def tcd_timesteps(
    num_inference_steps: int | None = None,
    original_inference_steps: int | None = None,
    strength: float = 1.0,
    timesteps: Sequence[int] | None = None,
    num_train_timesteps: int = 1000,
    default_original_inference_steps: int = LCM_ORIGINAL_INFERENCE_STEPS,
) -> list[int]:
    """Descending TCD timesteps, exactly as diffusers ``TCDScheduler.set_timesteps``.

    ``original_inference_steps=None`` uses the ``default_original_inference_steps``-step
    LCM grid (the scheduler config's value, 50); an explicit value switches to the full
    ``num_train_timesteps`` grid (diffusers behaviour) and only bounds ``num_inference_steps``.
    """
    name = "tcd_timesteps"
    _check_common(name, num_inference_steps, timesteps, strength)
    explicit = original_inference_steps is not None
    original_steps = int(original_inference_steps if explicit else default_original_inference_steps)
    if original_steps < 1:
        raise ConfigError(name, f"original_inference_steps must be >= 1, got {original_steps}")
    if not explicit:
        if original_steps > num_train_timesteps:
            raise ConfigError(name, f"original_inference_steps={original_steps} exceeds num_train_timesteps={num_train_timesteps}")
        k = num_train_timesteps // original_steps
        grid = np.asarray(list(range(1, int(original_steps * strength) + 1)), dtype=np.int64) * k - 1
    else:
        grid = np.asarray(list(range(0, int(num_train_timesteps * strength))), dtype=np.int64)
    if timesteps is not None:
        out = _check_custom(name, timesteps, grid, num_train_timesteps, strength, original_steps)
    else:
        out = _pick(name, grid, num_inference_steps, num_train_timesteps, original_steps, strength)
    return [int(t) for t in out]


def timesteps_to_sigmas(timesteps: Sequence[int], schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """ComfyUI SIGMAS for descending ``timesteps``: ``sigma(t)`` for each, then a final 0 (float32).

    Uses ``schedule.grid_sigma`` (table entries, as ComfyUI's ``simple`` scheduler emits;
    default schedule: full SD, diffusers numerics), so ``schedule.sigma_to_timestep``
    (ComfyUI ``model_sampling.timestep``) maps every entry but the last back to its timestep.
    """
    schedule = DiscreteSchedule() if schedule is None else schedule
    ts = [int(t) for t in timesteps]
    if not ts:  # denoise 0: nothing to sample (ComfyUI's BasicScheduler returns an empty SIGMAS too)
        return torch.zeros(0, dtype=torch.float32)
    for a, b in zip(ts, ts[1:]):
        if b >= a:
            raise ConfigError("timesteps_to_sigmas", f"timesteps must be strictly descending, got {ts}")
    sig = schedule.grid_sigma(torch.tensor(ts, dtype=torch.float32))
    return torch.cat([sig.float(), sig.new_zeros(1)])


def sigmas_to_timesteps(sigmas: torch.Tensor, schedule: DiscreteSchedule | None = None) -> list[int]:
    """Reverse of :func:`timesteps_to_sigmas`: nearest timestep per sigma, trailing zero sigmas dropped."""
    schedule = DiscreteSchedule() if schedule is None else schedule
    sig = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    sig = sig[sig > 0]
    return [int(t) for t in schedule.sigma_to_timestep(sig).tolist()]


def lcm_sigmas(steps: int, original_inference_steps: int = LCM_ORIGINAL_INFERENCE_STEPS, denoise: float = 1.0,
               schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """SIGMAS of :func:`lcm_timesteps` (what the LCM Scheduler node outputs)."""
    return timesteps_to_sigmas(lcm_timesteps(steps, original_inference_steps, strength=denoise), schedule)


def tcd_sigmas(steps: int, original_inference_steps: int | None = None, denoise: float = 1.0,
               schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """SIGMAS of :func:`tcd_timesteps`."""
    return timesteps_to_sigmas(tcd_timesteps(steps, original_inference_steps, strength=denoise), schedule)
