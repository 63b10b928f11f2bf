"""lcm_timesteps / tcd_timesteps vs diffusers LCMScheduler/TCDScheduler.set_timesteps; SIGMAS round trips."""
import itertools
import logging

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.schedule import DiscreteSchedule
from lcm_lora.lcm_core.timesteps import (lcm_sigmas, lcm_timesteps, sigmas_to_timesteps, tcd_sigmas, tcd_timesteps,
                                         timesteps_to_sigmas)

diffusers = pytest.importorskip("diffusers")

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _ref(cls, **kwargs):
    sched = cls(**SD)
    try:
        sched.set_timesteps(**kwargs)
    except ValueError:
        return ValueError
    return sched.timesteps.tolist()


def _ours(fn, **kwargs):
    try:
        return fn(**kwargs)
    except ConfigError:
        return ValueError


STRENGTHS = [1.0, 0.99, 0.75, 0.6, 0.5, 0.33, 0.3, 0.1, 0.05, 0.0]


@pytest.mark.parametrize("original", [50, 25, 8, 100, 1000])
def test_lcm_timesteps_match_diffusers(original):
    for n, strength in itertools.product(list(range(1, 13)) + [20, 25, 49, 50, 51, 100], STRENGTHS):
        kwargs = dict(num_inference_steps=n, original_inference_steps=original, strength=strength)
        assert _ours(lcm_timesteps, **kwargs) == _ref(diffusers.LCMScheduler, **kwargs), kwargs


@pytest.mark.parametrize("original", [None, 50, 25, 1000])
def test_tcd_timesteps_match_diffusers(original):
    for n, strength in itertools.product(list(range(1, 13)) + [20, 25, 49, 50, 51, 100], STRENGTHS):
        kwargs = dict(num_inference_steps=n, original_inference_steps=original, strength=strength)
        assert _ours(tcd_timesteps, **kwargs) == _ref(diffusers.TCDScheduler, **kwargs), kwargs


CUSTOM = [[999, 759, 499, 259], [999, 500, 250, 30], [899, 19], [999], [999, 979, 959, 939, 919, 899, 499, 19]]


@pytest.mark.parametrize("timesteps", CUSTOM)
def test_custom_timesteps_match_diffusers(timesteps):
    for strength in (1.0, 0.75, 0.5, 0.25, 0.0):
        for fn, cls in ((lcm_timesteps, diffusers.LCMScheduler), (tcd_timesteps, diffusers.TCDScheduler)):
            kwargs = dict(timesteps=list(timesteps), strength=strength)
            assert _ours(fn, **kwargs) == _ref(cls, **kwargs), (fn.__name__, kwargs)


@pytest.mark.parametrize("bad", [[999, 999], [259, 499], [1000, 500]])
def test_bad_custom_timesteps_raise_like_diffusers(bad):
    assert _ref(diffusers.LCMScheduler, timesteps=bad) is ValueError
    with pytest.raises(ConfigError, match="lcm_timesteps"):
        lcm_timesteps(timesteps=bad)
    with pytest.raises(ConfigError, match="tcd_timesteps"):
        tcd_timesteps(timesteps=bad)


def test_argument_errors_are_clear():
    with pytest.raises(ConfigError, match="got neither"):
        lcm_timesteps()
    with pytest.raises(ConfigError, match="got both"):
        lcm_timesteps(4, timesteps=[999])
    with pytest.raises(ConfigError, match="strength"):
        lcm_timesteps(4, strength=1.5)
    with pytest.raises(ConfigError, match="num_inference_steps"):
        lcm_timesteps(0)
    with pytest.raises(ConfigError, match="raise strength/denoise"):
        lcm_timesteps(8, strength=0.1)


def test_off_grid_custom_timesteps_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="lcm_lora.lcm_core.timesteps"):
        lcm_timesteps(timesteps=[999, 500])
    assert "[500]" in caplog.text


@pytest.mark.parametrize("schedule", [DiscreteSchedule(), DiscreteSchedule(convention="comfyui"),
                                      DiscreteSchedule().distilled(50)])
def test_lcm_sigmas_round_trip(schedule):
    for n, strength in itertools.product(range(1, 51), (1.0, 0.5)):
        try:
            ts = lcm_timesteps(n, strength=strength)
        except ConfigError:
            continue
        sig = timesteps_to_sigmas(ts, schedule)
        assert sig.dtype == torch.float32 and len(sig) == len(ts) + 1 and float(sig[-1]) == 0.0
        assert bool((sig[:-1] > sig[1:]).all())
        assert sigmas_to_timesteps(sig, schedule) == ts
        assert schedule.sigma_to_timestep(sig[:-1]).tolist() == ts
    full = DiscreteSchedule()
    assert torch.equal(lcm_sigmas(4, denoise=0.6), timesteps_to_sigmas(lcm_timesteps(4, strength=0.6), full))
    assert torch.equal(tcd_sigmas(4, original_inference_steps=50),
                       timesteps_to_sigmas(tcd_timesteps(4, original_inference_steps=50), full))


def test_sigmas_are_table_values_and_match_diffusers_sigma():
    full = DiscreteSchedule()
    ts = lcm_timesteps(4)
    ac = diffusers.LCMScheduler(**SD).alphas_cumprod.double()[ts]
    closed = ((1 - ac) / ac).sqrt().float()
    sig = timesteps_to_sigmas(ts, full)[:-1]
    assert torch.allclose(sig, closed, rtol=1e-6)
    assert torch.equal(sig, full.sigmas[ts])


def test_custom_non_grid_timesteps_round_trip_on_full_schedule_only():
    ts = [999, 500, 250, 30]
    assert sigmas_to_timesteps(timesteps_to_sigmas(ts)) == ts
    # the LCM-distilled view (ComfyUI ModelSamplingDiscrete "lcm") snaps to the 20k+19 grid
    dist = DiscreteSchedule().distilled(50)
    assert all((t + 1) % 20 == 0 for t in sigmas_to_timesteps(timesteps_to_sigmas(ts), dist))


def test_empty_schedule_gives_empty_sigmas():
    assert lcm_timesteps(timesteps=[999, 499], strength=0.0) == []
    assert timesteps_to_sigmas([]).numel() == 0
    with pytest.raises(ConfigError, match="descending"):
        timesteps_to_sigmas([259, 499])


def test_random_arguments_match_diffusers():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
    @hypothesis.given(n=st.integers(1, 60), original=st.integers(1, 1000), strength=st.floats(0.0, 1.0),
                      explicit=st.booleans())
    def check(n, original, strength, explicit):
        kwargs = dict(num_inference_steps=n, original_inference_steps=original, strength=strength)
        assert _ours(lcm_timesteps, **kwargs) == _ref(diffusers.LCMScheduler, **kwargs), kwargs
        if not explicit:
            kwargs["original_inference_steps"] = None
        assert _ours(tcd_timesteps, **kwargs) == _ref(diffusers.TCDScheduler, **kwargs), kwargs

    check()


@pytest.mark.parametrize("original", [50, 100])
def test_the_suggested_denoise_is_the_smallest_that_fits(original):
    """When steps do not fit original_steps × denoise, the LCM Scheduler suggests a denoise: it must be accepted by
    diffusers' LCMScheduler (strength) and be the smallest on the 0.01 grid (29 of 50 used to get 0.58, which
    gives int(50 × 0.58) = 28 timesteps)."""
    import re

    from lcm_lora.lcm_core.timesteps import check_lcm_inputs

    for steps in range(2, original + 1):
        with pytest.raises(ConfigError) as refused:
            check_lcm_inputs(steps, original, 0.01)
        need = float(re.search(r"raise denoise to at least ([0-9.]+)", str(refused.value)).group(1))
        check_lcm_inputs(steps, original, need)
        ref = diffusers.LCMScheduler(original_inference_steps=original)
        ref.set_timesteps(steps, strength=need)
        assert len(ref.timesteps) == steps
        with pytest.raises(ConfigError):
            check_lcm_inputs(steps, original, round(need - 0.01, 2))
