"""Phased inference timesteps (``lcm_core.phased_timesteps``) and the pcm / tscd sampling recipes.

References: TSCD's edge-to-edge schedule is diffusers' ``DDIMScheduler(timestep_spacing="trailing")``;
PCM's edges are the reference trainer's ``ddim_timesteps_prev[inference_indices]``
(``train_pcm_lora_sd15.py``, ``DDIMSolver``), rebuilt here from its own definitions, and every
sampling step must land on the edge the training map of its phase jumps to."""
import numpy as np
import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.phased_timesteps import (pcm_phase_edges, pcm_phase_starts, phased_timesteps,
                                                tscd_segment_edges)
from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_for_objective, recipe_timesteps


def _pcm_reference_edge(index: int, phases: int, n_ddim: int = 50, T: int = 1000) -> int:
    """The PCM reference's end timestep for solver index ``index`` (``ddim_style_multiphase_pred``)."""
    step_ratio = T // n_ddim
    ddim = (np.arange(1, n_ddim + 1) * step_ratio).round().astype(np.int64) - 1
    prev = np.asarray([0] + ddim[:-1].tolist())
    starts = np.floor(np.linspace(0, len(ddim), num=phases, endpoint=False)).astype(np.int64)
    return int(prev[starts[starts <= index].max()])


def test_pcm_edges_table():
    assert pcm_phase_starts(4) == [0, 12, 25, 37]
    assert pcm_phase_edges(4) == [0, 239, 499, 739]
    assert pcm_phase_edges(1) == [0]
    assert pcm_phase_edges(2) == [0, 499]
    assert pcm_phase_edges(8) == [0, 119, 239, 359, 499, 619, 739, 859]
    assert tscd_segment_edges(4) == [0, 250, 500, 750]


@pytest.mark.parametrize("phases", [1, 2, 3, 4, 5, 8])
def test_pcm_steps_land_on_the_training_edges(phases):
    ts = phased_timesteps(phases, phases, "pcm")
    assert ts[0] == 999 and len(ts) == phases
    grid = list(range(19, 1000, 20))
    for t, t_next in zip(ts, ts[1:] + [0]):
        assert t in grid
        assert _pcm_reference_edge(grid.index(t), phases) == t_next, (t, t_next)


@pytest.mark.parametrize("segments", [1, 2, 4, 5, 8])
def test_tscd_schedule_is_diffusers_trailing_ddim(segments):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    ref.set_timesteps(segments)
    assert phased_timesteps(segments, segments, "tscd") == ref.timesteps.tolist()
    # each point lies in the segment whose lower edge is one above the next point (TSCD: t_b = (t // size)·size)
    size = 1000 // segments
    ts = phased_timesteps(segments, segments, "tscd")
    for t, t_next in zip(ts, ts[1:] + [-1]):
        assert (t // size) * size == t_next + 1


def test_divisors_multiples_and_fallback():
    assert phased_timesteps(2, 4, "pcm") == [999, 499]
    assert phased_timesteps(1, 4, "tscd") == [999]
    eight = phased_timesteps(8, 4, "pcm")
    assert set(phased_timesteps(4, 4, "pcm")) <= set(eight) and eight == sorted(eight, reverse=True)
    assert phased_timesteps(3, 4, "pcm") == [999, 666, 332]  # diffusers trailing spacing for 3 steps


@pytest.mark.parametrize("steps", [61, 103, 121, 3, 8, 16])
def test_trailing_fallback_has_exactly_steps_points(steps):
    """diffusers' trailing spacing (``np.arange`` of the float step) gives 62 points for 61 steps, the last −1; the
    fallback keeps its first ``steps`` (8 steps of 4 phases at denoise 0.13 used to start at 114 and end at −1)."""
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    ref.set_timesteps(steps)
    phases = 7 if steps % 7 else 5  # neither a divisor nor a multiple: the fallback
    ts = phased_timesteps(steps, phases, "tscd")
    assert ts == ref.timesteps.tolist()[:steps] and len(ts) == steps and min(ts) >= 0
    assert phased_timesteps(8, 4, "pcm", denoise=0.13) == [130, 114, 97, 81, 65, 48, 32, 15]


def test_a_multiple_that_does_not_fit_falls_back_like_any_other_count():
    """4 steps at denoise 0.04 / 0.05 (50 / 80 steps: 20 per phase, more than PCM's 13-point first phase) sample the
    evenly spaced tail like 0.03 / 0.06 do, instead of an error only at those two values."""
    for denoise in (0.03, 0.04, 0.05, 0.06):
        total = int(4 / denoise)
        ts = phased_timesteps(4, 4, "pcm", denoise=denoise)
        assert len(ts) == 4 and len(set(ts)) == 4 and min(ts) >= 0
        if total % 4 == 0 and total // 4 > 13:
            assert ts == phased_timesteps(total, 13, "tscd")[-4:]  # the trailing tail (13: neither divisor nor multiple)
    assert phased_timesteps(40, 4, "pcm", starts=[0, 15, 30, 41])[:3] == [999, 974, 949]


def test_denoise_keeps_the_tail_like_comfyui_ksampler():
    assert phased_timesteps(2, 4, "pcm", denoise=0.5) == phased_timesteps(4, 4, "pcm")[-2:]
    with pytest.raises(ConfigError, match="denoise"):
        phased_timesteps(4, 4, "pcm", denoise=0.0)


@pytest.mark.parametrize("kwargs, match", [({"family": "lcm"}, "family"), ({"phases": 0}, "phases"),
                                           ({"phases": 51}, "exceeds"), ({"steps": 0}, "steps")])
def test_bad_arguments_are_config_errors(kwargs, match):
    args = {"steps": 4, "phases": 4, "family": "pcm", **kwargs}
    with pytest.raises(ConfigError, match=match):
        phased_timesteps(**args)


@pytest.mark.parametrize("objective", ["pcm", "tscd"])
def test_phased_recipe_round_trip_and_timesteps(objective):
    r = recipe_for_objective(objective, w_range=(1.0, 1.0), phases=8)
    assert (r.sampler, r.gamma, r.steps, r.phases, r.model_sampling) == ("tcd", 0.0, 8, 8, "eps")
    md = r.to_metadata()
    assert md["lcm_lora.phases"] == "8"
    assert read_recipe(md) == r
    assert recipe_timesteps(r, 8) == phased_timesteps(8, 8, objective)
    assert recipe_timesteps(recipe_for_objective("tcd"), 4) is None
    assert recipe_timesteps(None, 4) is None
    bad = {**md, "lcm_lora.phases": "zero"}
    assert read_recipe(bad).phases == 4


def test_phase_starts_move_the_pcm_edges():
    """``starts`` (lcd.phase_starts): phase m's edge is max(e_m·k − 1, 0) with k = 1000 / 50, closed form."""
    starts = [0, 15, 30, 41]
    assert pcm_phase_starts(4, starts=starts) == starts
    assert pcm_phase_edges(4, starts=starts) == [0, 299, 599, 819]
    assert phased_timesteps(4, 4, "pcm", starts=starts) == [999, 819, 599, 299]
    assert phased_timesteps(2, 4, "pcm", starts=starts) == [999, 599]  # a divisor: every other edge
    assert phased_timesteps(2, 4, "pcm", denoise=0.5, starts=starts) == [599, 299]  # img2img: the tail
    # a multiple halves each phase on the DDIM grid (τ_i = 20(i + 1) − 1): 999 → 819 (indices 49 → 40) at 45 (919),
    # 299 → 0 (index 14 → below the grid) at 7 (159)
    assert phased_timesteps(8, 4, "pcm", starts=starts) == [999, 919, 819, 719, 599, 459, 299, 159]
    assert phased_timesteps(4, 4, "pcm", starts=None) == [999, 739, 499, 239]


@pytest.mark.parametrize("starts,match", [([0, 15, 30], "one start per phase"), ([1, 15, 30, 41], "start at 0"),
                                          ([0, 30, 15, 41], "increase"), ([0, 15, 30, 50], "solver grid"),
                                          (["0", "x", "30", "41"], "list of solver indices")])
def test_bad_phase_starts_are_config_errors(starts, match):
    with pytest.raises(ConfigError, match=match):
        phased_timesteps(4, 4, "pcm", starts=starts)


def test_phase_starts_are_pcm_only_and_round_trip_in_the_recipe():
    with pytest.raises(ConfigError, match="PCM setting"):
        phased_timesteps(4, 4, "tscd", starts=[0, 15, 30, 41])
    r = recipe_for_objective("pcm", phases=4, phase_starts=(0, 15, 30, 41))
    md = r.to_metadata()
    assert md["lcm_lora.phase_starts"] == "0,15,30,41"
    assert read_recipe(md) == r and recipe_timesteps(r, 4) == [999, 819, 599, 299]
    assert "lcm_lora.phase_starts" not in recipe_for_objective("pcm", phases=4).to_metadata()
    assert recipe_for_objective("tscd", phases=4, phase_starts=(0, 15, 30, 41)).phase_starts is None
    for bad in ("0,15,30", "0,15,x,41", "0,15,30,60"):  # unreadable: advisory, the even split
        assert read_recipe({**md, "lcm_lora.phase_starts": bad}) == recipe_for_objective("pcm", phases=4)
