"""Inference timesteps for phased / segmented consistency adapters (PCM, Hyper-SD's TSCD).

A phased adapter's consistency map jumps from any t inside a phase to that phase's lower edge s_m
(not to 0), so its few-step sampler must step exactly from edge to edge: x̂0 at t, DDIM jump to the
next point (the TCD sampler with γ = 0 is that jump, ``lcm_core.sampling.sample_tcd``).

* **PCM** (Wang et al. 2024, arXiv 2405.18407; ``G-U-N/Phased-Consistency-Model``
  ``code/text_to_image_sd15/train_pcm_lora_sd15.py``, ``DDIMSolver.ddim_style_multiphase_pred``):
  on the DDIM grid ``τ_i = (i+1)·k − 1`` (k = T // N, N = 50), the phase starts are the indices
  ``e_m = floor(linspace(0, N, phases, endpoint=False))`` and phase m's edge is
  ``ddim_timesteps_prev[e_m] = max(e_m·k − 1, 0)``: for 4 phases 0 / 239 / 499 / 739.
  A solver index i belongs to the phase with the largest ``e_m ≤ i``, so the edge 739 (index 36)
  lies in the phase below it: sampling visits 999 → 739 → 499 → 239 → 0.
* **TSCD** (Ren et al. 2024, Hyper-SD, arXiv 2404.13686; rootonchair ``tscd/``): K segments of
  ``T // K`` timesteps, edges ``m·(T // K)`` (0 / 250 / 500 / 750 for K = 4); a t belongs to
  segment ``t // (T // K)``, so an edge is the *first* timestep of the segment above it and the
  sampler steps at ``edge − 1``: 999 → 749 → 499 → 249 → 0 (diffusers' "trailing" spacing).

Other step counts: a divisor of the phase count takes every (phases/steps)-th edge (1 step:
999 → 0); a multiple splits each phase into equal parts (on the DDIM grid for PCM); anything else
falls back to trailing spacing ``round(arange(T, 0, −T/steps)) − 1``.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

FAMILIES = ("pcm", "tscd")


def pcm_phase_starts(phases: int, num_ddim_timesteps: int = 50, starts=None) -> list[int]:
    """Solver indices where PCM's phases start: the reference's even split (``inference_indices``), or
    ``starts`` — phases of other lengths (``lcd.phase_starts``; checked by :func:`check_phase_starts`)."""
    if starts:
        return check_phase_starts(starts, phases, num_ddim_timesteps)
    return [int(i) for i in np.floor(np.linspace(0, num_ddim_timesteps, num=int(phases), endpoint=False))]


def check_phase_starts(starts, phases: int, num_ddim_timesteps: int = 50, name: str = "phase_starts") -> list[int]:
    """``starts`` as a list of ints: one per phase, the first 0, strictly increasing, on the solver grid."""
    try:
        out = [int(i) for i in starts]
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be a list of solver indices, got {starts!r}") from None
    if len(out) != int(phases):
        raise ConfigError(name, f"needs one start per phase ({int(phases)}), got {len(out)}: {out}")
    if out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ConfigError(name, f"must start at 0 and increase, got {out}")
    if out[-1] >= int(num_ddim_timesteps):
        raise ConfigError(name, f"must lie on the {int(num_ddim_timesteps)}-point solver grid (indices 0 to "
                                f"{int(num_ddim_timesteps) - 1}), got {out}")
    return out


def pcm_phase_edges(phases: int, num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000,
                    starts=None) -> list[int]:
    """Ascending lower edges of PCM's phases: ``max(e_m·k − 1, 0)``."""
    k = num_train_timesteps // num_ddim_timesteps
    return [max(e * k - 1, 0) for e in pcm_phase_starts(phases, num_ddim_timesteps, starts)]


def tscd_segment_edges(segments: int, num_train_timesteps: int = 1000) -> list[int]:
    """Ascending lower edges of TSCD's segments: ``m·(T // K)``."""
    size = num_train_timesteps // int(segments)
    return [m * size for m in range(int(segments))]


def _check(name: str, steps: int, phases: int, num_ddim_timesteps: int, num_train_timesteps: int, family: str):
    if family not in FAMILIES:
        raise ConfigError(name, f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if int(steps) < 1:
        raise ConfigError(name, f"steps must be >= 1, got {steps}")
    if int(phases) < 1:
        raise ConfigError(name, f"phases must be >= 1, got {phases}")
    limit = num_ddim_timesteps if family == "pcm" else num_train_timesteps
    if int(phases) > limit:
        raise ConfigError(name, f"phases={phases} exceeds the {limit} timesteps it splits")
    if int(steps) > num_train_timesteps:
        raise ConfigError(name, f"steps={steps} cannot exceed num_train_timesteps={num_train_timesteps}")


def _trailing(steps: int, num_train_timesteps: int) -> list[int]:
    """diffusers' ``timestep_spacing="trailing"``: ``round(T − i·T/steps) − 1``. diffusers takes ``np.arange`` of the
    float step, which for some counts (61, 103, 121, …) yields one point too many, ending at −1; the first ``steps``
    points are the schedule."""
    ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    return [int(t) for t in ts[:steps]]


def _phase_tops(phases: int, family: str, num_ddim_timesteps: int, num_train_timesteps: int,
                starts=None) -> list[int]:
    """Descending sampling points at ``steps == phases``: T − 1, then each edge above 0 (PCM) or edge − 1 (TSCD)."""
    if family == "pcm":
        upper = pcm_phase_edges(phases, num_ddim_timesteps, num_train_timesteps, starts)[1:]
    else:
        upper = [e - 1 for e in tscd_segment_edges(phases, num_train_timesteps)[1:]]
    return [num_train_timesteps - 1] + sorted(upper, reverse=True)


def _split_phases(tops: list[int], per_phase: int, family: str, num_ddim_timesteps: int,
                  num_train_timesteps: int) -> list[int] | None:
    """Each phase [next top, top] cut into ``per_phase`` equal parts (PCM: whole DDIM-grid indices); None where a
    phase has fewer points than that (two equal timesteps)."""
    k = num_train_timesteps // num_ddim_timesteps
    out = []
    for m, top in enumerate(tops):
        low = tops[m + 1] if m + 1 < len(tops) else 0
        if family == "pcm":
            top_i, low_i = (top + 1) // k - 1, (low + 1) // k - 1  # grid indices (low = 0 → −1: below the grid)
            idx = [top_i - (j * (top_i - low_i)) // per_phase for j in range(per_phase)]
            out += [(i + 1) * k - 1 for i in idx]
        else:
            out += [top - (j * (top - low)) // per_phase for j in range(per_phase)]
    return out if len(set(out)) == len(out) else None


def phased_timesteps(steps: int, phases: int, family: str = "pcm", denoise: float = 1.0,
                     num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000, starts=None) -> list[int]:
    """Descending inference timesteps for a ``phases``-phase PCM / ``phases``-segment TSCD adapter.

    ``starts``: a PCM adapter distilled on phases of other lengths (``lcd.phase_starts``, recorded as
    ``lcm_lora.phase_starts``) samples on its own edges. ``denoise < 1`` (img2img) follows ComfyUI's
    KSampler: the schedule of ``int(steps / denoise)`` steps, keeping its last ``steps`` timesteps.
    """
    name = "phased_timesteps"
    if not 0.0 < float(denoise) <= 1.0:
        raise ConfigError(name, f"denoise must be in (0, 1], got {denoise}")
    total = int(int(steps) / float(denoise))
    _check(name, total, phases, num_ddim_timesteps, num_train_timesteps, family)
    if starts and family != "pcm":
        raise ConfigError(name, f"phase starts are a PCM setting, not {family}'s")
    steps, phases = int(steps), int(phases)
    tops = _phase_tops(phases, family, num_ddim_timesteps, num_train_timesteps, starts)
    if total == phases:
        out = tops
    elif phases % total == 0:
        out = tops[:: phases // total]
    elif total % phases == 0:
        out = _split_phases(tops, total // phases, family, num_ddim_timesteps, num_train_timesteps)
        if out is None:  # more steps than a phase has grid points: evenly spaced, as any other count
            out = _trailing(total, num_train_timesteps)
    else:
        out = _trailing(total, num_train_timesteps)
    return out[-steps:]
