"""Trajectory consistency distillation (TCD; Zheng et al. 2024, arXiv 2402.19159): the trajectory
consistency function f(x_t, t, s) and the per-sample draw of the end point s.

**Which reference.** The official TCD repository (``jabir-zheng/TCD``) publishes no trainer, only
``scheduling_tcd.py`` (inference: ``TCDScheduler.step``). Training follows the public LoRA trainer
``rootonchair/consistency_models_distill``, ``tcd/train_tcd_distill_lora_sd_wds.py`` and
``tcd/train_tcd_distill_lora_sdxl.py`` (``get_predicted_original_sample_tcd``, training loop
steps 3, 7 and 9). Both agree on the map: the official scheduler's ``pred_noised_sample =
sqrt(ᾱ_s)·x̂0 + sqrt(1−ᾱ_s)·ε̂`` is, with ``ε̂ = (x_t − α_t x̂0)/σ_t``, algebraically the
trainer's exponential-integrator form below. Where they differ is only the *choice* of s: the
scheduler jumps to ``s = floor((1−γ)·t_next)`` (any integer timestep), the trainer draws s on the
DDIM grid (below). We follow the trainer, because it is the training procedure; the TDD option
(:func:`tdd_end_timesteps`) draws s the scheduler's way.

**The map** (paper Eq. 11/13, first-order exponential integrator = DDIM from t to s on the data
prediction), with ``α = sqrt(ᾱ)``, ``σ = sqrt(1 − ᾱ)``, ``λ = log α − log σ``, ``h = λ_s − λ_t``::

    f(x_t, t, s) = (σ_s/σ_t)·x_t − α_s·(e^{−h} − 1)·x̂0(x_t, t)

No c_skip/c_out scalings: at s = t, h = 0 and σ_s/σ_t = 1, so f(x, t, t) = x **exactly** (we form
the ratio σ_s/σ_t before multiplying, the reference multiplies σ_s·x first and divides by σ_t,
which can differ from x in the last bit; ``expm1`` instead of ``exp − 1`` for the same reason —
both are float-rounding departures far below the parity tolerance).

**The end point s (``lcd.tcd_s_sampling``):**

* ``uniform`` (the reference, step 3): ``end_index ~ U{0, …, index}`` (``randint(0, index + 1)``)
  and ``s = max(τ[end_index] − k, 0)`` on the DDIM grid ``τ_i = (i+1)k − 1``: s is uniform over
  the grid points at or below t_n (0, k−1, 2k−1, …, t_n); when ``end_index = index``, s = t_n and
  the target is the teacher's DDIM point itself. The same s is used by student and target.
* ``tdd`` (RedAIGC Target-Driven Distillation, ``train/SD15/train_tdd.py``, ``DDIMSolver.select_s``):
  s is drawn near the points an inference schedule of ``lcd.tdd_steps`` = [4, 8] steps visits, then
  moved back by the inference γ: among the "next" timesteps of those schedules at or below t_n,
  take the largest one ``u_b``, pick one ``m`` uniformly in ``[u_b − 260, u_b]``, and set
  ``s = floor((1 − r·s_ratio)·m)`` with ``r ~ U[0, 1]`` (``lcd.tdd_s_ratio``, 0.3 there) — the
  training-time twin of TCD's ``floor((1 − γ)·t_next)``.
"""
from __future__ import annotations

import numpy as np
import torch

from .ddim_solver import DDIMSolver, gather_at
from .precision import at_least_float32

S_SAMPLINGS = ("uniform", "tdd")
TDD_WINDOW = 260  # TDD's ``select_s`` lower bound: candidates within 260 timesteps below u_b (hard-coded there)


def trajectory_jump(x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                    alpha_schedule: torch.Tensor, sigma_schedule: torch.Tensor) -> torch.Tensor:
    """``f(x_t, t, s) = (σ_s/σ_t)·x_t − α_s·(e^{−h} − 1)·x̂0`` in float32 (reference
    ``get_predicted_original_sample_tcd``; see the module docstring); float64 inputs stay float64."""
    x0, x = at_least_float32(x0), at_least_float32(x)
    a_t = gather_at(alpha_schedule, t, x.ndim)
    s_t = gather_at(sigma_schedule, t, x.ndim)
    a_s = gather_at(alpha_schedule, s, x.ndim)
    s_s = gather_at(sigma_schedule, s, x.ndim)
    h = (torch.log(a_s) - torch.log(s_s)) - (torch.log(a_t) - torch.log(s_t))
    return (s_s / s_t) * x - a_s * torch.expm1(-h) * x0


def _uniform_below(count: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One integer per row, uniform in ``[0, count)``: the reference's ``randint(0, count)`` — a draw in
    ``[0, 2^63 − 1)`` modulo the range (bias < 2^-56) — on our generator (same numbers for the same seed)."""
    raw = torch.randint(2**63 - 1, count.shape, generator=generator)
    return raw % count


def uniform_end_timesteps(index: torch.Tensor, solver: DDIMSolver, generator: torch.Generator) -> torch.Tensor:
    """s for solver indices ``index``: uniform over the DDIM grid at or below t_n (reference step 3)."""
    index = index.cpu()
    end_index = _uniform_below(index + 1, generator)
    return end_timesteps_of_index(end_index, solver)


def end_timesteps_of_index(end_index: torch.Tensor, solver: DDIMSolver) -> torch.Tensor:
    """``max(τ[end_index] − k, 0)`` (the reference's ``end_timesteps``)."""
    taus = solver.timesteps.cpu()[end_index.cpu()]
    return torch.clamp(taus - solver.skip, min=0)


def tdd_candidates(solver: DDIMSolver, steps_min: int, steps_max: int) -> torch.Tensor:
    """Sorted "next" timesteps of every ``steps_min..steps_max``-step schedule on the DDIM grid, with 0
    (TDD ``DDIMSolver.set_timesteps_s``: the union of the schedules, 0 prepended, the largest dropped)."""
    descending = solver.timesteps.cpu().numpy()[::-1]
    merged = []
    for n in range(steps_min, steps_max + 1):
        picks = np.floor(np.linspace(0, len(descending), num=n, endpoint=False)).astype(np.int64)
        merged.append(descending[picks])
    merged = np.sort(np.unique(np.concatenate(merged)))
    return torch.from_numpy(np.insert(merged, 0, 0)[:-1].astype(np.int64))


def tdd_end_timesteps(target_t: torch.Tensor, solver: DDIMSolver, s_ratio: float, steps_min: int, steps_max: int,
                      generator: torch.Generator) -> torch.Tensor:
    """s for target timesteps t_n, TDD's way (module docstring; TDD ``DDIMSolver.select_s``)."""
    cand = tdd_candidates(solver, steps_min, steps_max)
    target_t = target_t.cpu()
    # largest candidate <= t_n (candidates start with 0 and t_n >= 0, so there is always one)
    upper_pos = torch.searchsorted(cand, target_t, right=True) - 1
    upper = cand[upper_pos]
    lower_pos = torch.searchsorted(cand, torch.clamp(upper - TDD_WINDOW, min=0), right=False)
    pick = lower_pos + _uniform_below(upper_pos - lower_pos + 1, generator)
    m = cand[pick]
    r = torch.rand(target_t.shape, generator=generator, dtype=torch.float32)
    return torch.floor((1 - r * s_ratio) * m.float()).to(torch.int64)


def sample_end_timesteps(index: torch.Tensor, solver: DDIMSolver, mode: str, generator: torch.Generator,
                         s_ratio: float = 0.3, tdd_steps: tuple[int, int] = (4, 8)) -> torch.Tensor:
    """The TCD end point s per sample (int64, CPU) for solver indices ``index``; ``mode`` is ``lcd.tcd_s_sampling``."""
    if mode == "uniform":
        return uniform_end_timesteps(index, solver, generator)
    if mode == "tdd":
        _, target_t = solver.start_and_target_timesteps(index.cpu())
        return tdd_end_timesteps(target_t, solver, s_ratio, int(tdd_steps[0]), int(tdd_steps[1]), generator)
    raise ValueError(f"tcd_s_sampling must be one of {S_SAMPLINGS}, got {mode!r}")
