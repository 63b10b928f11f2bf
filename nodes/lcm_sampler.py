"""LCM Sampler node: a SAMPLER for SamplerCustom / SamplerCustomAdvanced.

* ``lcm``: ComfyUI's own sampler object, ``comfy.samplers.ksampler("lcm")`` (LCM multistep
  sampling, LCM paper Algorithm 1; diffusers ``LCMScheduler.step``) — identical to KSampler's
  ``lcm`` by construction. ``lcm_core.sampling.sample_lcm`` (its numerically identical twin)
  stays for the demo, trainer validation and the parity tests.
* ``tcd``: ``lcm_core.sampling.sample_tcd`` (TCD strategic stochastic sampling, Zheng et al.
  2024, Algorithm 4; diffusers ``TCDScheduler.step``) in ``comfy.samplers.KSAMPLER``, through
  ``sample_tcd_comfyui``: on the CPU its re-noising stream is seeded with
  ``independent_noise_seed(seed)``, because there ComfyUI's ``default_noise_sampler(x, seed)`` would
  replay the initial noise of ``comfy.sample.prepare_noise`` as the first "fresh" noise (too much noise
  after the first step); on a GPU the stream is the device's own, as before.
* ``auto``: decided at sampling time from the sampling recipe the MODEL carries
  (``recipe_follow``: set by the LCM-LoRA Loader from the adapter's metadata or its
  ``sampling`` input): ``tcd`` with the recipe's γ for a TCD adapter, else ``lcm``. A PCM /
  TSCD adapter's recipe (arXiv 2405.18407 / 2404.13686) asks for ``tcd`` at γ 0 — the
  deterministic DDIM jump from phase edge to phase edge; the sigmas must then be its phase edges
  (LCM Scheduler ``schedule`` pcm / tscd; the LCM KSampler picks them itself).

All call ComfyUI's step callback every step, which drives the progress bar, previews and
Cancel (``comfy.model_management.throw_exception_if_processing_interrupted`` runs in
ComfyUI's progress hook).
"""
from __future__ import annotations

import comfy.samplers
from comfy.k_diffusion import sampling as k_diffusion_sampling
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from ..lcm_core.sampling import sample_tcd_comfyui
from ..lcm_core.schedule import DiscreteSchedule
from . import comfy_bridge as bridge
from . import recipe_follow

MODES = ("auto", "lcm", "tcd")
DEFAULT_GAMMA = 0.3  # the TCD paper's default γ


def picked(mode: str, model_options=None, gamma: float = DEFAULT_GAMMA) -> tuple[str, float]:
    """(sampler, γ) that ``mode`` means for a model with these model_options."""
    if mode != "auto":
        return mode, float(gamma)
    recipe = recipe_follow.from_model_options(model_options)
    if recipe is not None and recipe.sampler == "tcd":
        return "tcd", float(recipe.gamma if recipe.gamma is not None else gamma)
    return "lcm", float(gamma)


def _model_sampling(model):
    """The model sampling of the model ComfyUI hands a sampler function (KSamplerX0Inpaint → guider → patcher), as
    ComfyUI's own samplers find it; None when the wrapper is not ComfyUI's."""
    try:
        return model.inner_model.model_patcher.get_model_object("model_sampling")
    except AttributeError:
        return None


def sample_tcd_node(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                    schedule: DiscreteSchedule | None = None, **options):
    """``sample_tcd_comfyui`` on the σ table of the model being sampled (``comfy_bridge.schedule_of``: SD's, or its
    zero-terminal-SNR rescale), unless a schedule is given."""
    schedule = schedule or bridge.schedule_of(_model_sampling(model))
    return sample_tcd_comfyui(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                              noise_sampler=noise_sampler, schedule=schedule, **options)


def sample_auto(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                gamma: float = DEFAULT_GAMMA, eta: float = 1.0, schedule: DiscreteSchedule | None = None):
    """``mode: auto``: the sampler the model's recipe asks for (``extra_args["model_options"]``)."""
    sampler, gamma = picked("auto", (extra_args or {}).get("model_options"), gamma)
    if sampler == "tcd":
        return sample_tcd_node(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                               noise_sampler=noise_sampler, gamma=gamma, eta=eta, schedule=schedule)
    return k_diffusion_sampling.sample_lcm(model, x, sigmas, extra_args=extra_args, callback=callback,
                                           disable=disable, noise_sampler=noise_sampler)


def build_sampler(mode: str, gamma: float = 0.3, eta: float = 1.0):
    """The ComfyUI SAMPLER object for ``mode``.

    TCD needs σ ↔ timestep on the model's full 1000-step schedule: ComfyUI's float64-derived SD table
    (``convention="comfyui"``), zero-terminal-SNR rescaled for a zsnr model (read when sampling,
    ``sample_tcd_node``). TCD (``tcd``, and ``auto`` when it
    picks tcd) runs ``sample_tcd_comfyui``: when ComfyUI gives no noise sampler and the latent is on the
    CPU, the re-noising stream is seeded with ``independent_noise_seed(seed)``, not with the seed of the
    initial noise (on the CPU that stream would re-inject the initial noise); other devices unchanged.
    """
    if mode == "lcm":
        return comfy.samplers.ksampler("lcm")
    options = {"gamma": float(gamma), "eta": float(eta)}
    if mode == "tcd":
        return comfy.samplers.KSAMPLER(sample_tcd_node, extra_options=options)
    if mode == "auto":
        return comfy.samplers.KSAMPLER(sample_auto, extra_options=options)
    raise ConfigError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")


def mode_inputs() -> list:
    return [
        io.Combo.Input("mode", options=list(MODES), default="auto",
                       tooltip="auto: what the adapter's sampling recipe says (set by the LCM-LoRA Loader from the "
                               "adapter's metadata or its 'sampling' input): tcd with the recipe's gamma for TCD adapters "
                               "(PCM / TSCD adapters: tcd at the gamma the adapter records, else 0; give it LCM "
                               "Scheduler schedule pcm / tscd sigmas), lcm otherwise. "
                               "lcm: ComfyUI's LCM sampler (re-noise to the next sigma each step). "
                               "tcd: Trajectory Consistency Distillation sampling (gamma controls the stochasticity)."),
        io.Float.Input("gamma", default=DEFAULT_GAMMA, min=0.0, max=1.0, step=0.01,
                       tooltip="TCD gamma (diffusers' TCDScheduler 'eta'): 0 = deterministic, 1 = fully stochastic. "
                               "Used by mode tcd (auto takes the adapter's recipe gamma); ignored by lcm."),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="TCD: share of fresh noise in the re-noising (1 = exactly TCD/diffusers, 0 = reuse the "
                               "model's own noise estimate). Used by tcd and auto when it picks tcd; ignored by lcm."),
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
    def execute(cls, mode="auto", gamma=DEFAULT_GAMMA, eta=1.0) -> io.NodeOutput:
        return io.NodeOutput(build_sampler(mode, gamma, eta))
