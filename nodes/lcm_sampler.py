"""LCM Sampler node: a SAMPLER for SamplerCustom / SamplerCustomAdvanced.

Wraps ``lcm_core.sampling.sample_lcm`` (LCM multistep sampling, LCM paper Algorithm 1;
diffusers ``LCMScheduler.step``) and ``sample_tcd`` (TCD strategic stochastic sampling,
Zheng et al. 2024; diffusers ``TCDScheduler.step``) in ``comfy.samplers.KSAMPLER``. Both
call ComfyUI's step callback every step, which drives the progress bar, previews and
Cancel (``comfy.model_management.throw_exception_if_processing_interrupted`` runs in
ComfyUI's progress hook).
"""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..lcm_core.sampling import sample_lcm, sample_tcd
from ..lcm_core.schedule import DiscreteSchedule
from . import comfy_bridge as bridge

MODES = ("lcm", "tcd")


def build_sampler(mode: str, gamma: float = 0.3, eta: float = 1.0):
    """The ComfyUI SAMPLER object for ``mode``.

    TCD needs σ ↔ timestep on the full 1000-step SD schedule; ComfyUI's float64-derived table
    (``convention="comfyui"``) is the one its model sampling uses.
    """
    if mode == "lcm":
        return comfy.samplers.KSAMPLER(sample_lcm)
    if mode == "tcd":
        schedule = DiscreteSchedule(convention="comfyui")
        return comfy.samplers.KSAMPLER(sample_tcd, extra_options={"gamma": float(gamma), "eta": float(eta), "schedule": schedule})
    raise ValueError(f"unknown LCM sampler mode {mode!r}; expected one of {', '.join(MODES)}")


def mode_inputs() -> list:
    return [
        io.Combo.Input("mode", options=list(MODES), default="lcm",
                       tooltip="lcm: LCM multistep sampling (re-noise to the next sigma each step). "
                               "tcd: Trajectory Consistency Distillation sampling (gamma controls the stochasticity)."),
        io.Float.Input("gamma", default=0.3, min=0.0, max=1.0, step=0.01,
                       tooltip="TCD gamma (diffusers' TCDScheduler 'eta'): 0 = deterministic, 1 = fully stochastic. Ignored by lcm."),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="TCD: share of fresh noise in the re-noising (1 = exactly TCD/diffusers, 0 = reuse the "
                               "model's own noise estimate). Ignored by lcm."),
    ]


class LCMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMSampler",
            display_name="LCM Sampler",
            category=bridge.CATEGORY,
            description="LCM / TCD sampler for SamplerCustom and SamplerCustomAdvanced "
                        "(pair it with LCM Scheduler and an LCM-patched model).",
            inputs=mode_inputs(),
            outputs=[io.Sampler.Output(display_name="SAMPLER", tooltip="Connect to SamplerCustom / SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, mode="lcm", gamma=0.3, eta=1.0) -> io.NodeOutput:
        return io.NodeOutput(build_sampler(mode, gamma, eta))
