"""Nodes follow the adapter's sampling recipe (``lcm_core.sampling_recipe``: objective, sampler,
γ, model sampling stored in the adapter's safetensors metadata).

How a value "defaults from metadata" in ComfyUI: widget defaults are static, so the recipe
travels with the MODEL. The loader resolves it (``sampling`` input: ``auto`` reads the
adapter's metadata; ``lcm`` / ``tcd`` / ``pcm`` / ``tscd`` choose for adapters without one, e.g.
the released LCM-LoRAs, TCD-SDXL-LoRA, PCM LoRAs, Hyper-SD) and stores it as plain data in
``model_options[RECIPE_KEY]``. ``ModelPatcher.clone`` deep-copies model_options, so the
recipe follows the model through any chain of model nodes, and ComfyUI hands the model's
options to every sampler as ``extra_args["model_options"]`` — which is how the LCM KSampler's
and LCM Sampler's ``mode: auto`` read it at sampling time. A model that never met our loader
carries no recipe: ``auto`` then means LCM (the behaviour before recipes existed).

Model sampling per recipe: ``lcm`` → ComfyUI's ``ModelSamplingDiscrete(sampling="lcm")``
(consistency boundary condition, ``comfy_bridge.patch_lcm_sampling``); ``eps`` → the model's
own sampling is left in place (plain ε-prediction for SD 1.x/SDXL: TCD's map has no
c_skip/c_out, TCD paper Eq. 9; PCM / TSCD likewise).

Phased recipes (``pcm``: Wang et al. 2024, arXiv 2405.18407; ``tscd``: Hyper-SD, Ren et al. 2024,
arXiv 2404.13686): the map jumps from t to the lower edge of t's phase, so ``mode: auto`` samples
them with the TCD sampler at the recipe's γ (0: the deterministic edge-to-edge DDIM jump) on the
phase edges, ``recipe_sigmas`` (``lcm_core.phased_timesteps`` on ComfyUI's schedule table).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Mapping

from ..lcm_core.errors import LcmLoraError
from ..lcm_core.sampling_recipe import (DEFAULT_PHASES, PHASED, SamplingRecipe, read_recipe, recipe_for_objective,
                                         recipe_timesteps)

__all__ = ["DEFAULT_PHASES", "PHASED", "RECIPE_KEY", "SAMPLING_CHOICES", "attach", "describe", "from_model",
           "from_model_options", "read_recipe", "recipe_sigmas", "resolve", "is_normal_cfg", "cfg_advice"]

RECIPE_KEY = "lcm_lora_recipe"
SAMPLING_CHOICES = ("auto", "lcm", "tcd", "pcm", "tscd")


def resolve(metadata: Mapping[str, str] | None, choice: str = "auto",
            phases: int = DEFAULT_PHASES) -> tuple[SamplingRecipe, str]:
    """(recipe, where it came from) for the loader's ``sampling`` input.

    ``auto``: the adapter's stored recipe, or LCM when it has none (today's behaviour);
    ``lcm`` / ``tcd`` / ``pcm`` / ``tscd``: that objective's defaults (``recipe_for_objective``),
    keeping the adapter's own recipe (steps/γ/cfg/phases) when its metadata is for the same
    objective. ``phases`` is used only by a chosen ``pcm`` / ``tscd`` recipe (metadata wins).
    """
    stored = read_recipe(metadata)
    if choice == "auto":
        return (stored, "adapter metadata") if stored is not None else (recipe_for_objective("lcm"), "default (no metadata)")
    if choice not in SAMPLING_CHOICES:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLING_CHOICES)}, got {choice!r}")
    if stored is not None and stored.objective == choice:
        return stored, "adapter metadata"
    if choice in PHASED:
        return recipe_for_objective(choice, phases=int(phases)), f"chosen ({choice}, {int(phases)} phases)"
    return recipe_for_objective(choice), f"chosen ({choice})"


def recipe_sigmas(recipe: SamplingRecipe | None, steps: int, denoise: float = 1.0, node: str = "LCM KSampler",
                  schedule=None):
    """SIGMAS on the phase edges a pcm / tscd recipe samples on (``recipe_timesteps``, mapped with
    ComfyUI's own schedule table as the LCM Scheduler does); ``None`` for lcm / tcd / no recipe.
    denoise 0 gives an empty SIGMAS (nothing to sample, as ComfyUI's BasicScheduler)."""
    if recipe is None or recipe.objective not in PHASED:
        return None
    from .lcm_scheduler import phased_sigmas

    return phased_sigmas(recipe.objective, recipe.phases or DEFAULT_PHASES, steps, denoise, node=node,
                         starts=recipe.phase_starts, schedule=schedule)


def attach(model, recipe: SamplingRecipe):
    """Clone of ``model`` carrying ``recipe`` (plain data) in its model_options."""
    out = model.clone()
    out.model_options[RECIPE_KEY] = asdict(recipe)
    return out


def from_model_options(model_options: Mapping | None) -> SamplingRecipe | None:
    data = (model_options or {}).get(RECIPE_KEY)
    if not isinstance(data, dict):
        return None
    try:
        w, starts = data.get("w_range"), data.get("phase_starts")
        return SamplingRecipe(**{**data, "w_range": tuple(w) if w is not None else None,
                                 "phase_starts": tuple(starts) if starts else None})
    except TypeError:
        return None


def from_model(model) -> SamplingRecipe | None:
    """The recipe a MODEL carries (None for a model our loader never touched)."""
    return from_model_options(getattr(model, "model_options", None))


def describe(recipe: SamplingRecipe, source: str) -> str:
    gamma = f", γ {recipe.gamma:g}" if recipe.sampler == "tcd" and recipe.gamma is not None else ""
    phased = ""
    if recipe.objective in PHASED:
        try:
            ts = ", ".join(map(str, recipe_timesteps(recipe, recipe.steps)))
        except LcmLoraError as e:  # metadata steps that do not fit the phases: said, sampling then fails clearly
            ts = e.problem
        phased = f" of {recipe.phases} phases (timesteps {ts})"
    text = (f"sampling: {recipe.objective.upper()} ({source}) — {recipe.sampler} sampler{gamma}, "
            f"{recipe.steps} steps{phased}, cfg {recipe.cfg:g}, {recipe.model_sampling} model sampling")
    if is_normal_cfg(recipe):
        text += (f"\nnormal CFG: distilled without guidance — set the sampler's cfg to about {recipe.cfg:g} (real CFG on "
                 "every step, two UNet evaluations per step); negative prompts work. At cfg 1 it samples unguided.")
    return text


def is_normal_cfg(recipe: SamplingRecipe | None) -> bool:
    """Whether ``recipe`` is a "normal CFG" adapter's (``lcd.solver_guidance: false``, PCM's
    ``--not_apply_cfg_solver``): no ω distilled in, so it is sampled with real CFG at ``recipe.cfg`` > 1."""
    return recipe is not None and recipe.cfg > 1.0


def cfg_advice(recipe: SamplingRecipe | None, cfg: float, guided_steps: int) -> str | None:
    """A log line when a sampler's cfg leaves a normal-CFG adapter unguided (cfg <= 1, or no guided step);
    None otherwise — guided adapters and adapters without a recipe keep today's behaviour (no line)."""
    if not is_normal_cfg(recipe) or (cfg > 1.0 and guided_steps > 0):
        return None
    how = f"cfg {cfg:g}" if cfg <= 1.0 else "cfg_steps 0"
    return (f"[LCM-LoRA] the {recipe.objective.upper()} adapter was distilled without guidance (normal CFG): {how} "
            f"samples it unguided; use cfg about {recipe.cfg:g} (negative prompts work)")
