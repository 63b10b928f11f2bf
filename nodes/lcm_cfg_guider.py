"""LCM CFG Guider node (GUIDER for SamplerCustomAdvanced) and the guider the LCM KSampler uses
for its ``cfg_steps`` input: classifier-free guidance with the negative prompt on the first k
steps only, cfg 1 after (``lcm_core.cfg_steps``; issue 13, negative prompts with few-step adapters).

The guider is ComfyUI's own ``comfy.samplers.CFGGuider`` with one change, in ``predict_noise``
(the hook ComfyUI's ``Guider_DualCFG`` overrides too): the guidance scale handed to ComfyUI's
``sampling_function`` is ``cfg`` for an evaluation in the first k steps and 1.0 after. At 1.0
``sampling_function`` drops the negative conditioning before batching (its "cfg1 optimization",
unless a model patch sets ``model_options["disable_cfg1_optimization"]``), so a step after the
first k costs one UNet evaluation: ``steps + k`` per image in all. The steps are the sigmas of the
run, which ComfyUI hands to every model call as ``transformer_options["sample_sigmas"]``.
"""
from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from ..lcm_core.cfg_steps import EVERY_STEP, cfg_at
from ..lcm_core.errors import ConfigError
from . import comfy_bridge as bridge


class FirstStepsCFGGuider(comfy.samplers.CFGGuider):
    """``CFGGuider`` whose ``cfg`` applies on the first ``cfg_steps`` steps; cfg 1.0 after."""

    def __init__(self, model_patcher, cfg_steps: int = EVERY_STEP):
        super().__init__(model_patcher)
        if int(cfg_steps) < 0:
            raise ConfigError("cfg_steps", f"must be >= 0, got {cfg_steps}")
        self.cfg_steps = int(cfg_steps)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            raise ConfigError("LCM CFG Guider", "ComfyUI did not pass the run's sigmas "
                                                "(transformer_options['sample_sigmas']); use it with SamplerCustomAdvanced")
        sigma = float(torch.as_tensor(timestep).max())
        cfg = cfg_at(sigma, torch.as_tensor(sigmas).tolist(), self.cfg, self.cfg_steps)
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative", None),
                                                self.conds.get("positive", None), cfg, model_options=model_options,
                                                seed=seed)


def make_guider(model, positive, negative, cfg: float, cfg_steps: int):
    guider = FirstStepsCFGGuider(model, cfg_steps)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def cfg_steps_input(default: int, optional: bool = False) -> io.Int.Input:
    return io.Int.Input(
        "cfg_steps", default=default, min=0, max=EVERY_STEP, optional=optional,
        tooltip="Apply cfg (and so the negative prompt) on the first cfg_steps steps only; the steps after run at "
                f"cfg 1.0 (one UNet evaluation each). {EVERY_STEP} = every step. Few-step adapters ignore the negative "
                "prompt at cfg 1: cfg 3 on the first 2 of 4 steps makes it work at 1.5x the cost of cfg 1.")


class LCMCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMCFGGuider",
            display_name="LCM CFG Guider",
            category=bridge.CATEGORY,
            description="CFG with the negative prompt on the first steps only (cfg 1 after), so LCM / TCD adapters can use "
                        "a negative prompt at steps + cfg_steps UNet evaluations. For SamplerCustomAdvanced.",
            inputs=[
                io.Model.Input("model", tooltip="A model with an LCM or TCD adapter (LCM-LoRA Loader or LCM Adapter Merge)."),
                io.Conditioning.Input("positive", tooltip="Conditioning to follow."),
                io.Conditioning.Input("negative", tooltip="Conditioning to avoid (used on the first cfg_steps steps)."),
                io.Float.Input("cfg", default=3.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale on the first cfg_steps steps (the steps after use 1.0)."),
                cfg_steps_input(2),
            ],
            outputs=[io.Guider.Output(display_name="GUIDER", tooltip="Connect to SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, cfg_steps) -> io.NodeOutput:
        return io.NodeOutput(make_guider(model, positive, negative, cfg, cfg_steps))
