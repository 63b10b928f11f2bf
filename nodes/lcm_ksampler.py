"""LCM KSampler node: LCM Scheduler + LCM Sampler + SamplerCustom in one node.

``mode`` (default ``auto``) follows the sampling recipe the MODEL carries (``recipe_follow``:
the LCM-LoRA Loader sets it from the adapter's metadata or its ``sampling`` input): TCD
adapters are sampled with ``tcd`` at the recipe's γ, everything else with ComfyUI's ``lcm``.
Timesteps: the LCM Scheduler's (diffusers' LCM timesteps), except for a phased recipe in
``mode: auto`` — PCM (arXiv 2405.18407) / TSCD (Hyper-SD, arXiv 2404.13686) adapters are sampled
with ``tcd`` at the recipe's γ (0) on their phase edges (``recipe_follow.recipe_sigmas``, the
LCM Scheduler's ``schedule`` pcm / tscd). Explicit ``mode`` lcm / tcd keep the LCM timesteps.

Same noise (``comfy.sample.prepare_noise``, as KSampler), same sampling path
(``comfy.sample.sample_custom``, as SamplerCustom) and the same progress bar / previews /
Cancel (``latent_preview.prepare_callback`` → ComfyUI's progress hook, which raises on
interrupt) as ComfyUI's own sampler nodes.

``cfg_steps`` (optional, last widget, so saved workflows and API prompts without it keep working;
default ``EVERY_STEP``): ``cfg`` and the negative prompt on the first ``cfg_steps`` steps only, cfg 1
after (``lcm_cfg_guider.FirstStepsCFGGuider``). When it covers every step the node samples through
``comfy.sample.sample_custom`` exactly as before (and as SamplerCustom).

``cfg`` is always the widget's: a "normal CFG" adapter (``lcd.solver_guidance: false``, recipe cfg > 1) is
sampled with real CFG at the cfg the user sets; at cfg 1 (or ``cfg_steps`` 0) the node logs that it samples
unguided (``recipe_follow.cfg_advice``).
"""
from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..lcm_core.cfg_steps import EVERY_STEP, guided_step_count
from . import comfy_bridge as bridge
from . import recipe_follow
from .lcm_cfg_guider import cfg_steps_input, make_guider
from .lcm_sampler import build_sampler, mode_inputs
from .lcm_scheduler import scheduler_sigmas


class LCMKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMKSampler",
            display_name="LCM KSampler",
            category=bridge.CATEGORY,
            description="All-in-one LCM / TCD sampler with LCM timesteps: 4 steps at cfg 1.0 by default; mode auto "
                        "follows the adapter's sampling recipe (LCM, TCD, or PCM / TSCD: tcd on the phase edges at the gamma the "
                        "adapter records, else 0).",
            inputs=[
                io.Model.Input("model", tooltip="A model with an LCM, TCD, PCM or TSCD adapter (LCM-LoRA Loader or LCM Adapter Merge)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise and of the noise re-injected between steps."),
                io.Int.Input("steps", default=4, min=1, max=50,
                             tooltip="Sampling steps on the LCM timestep grid (LCM-LoRA: 2-8). PCM / TSCD adapters in mode "
                                     "auto: steps = the adapter's phases (a divisor or multiple of them also works)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale. LCM-LoRA wants 1.0-2.0; 1.0 skips the negative "
                                       "prompt and halves the work. With cfg_steps below steps it applies to the first "
                                       "cfg_steps steps only (e.g. cfg 3 on the first 2 of 4 steps). An adapter distilled "
                                       "without guidance ('normal CFG', the loader shows its recommended cfg) wants that "
                                       "cfg, e.g. 7.5, on every step."),
                *mode_inputs(),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="img2img / hires-pass strength (diffusers' strength): 1.0 = from pure noise."),
                io.Conditioning.Input("positive", tooltip="Conditioning to follow."),
                io.Conditioning.Input("negative", tooltip="Conditioning to avoid (only used when cfg is not 1, on the "
                                                          "first cfg_steps steps)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (empty latent for txt2img)."),
                cfg_steps_input(EVERY_STEP, optional=True),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denoised latent.")],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, mode, gamma, eta, denoise, positive, negative, latent_image,
                cfg_steps=EVERY_STEP) -> io.NodeOutput:
        table = bridge.model_schedule(model)  # the model's σ table (zero terminal SNR), else SD's
        sigmas = (recipe_follow.recipe_sigmas(recipe_follow.from_model(model), steps, denoise, schedule=table)
                  if mode == "auto" else None)
        if sigmas is None:  # LCM / TCD recipe, no recipe, or an explicit mode: the LCM timesteps
            sigmas = scheduler_sigmas(steps, 50, denoise, node="LCM KSampler", schedule=table)
        out = latent_image.copy()
        if len(sigmas) <= 1:  # denoise 0: nothing to do
            return io.NodeOutput(out)
        # a normal-CFG adapter (distilled without guidance) at cfg 1 samples unguided: say so (cfg is the user's)
        advice = recipe_follow.cfg_advice(recipe_follow.from_model(model), cfg, guided_step_count(cfg_steps, len(sigmas) - 1))
        if advice:
            logging.warning(advice)
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        sampler = build_sampler(mode, gamma, eta)
        noise_mask, disable_pbar = latent_image.get("noise_mask"), not comfy.utils.PROGRESS_BAR_ENABLED
        if guided_step_count(cfg_steps, len(sigmas) - 1) >= len(sigmas) - 1:  # cfg on every step: SamplerCustom's path
            samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                                 noise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar,
                                                 seed=seed)
        else:  # as comfy.sample.sample_custom, with the first-steps guider instead of CFGGuider
            guider = make_guider(model, positive, negative, cfg, cfg_steps)
            samples = guider.sample(noise, latent, sampler, sigmas, denoise_mask=noise_mask, callback=callback,
                                    disable_pbar=disable_pbar, seed=seed)
            samples = samples.to(comfy.model_management.intermediate_device())
        out["samples"] = samples
        return io.NodeOutput(out)
