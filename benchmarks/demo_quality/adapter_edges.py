"""The timesteps a phased adapter is sampled on in these diagnostics: the phase edges it was distilled on.

The trainer records them (``lcm_lora.objective`` / ``lcm_lora.phases`` / ``lcm_lora.phase_starts``,
``lcm_core.sampling_recipe``); an adapter sampled on other edges jumps to the wrong points. Adapters cached by
``augmented_bases.py --phase-starts``' first version (a patch, 2026-12-07) record no moved edges: for those the
caller gives ``starts``.
"""
from __future__ import annotations


def adapter_edges(metadata, steps: int, starts=None) -> list[int]:
    """The ``steps`` timesteps on the phase edges an adapter was distilled on: those its ``metadata`` records
    (``lcm_core.sampling_recipe.recipe_timesteps``), else ``starts`` (solver indices, as ``lcd.phase_starts``),
    else PCM's even split of 4 phases."""
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
    from lcm_lora.lcm_core.sampling_recipe import PHASED, read_recipe, recipe_timesteps

    recipe = read_recipe(metadata)
    if recipe is not None and recipe.objective in PHASED and (recipe.phase_starts or recipe.objective != "pcm"
                                                                or not starts):
        return recipe_timesteps(recipe, steps)
    return phased_timesteps(steps, 4, "pcm", starts=starts)
