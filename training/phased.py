"""Phased / segmented consistency: the end point s of the objectives ``pcm`` and ``tscd``.

Both use TCD's trajectory map ``f(x_t, t, s)`` (:func:`.tcd.trajectory_jump`, the DDIM-form jump of
the x̂0 estimate from t to s, ``f(x, t, t) = x``) for student and target, with the same guided DDIM
teacher step, skip k, ω range, target network and distance as LCM/TCD. Only the choice of s differs:

**PCM** (Phased Consistency Model, Wang et al. 2024, arXiv 2405.18407, §3.1 Eq. 5-6; reference
``G-U-N/Phased-Consistency-Model`` ``code/text_to_image_sd15/train_pcm_lora_sd15.py``,
``DDIMSolver.ddim_style_multiphase_pred`` and ``scalings_for_boundary_conditions_online/target``).
The N solver indices are split into ``phases`` phases starting at
``e_j = floor(j·N/phases)`` (``np.linspace(0, N, phases, endpoint=False)``); the solver index i
belongs to the phase with the largest start ``e ≤ i``, and both student (at ``t_{n+k} = τ_i``) and
target (at ``t_n``) are mapped to that phase's lower edge ``s = max(τ_e − k, 0)`` (the reference's
``ddim_timesteps_prev[e]`` = ``e·k − 1``, 0 for e = 0). s is deterministic: no random draw. When i
is itself a phase start, ``t_n = s`` and the reference's target is ``x_prev`` itself (c_skip = 1);
``trajectory_jump`` returns x bit-exactly at s = t, so no special case is needed. Departure: the
reference forms the jump as ``sqrt(ᾱ_s)·x̂0 + sqrt(1 − ᾱ_s)·ε`` with ε the *raw network output*,
which is the DDIM ε only for ε-prediction (a bug for v-prediction teachers); we use ε̂ from x̂0 as
TCD does (identical for ε-prediction up to float rounding).

**TSCD** (Hyper-SD's Trajectory Segmented Consistency Distillation, Ren et al. 2024, arXiv
2404.13686, §3.1; reference rootonchair ``tscd/train_tscd_distill_lora_sd_wds.py``, training step 3).
Training runs in stages; stage ``min(step // stage_steps, len(segments) − 1)`` splits the 1000
timesteps into ``K = segments[stage]`` equal segments (default 8, 4, 2, 1). With
``L = T // K``, the segment edge below the student's timestep is ``t_b = (t_{n+k} // L)·L`` and s is
uniform over the integers ``[t_b, t_n)`` (the reference's ``randint(t_b, t_n)`` =
``randint(2^63 − 1) % (t_n − t_b) + t_b``). The stage depends on the *global optimizer step*, so
resumed and multi-process runs draw the same s.

Departure (documented; the reference is undefined there): when the teacher step reaches or
crosses the edge (``t_n ≤ t_b``, which includes t_n = 0), the reference's modulo is by zero
(``ZeroDivisionError``) or by a negative number (s lands in ``(t_n, t_b]``, *above* t_n, so the
target would jump back up in noise). We set ``s = t_n`` there: the target is the teacher's DDIM
point itself, as PCM's target at a phase edge. One random number is drawn per sample either way,
so the stream of draws does not depend on which rows cross.
"""
from __future__ import annotations

import torch

from .ddim_solver import DDIMSolver
from .tcd import end_timesteps_of_index

PHASED_OBJECTIVES = ("pcm", "tscd")


def pcm_phase_starts(num_ddim_timesteps: int, phases: int, starts=None) -> torch.Tensor:
    """Solver indices where each phase starts: ``floor(linspace(0, N, phases, endpoint=False))``, or ``starts``
    (``lcd.phase_starts``: phases of other lengths)."""
    if not 1 <= phases <= num_ddim_timesteps:
        raise ValueError(f"phases must be in [1, {num_ddim_timesteps}] (the solver grid), got {phases}")
    from ..lcm_core.phased_timesteps import pcm_phase_starts as starts_of  # one phase rule for training and sampling

    return torch.tensor(starts_of(phases, num_ddim_timesteps, starts), dtype=torch.int64)


def pcm_phase_of_index(index: torch.Tensor, num_ddim_timesteps: int, phases: int, starts=None) -> torch.Tensor:
    """The start index e of the phase of each solver index (the largest start ≤ index)."""
    starts = pcm_phase_starts(num_ddim_timesteps, phases, starts)
    return starts[torch.searchsorted(starts, index.cpu(), right=True) - 1]


def pcm_end_timesteps(index: torch.Tensor, solver: DDIMSolver, phases: int, starts=None) -> torch.Tensor:
    """PCM's s per sample: the lower edge ``max(τ_e − k, 0)`` of the phase of each solver index (int64, CPU)."""
    return end_timesteps_of_index(pcm_phase_of_index(index, solver.num_ddim_timesteps, phases, starts), solver)


def tscd_stage_segments(step: int, segments, stage_steps: int) -> int:
    """K of the stage of global optimizer step ``step``: ``segments[min(step // stage_steps, len − 1)]``."""
    if stage_steps < 1:
        raise ValueError(f"stage_steps must be >= 1, got {stage_steps}")
    segments = list(segments)
    return int(segments[min(int(step) // int(stage_steps), len(segments) - 1)])


def tscd_segment_floor(start_t: torch.Tensor, num_train_timesteps: int, segments: int) -> torch.Tensor:
    """``t_b = (t_{n+k} // L)·L`` with ``L = T // K``: the segment edge at or below the student's timestep."""
    length = num_train_timesteps // segments
    return (start_t // length) * length


def tscd_end_timesteps(index: torch.Tensor, solver: DDIMSolver, segments: int, generator: torch.Generator) -> torch.Tensor:
    """TSCD's s per sample (int64, CPU): uniform in ``[t_b, t_n)``, or t_n where ``t_n ≤ t_b`` (module docstring)."""
    if segments < 1 or solver.num_train_timesteps % segments:
        raise ValueError(f"segments must divide the {solver.num_train_timesteps} training timesteps, got {segments}")
    index = index.cpu()
    start_t, t_n = solver.start_and_target_timesteps(index)
    t_b = tscd_segment_floor(start_t, solver.num_train_timesteps, segments)
    width = t_n - t_b
    raw = torch.randint(2**63 - 1, index.shape, generator=generator)  # the reference's randint: one per sample
    inside = raw % width.clamp_min(1) + t_b
    return torch.where(width > 0, inside, t_n)


def objective_end_timesteps(lcd, index: torch.Tensor, solver: DDIMSolver, step: int, generator: torch.Generator,
                            max_steps: int) -> torch.Tensor | None:
    """s per sample for the trainer's objective (``lcd``: the config's ``lcd`` section), drawn after (i, ε, ω)
    from the same per-micro-step generator; None for ``lcm``. ``step`` is the global optimizer step."""
    from .config_rules import tscd_stage_steps
    from .tcd import sample_end_timesteps

    if lcd.objective == "tcd":
        return sample_end_timesteps(index, solver, lcd.tcd_s_sampling, generator, lcd.tdd_s_ratio, tuple(lcd.tdd_steps))
    if lcd.objective == "pcm":
        return pcm_end_timesteps(index, solver, lcd.phases, lcd.phase_starts)
    if lcd.objective == "tscd":
        k = tscd_stage_segments(step, lcd.tscd_segments, tscd_stage_steps(lcd, max_steps))
        return tscd_end_timesteps(index, solver, k, generator)
    return None
