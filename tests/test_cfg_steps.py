"""lcm_core.cfg_steps: which model evaluations get CFG when it is limited to the first k steps.

Reference: the demo's definition (``demo/student_sampling.py``: guided for the first k *calls* of a
one-evaluation-per-step sampler, ``steps + k`` UNet evaluations), checked on our LCM and TCD
samplers over the real LCM / TCD timestep grids; for a sampler with several evaluations per step,
the step intervals ``(σ_{i+1}, σ_i]`` in closed form.
"""
import pytest
import torch

from lcm_lora.lcm_core.cfg_steps import EVERY_STEP, cfg_at, guided_step_count, unet_evaluations
from lcm_lora.lcm_core.sampling import sample_lcm, sample_tcd
from lcm_lora.lcm_core.timesteps import lcm_timesteps, tcd_timesteps, timesteps_to_sigmas

CFG = 3.0


def _grids():
    for steps in (1, 2, 4, 8):
        yield "lcm", steps, timesteps_to_sigmas(lcm_timesteps(steps))
        yield "tcd", steps, timesteps_to_sigmas(tcd_timesteps(steps))


@pytest.mark.parametrize("kind,steps,sigmas", list(_grids()), ids=lambda v: str(v) if not torch.is_tensor(v) else "")
def test_first_k_calls_are_guided(kind, steps, sigmas):
    for k in [0, 1, 2, steps - 1, steps, steps + 3, EVERY_STEP]:
        if k < 0:
            continue
        seen = []

        def model(x, sigma, **_):
            seen.append(cfg_at(float(sigma[0]), sigmas.tolist(), CFG, k))
            return 0.5 * x

        x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
        sampler = sample_lcm if kind == "lcm" else sample_tcd
        sampler(model, x, sigmas, extra_args={"seed": 1}, disable=True)
        kk = min(k, steps)
        assert seen == [CFG] * kk + [1.0] * (steps - kk), (k, seen)  # the demo's call count
        assert unet_evaluations(steps, CFG, k) == steps + kk
        assert sum(2 if c != 1.0 else 1 for c in seen) == unet_evaluations(steps, CFG, k)


def test_cfg_one_never_costs_a_negative_evaluation():
    assert unet_evaluations(4, 1.0, 2) == 4
    assert unet_evaluations(4, 1.0) == 4
    assert unet_evaluations(4, 2.0) == 8  # default: every step, as before
    assert guided_step_count(EVERY_STEP, 4) == 4


def test_several_evaluations_per_step_follow_the_step_interval():
    """A Heun-like sampler also evaluates at σ_{i+1} (end of step i) and between grid points."""
    sigmas = [14.6, 4.0, 1.2, 0.3, 0.0]
    for k in range(5):
        for i in range(4):
            mid = 0.5 * (sigmas[i] + sigmas[i + 1])
            want = CFG if i < k else 1.0
            assert cfg_at(sigmas[i], sigmas, CFG, k) == want
            assert cfg_at(mid, sigmas, CFG, k) == want
            if sigmas[i + 1] > 0:  # σ_{i+1} itself starts step i+1
                assert cfg_at(sigmas[i + 1], sigmas, CFG, k) == (CFG if i + 1 < k else 1.0)


def test_negative_cfg_steps_is_refused():
    with pytest.raises(ValueError, match="cfg_steps"):
        guided_step_count(-1, 4)
