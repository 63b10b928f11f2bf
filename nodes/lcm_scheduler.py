"""LCM Scheduler node: SIGMAS of diffusers ``LCMScheduler.set_timesteps`` (exact timesteps).

Timesteps from ``lcm_core.timesteps.lcm_timesteps`` (LCM paper §4.3 skipping-step grid
``k·(1000 // original_steps) − 1``; ``denoise`` = img2img strength), turned into sigmas with
ComfyUI's own schedule table (``DiscreteSchedule(convention="comfyui")``), so ComfyUI's
model sampling maps every sigma back to exactly that timestep. With "patch sampling to LCM"
(ComfyUI's 50-step distilled grid) keep original_steps at 50, the value every released
LCM-LoRA was distilled with; other values snap to that grid.

``schedule`` (optional, default ``lcm``: the output above, unchanged) ``pcm`` / ``tscd``: the
timesteps a phased adapter samples on, from the top of each phase to the next phase's edge
(``lcm_core.phased_timesteps``; PCM, Wang et al. 2024, arXiv 2405.18407: 999, 739, 499, 239 for 4
phases; Hyper-SD TSCD, Ren et al. 2024, arXiv 2404.13686: 999, 749, 499, 249 for 4 segments).
``phases`` is the adapter's phase / segment count; steps = phases is what it was trained for, a
divisor of it takes every (phases/steps)-th edge, a multiple splits each phase, anything else
falls back to trailing spacing. ``original_steps`` is ignored then. ``phase_starts`` (pcm, optional,
default empty: PCM's even split): the solver indices where a PCM adapter's phases start, for an adapter
trained with ``lcd.phase_starts`` (``lcm-lora inspect`` shows them; the LCM KSampler reads them from its
metadata). Pair with LCM Sampler in mode auto (a pcm / tscd recipe: TCD at γ 0) or tcd at gamma 0.
"""
from __future__ import annotations


import torch
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from ..lcm_core.phased_timesteps import FAMILIES, check_phase_starts, phased_timesteps
from ..lcm_core.sampling_recipe import DEFAULT_PHASES, MAX_PHASES as RECIPE_MAX_PHASES
from ..lcm_core.schedule import DiscreteSchedule
from ..lcm_core.timesteps import check_lcm_inputs, lcm_sigmas, timesteps_to_sigmas
from . import comfy_bridge as bridge

SCHEDULES = ("lcm", *FAMILIES)  # lcm (also right for TCD: diffusers' TCDScheduler picks from the same grid), pcm, tscd
MAX_PHASES = RECIPE_MAX_PHASES["pcm"]  # PCM's phases split the 50-step DDIM grid


def scheduler_sigmas(steps: int, original_steps: int = 50, denoise: float = 1.0, node: str = "LCM Scheduler",
                     schedule: DiscreteSchedule | None = None):
    """LCM SIGMAS on ``schedule`` (default SD's, ComfyUI's convention; a model's: ``comfy_bridge.model_schedule``);
    denoise 0 gives no steps (an empty SIGMAS, as ComfyUI's BasicScheduler)."""
    check_lcm_inputs(steps, original_steps, denoise, node)
    if float(denoise) <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return lcm_sigmas(int(steps), int(original_steps), float(denoise), schedule=schedule or bridge.schedule_of(None))


def phased_sigmas(family: str, phases: int, steps: int, denoise: float = 1.0, node: str = "LCM Scheduler",
                  starts=None, schedule: DiscreteSchedule | None = None):
    """SIGMAS at ``phased_timesteps(steps, phases, family, denoise, starts=starts)`` on ComfyUI's schedule
    table (``starts``: a PCM adapter's recorded phase starts); denoise 0 gives no steps (an empty SIGMAS, as
    ComfyUI's BasicScheduler)."""
    steps, phases, denoise = int(steps), int(phases), float(denoise)
    if family not in FAMILIES:
        raise ConfigError(f"{node} schedule", f"must be one of {', '.join(SCHEDULES)}, got {family!r}")
    if not 0.0 <= denoise <= 1.0:
        raise ConfigError(f"{node} denoise", f"must be between 0 and 1, got {denoise:g}")
    if phases < 1:
        raise ConfigError(f"{node} phases", f"must be at least 1, got {phases}")
    if steps < 1:
        raise ConfigError(f"{node} steps", f"must be at least 1, got {steps}")
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    try:
        timesteps = phased_timesteps(steps, phases, family, denoise=denoise, starts=starts)
    except ConfigError as e:
        raise ConfigError(f"{node} steps", f"{steps} steps at denoise {denoise:g} with {phases} {family} phases: "
                                           f"{e.problem}") from None  # lcm_core's words, the node's input names first
    return timesteps_to_sigmas(timesteps, schedule=schedule or bridge.schedule_of(None))


class LCMScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMScheduler",
            display_name="LCM Scheduler",
            category=bridge.CATEGORY,
            description="Sigmas at the exact LCM timesteps of diffusers' LCMScheduler (e.g. 999, 759, 499, 259 for 4 steps), "
                        "or at the phase edges of a PCM / TSCD (Hyper-SD) adapter (schedule pcm / tscd).",
            inputs=[
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Number of sampling steps (LCM-LoRA: 2-8; must not exceed original_steps × denoise)."),
                io.Int.Input("original_steps", default=50, min=1, max=1000,
                             tooltip="Length of the distillation grid the adapter was trained on (50 for every released LCM-LoRA)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="img2img strength: 1.0 starts from pure noise, lower values keep more of the input latent."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="lcm", optional=True,
                               tooltip="lcm: diffusers' LCM timesteps (LCM and TCD adapters). pcm / tscd: the phase edges a "
                                       "PCM / TSCD (Hyper-SD) adapter jumps between, e.g. 999, 739, 499, 239 (pcm) or 999, "
                                       "749, 499, 249 (tscd) for 4 phases; original_steps is ignored. Pair with LCM "
                                       "Sampler mode auto (or tcd at gamma 0)."),
                io.Int.Input("phases", default=DEFAULT_PHASES, min=1, max=MAX_PHASES, optional=True,
                             tooltip="schedule pcm / tscd: the adapter's number of phases (segments). steps = phases is what "
                                     "it was trained for; a divisor takes every other edge, a multiple splits each phase, "
                                     "other counts fall back to evenly spaced (trailing) timesteps. Ignored by lcm."),
                io.String.Input("phase_starts", default="", optional=True,
                                tooltip="schedule pcm: empty for PCM's even phases (every released PCM adapter). An adapter "
                                        "trained with lcd.phase_starts: its starts, e.g. 0,15,30,41 (999, 819, 599, 299 for "
                                        "4 steps; lcm-lora inspect shows them). Ignored by lcm and tscd."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: the model to sample. Connect it for a zero-terminal-SNR model (zsnr in "
                                       "ModelSamplingDiscrete, v-pred fine-tunes): its σ table differs from SD's. Other "
                                       "models give the same sigmas with or without it."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS", tooltip="Descending sigmas ending in 0, for SamplerCustom.")],
        )

    @classmethod
    def execute(cls, steps=4, original_steps=50, denoise=1.0, schedule="lcm", phases=DEFAULT_PHASES,
                phase_starts="", model=None) -> io.NodeOutput:
        table = bridge.model_schedule(model)  # the model's σ table (zero terminal SNR), else SD's
        if schedule == "lcm":
            return io.NodeOutput(scheduler_sigmas(steps, original_steps, denoise, schedule=table))
        starts = read_phase_starts(phase_starts, phases) if schedule == "pcm" else None
        return io.NodeOutput(phased_sigmas(schedule, phases, steps, denoise, starts=starts, schedule=table))


def read_phase_starts(text, phases: int, node: str = "LCM Scheduler") -> list[int] | None:
    """The ``phase_starts`` input: empty → None (PCM's even split); else one solver index per phase, 0 first,
    increasing, on the 50-point grid (``lcm_core.phased_timesteps.check_phase_starts``), or an error naming it."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        return check_phase_starts(text.split(","), int(phases))  # int() takes the spaces around each number
    except ConfigError as e:
        raise ConfigError(f"{node} phase_starts", f"{e.problem} (phases {int(phases)})") from None
