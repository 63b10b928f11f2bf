"""LCM Scheduler node: SIGMAS of diffusers ``LCMScheduler.set_timesteps`` (exact timesteps).

Timesteps from ``lcm_core.timesteps.lcm_timesteps`` (LCM paper §4.3 skipping-step grid
``k·(1000 // original_steps) − 1``; ``denoise`` = img2img strength), turned into sigmas with
ComfyUI's own schedule table (``DiscreteSchedule(convention="comfyui")``), so ComfyUI's
model sampling maps every sigma back to exactly that timestep. With "patch sampling to LCM"
(ComfyUI's 50-step distilled grid) keep original_steps at 50, the value every released
LCM-LoRA was distilled with; other values snap to that grid.
"""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from ..lcm_core.schedule import DiscreteSchedule
from ..lcm_core.timesteps import lcm_sigmas
from . import comfy_bridge as bridge


def check_inputs(steps: int, original_steps: int, denoise: float, node: str = "LCM Scheduler") -> None:
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
        need = math.ceil(steps / original_steps * 100) / 100
        fix = f"lower steps to at most {grid}" if grid >= 1 else "raise denoise"
        if need <= 1.0:
            fix += f" or raise denoise to at least {need:g}"
        raise ConfigError(
            f"{node} steps",
            f"{steps} steps need {steps} timesteps of the distillation grid, but original_steps × denoise = "
            f"{original_steps} × {denoise:g} leaves {grid}: {fix}")


def scheduler_sigmas(steps: int, original_steps: int = 50, denoise: float = 1.0, node: str = "LCM Scheduler"):
    """LCM SIGMAS; denoise 0 gives no steps (an empty SIGMAS, as ComfyUI's BasicScheduler)."""
    check_inputs(steps, original_steps, denoise, node)
    if float(denoise) <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return lcm_sigmas(int(steps), int(original_steps), float(denoise), schedule=DiscreteSchedule(convention="comfyui"))


class LCMScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMScheduler",
            display_name="LCM Scheduler",
            category=bridge.CATEGORY,
            description="Sigmas at the exact LCM timesteps of diffusers' LCMScheduler (e.g. 999, 759, 499, 259 for 4 steps).",
            inputs=[
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Number of sampling steps (LCM-LoRA: 2-8; must not exceed original_steps × denoise)."),
                io.Int.Input("original_steps", default=50, min=1, max=1000,
                             tooltip="Length of the distillation grid the adapter was trained on (50 for every released LCM-LoRA)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="img2img strength: 1.0 starts from pure noise, lower values keep more of the input latent."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS", tooltip="Descending sigmas ending in 0, for SamplerCustom.")],
        )

    @classmethod
    def execute(cls, steps=4, original_steps=50, denoise=1.0) -> io.NodeOutput:
        return io.NodeOutput(scheduler_sigmas(steps, original_steps, denoise))
