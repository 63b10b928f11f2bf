"""Sampling-recipe metadata: round trip through safetensors metadata strings, and adapters
without it (the released LCM-LoRAs) read as None."""
import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.sampling_recipe import SamplingRecipe, read_recipe, recipe_for_objective


@pytest.mark.parametrize("objective", ["lcm", "tcd"])
def test_round_trip(objective):
    recipe = recipe_for_objective(objective, w_range=(3.0, 15.0), steps=6)
    md = recipe.to_metadata()
    assert all(isinstance(v, str) for v in md.values())
    assert read_recipe(md) == recipe


def test_tcd_defaults_are_eps_sampling_and_gamma():
    r = recipe_for_objective("tcd")
    assert (r.sampler, r.model_sampling, r.gamma) == ("tcd", "eps", 0.3)
    r = recipe_for_objective("lcm")
    assert (r.sampler, r.model_sampling, r.gamma) == ("lcm", "lcm", None)


def test_absent_or_unknown_objective_is_none():
    assert read_recipe(None) is None
    assert read_recipe({}) is None
    assert read_recipe({"ss_network_dim": "64"}) is None
    assert read_recipe({"lcm_lora.objective": "dmd2"}) is None


def test_unreadable_values_fall_back_to_the_objective_defaults():
    md = {"lcm_lora.objective": "tcd", "lcm_lora.recommended_steps": "many"}
    assert read_recipe(md) == recipe_for_objective("tcd")
    md = {"lcm_lora.objective": "tcd", "lcm_lora.recommended_sampler": "euler",
          "lcm_lora.model_sampling": "v"}
    r = read_recipe(md)
    assert (r.sampler, r.model_sampling) == ("tcd", "eps")
    assert isinstance(r, SamplingRecipe)


@pytest.mark.parametrize("gamma", ["nan", "inf", "-0.1", "1.5"])
def test_a_gamma_outside_0_1_falls_back_to_the_objective_default(gamma):
    """γ is a fraction of the next timestep (TCD, arXiv 2402.19159 §4.2); the samplers refuse anything else,
    so an adapter whose metadata says otherwise samples at its objective's default instead of failing."""
    from lcm_lora.lcm_core.sampling import sample_tcd

    for objective, default in (("tcd", 0.3), ("pcm", 0.0)):
        r = read_recipe({"lcm_lora.objective": objective, "lcm_lora.recommended_gamma": gamma})
        assert r.gamma == default == recipe_for_objective(objective).gamma
    import torch

    with pytest.raises(Exception, match="gamma"):  # what the metadata's γ would have met in the sampler
        sample_tcd(lambda x, s, **kw: x, torch.zeros(1, 1), torch.tensor([1.0, 0.0]), gamma=float(gamma),
                   disable=True)


def test_boundary_gammas_and_a_nonfinite_w_range():
    for gamma in ("0", "1"):
        assert read_recipe({"lcm_lora.objective": "tcd", "lcm_lora.recommended_gamma": gamma}).gamma == float(gamma)
    md = {"lcm_lora.objective": "tcd", "lcm_lora.w_range": "nan,15"}
    assert read_recipe(md).w_range is None
    md = {"lcm_lora.objective": "tcd", "lcm_lora.w_range": "3,15"}
    assert read_recipe(md).w_range == (3.0, 15.0)


def test_one_unreadable_value_does_not_drop_the_others():
    """Key by key: a bad w_range keeps the recorded γ, steps and cfg (it used to reset the whole recipe)."""
    md = {"lcm_lora.objective": "pcm", "lcm_lora.phases": "4", "lcm_lora.recommended_gamma": "0.2",
          "lcm_lora.w_range": "[3,15]", "lcm_lora.recommended_cfg": "2.0", "lcm_lora.phase_starts": "0,15,30,41"}
    r = read_recipe(md)
    assert (r.gamma, r.cfg, r.w_range, r.phases, r.phase_starts) == (0.2, 2.0, None, 4, (0, 15, 30, 41))
    md = {"lcm_lora.objective": "lcm", "lcm_lora.recommended_cfg": "7.5", "lcm_lora.recommended_steps": "4.0"}
    r = read_recipe(md)
    assert (r.cfg, r.steps) == (7.5, 4)
    md = {"lcm_lora.objective": "pcm", "lcm_lora.phases": "8.0"}  # int() refuses "8.0": the default 4 phases
    assert read_recipe(md).phases == 4


@pytest.mark.parametrize("objective", ["pcm", "tscd"])
def test_a_phased_adapter_is_sampled_by_tcd_whatever_its_metadata_names(objective):
    md = {**recipe_for_objective(objective).to_metadata(), "lcm_lora.recommended_sampler": "lcm"}
    assert read_recipe(md).sampler == "tcd"
    md = {**recipe_for_objective("tcd").to_metadata(), "lcm_lora.recommended_sampler": "lcm"}
    assert read_recipe(md).sampler == "lcm"  # not phased: the recorded sampler


@pytest.mark.parametrize("objective, top", [("pcm", 50), ("tscd", 1000)])
def test_a_phase_count_the_samplers_cannot_use_falls_back(objective, top):
    """PCM's phases split the 50-point DDIM grid (TSCD's the 1000 timesteps): a PCM adapter recording 51 phases
    could not be sampled (the KSampler's auto mode failed, and the loader's phases input could not override it)."""
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    base = recipe_for_objective(objective).to_metadata()
    assert read_recipe({**base, "lcm_lora.phases": str(top)}).phases == top
    phased_timesteps(top, top, objective)  # the largest usable count samples
    fallback = read_recipe({**base, "lcm_lora.phases": str(top + 1), "lcm_lora.recommended_steps": "4"})
    assert fallback.phases == 4
    with pytest.raises(ConfigError):
        phased_timesteps(4, top + 1, objective)
