"""The nodes' TCD path on the CPU re-noises from a stream independent of ComfyUI's initial noise.

ComfyUI's ``comfy.sample.prepare_noise`` draws the initial noise ε₀ with ``torch.manual_seed(seed)``
on the CPU and hands the sampler ``extra_args["seed"]`` = the same seed; a re-noising stream
``default_noise_sampler(x, seed)`` on the CPU is then the same stream, so its first draw is ε₀ and a
TCD step ``x = denoised + σ_down·ε̂ + σ_up·z`` with ε̂ ≈ ε₀ carries noise of size σ_down + σ_up
instead of sqrt(σ_down² + σ_up²) = σ_next (demo/README.md, "A demo bug, found through TCD's γ").
``lcm_core.sampling.sample_tcd_comfyui`` (what ``nodes/lcm_sampler.build_sampler`` hands to ComfyUI
for ``tcd`` and ``auto``→tcd) seeds it with ``independent_noise_seed(seed)`` on the CPU. Checked
here without ComfyUI against the closed form; the real ComfyUI path: tests/comfy/test_comfy_tcd_cpu_seed.py.
"""
from __future__ import annotations

import pytest
import torch

from lcm_lora.lcm_core.sampling import (INDEPENDENT_NOISE_SEED_OFFSET, comfyui_tcd_noise_sampler,
                                        default_noise_sampler, independent_noise_seed, sample_tcd,
                                        sample_tcd_comfyui)
from lcm_lora.lcm_core.schedule import DiscreteSchedule
from lcm_lora.lcm_core.timesteps import lcm_timesteps, timesteps_to_sigmas

SEED, GAMMA = 1234, 0.5
SHAPE = (4, 4, 64, 64)  # 65536 values: the std of x is measured to ~0.3 %
SCHEDULE = DiscreteSchedule(convention="comfyui")  # what build_sampler passes


def zero_model(x, sigma, **_):
    """denoised = 0: then ε̂ = x/σ and x after a step is pure noise, σ_down·ε̂ + σ_up·z."""
    return torch.zeros_like(x)


def comfyui_initial_noise(seed: int) -> torch.Tensor:
    """ComfyUI 0.3.64 ``comfy.sample.prepare_noise`` (no batch_index): one CPU draw from ``torch.manual_seed``."""
    return torch.randn(SHAPE, generator=torch.manual_seed(seed), device="cpu")


def first_step(sampler):
    """(x after the first step, x before it, σ_down, σ_up, σ_next) for 4 LCM steps from pure noise at σ(999)."""
    sigmas = timesteps_to_sigmas(lcm_timesteps(4), SCHEDULE)
    eps0 = comfyui_initial_noise(SEED)
    x0 = eps0 * (1 + sigmas[0] ** 2) ** 0.5  # ComfyUI's EPS noise_scaling at max denoise
    x1 = sampler(zero_model, x0.clone(), sigmas[:2], extra_args={"seed": SEED}, disable=True,
                 gamma=GAMMA, eta=1.0, schedule=SCHEDULE)
    sigma_next = sigmas[1]
    t_s = torch.floor((1 - GAMMA) * SCHEDULE.sigma_to_timestep(sigma_next).float())  # TCD: s = ⌊(1−γ)·t_next⌋
    sigma_down = SCHEDULE.timestep_to_sigma(t_s)
    sigma_up = (sigma_next**2 - sigma_down**2) ** 0.5
    return x1, x0 / sigmas[0], float(sigma_down), float(sigma_up), float(sigma_next)


def test_seed_offset_is_the_demo_s():
    from lcm_lora.demo.sampler_seeds import SAMPLER_SEED_OFFSET, sampler_seed

    assert INDEPENDENT_NOISE_SEED_OFFSET == SAMPLER_SEED_OFFSET == 1_000_003  # the demo's seeds stay bit-identical
    assert independent_noise_seed(7) == sampler_seed(7) == 1_000_010


def test_on_cpu_the_first_injected_noise_is_not_comfyuis_initial_noise():
    x1, eps_hat, sigma_down, sigma_up, _ = first_step(sample_tcd_comfyui)
    z = (x1 - sigma_down * eps_hat) / sigma_up  # the injected noise
    independent = default_noise_sampler(x1, seed=independent_noise_seed(SEED))(None, None)
    torch.testing.assert_close(z, independent, rtol=0, atol=1e-4)
    initial = comfyui_initial_noise(SEED)
    assert (z - initial).abs().max() > 1.0
    assert abs(float(torch.corrcoef(torch.stack([z.flatten(), initial.flatten()]))[0, 1])) < 0.02

    # the old stream (sample_tcd's own default, seeded with the plain seed) re-injects ComfyUI's initial noise
    x1_old, eps_hat, sigma_down, sigma_up, _ = first_step(sample_tcd)
    torch.testing.assert_close((x1_old - sigma_down * eps_hat) / sigma_up, initial, rtol=0, atol=1e-4)


def test_the_noise_after_the_first_step_has_size_sigma_next():
    """denoised = 0: x₁ = σ_down·ε̂ + σ_up·z must have std σ_next = sqrt(σ_down² + σ_up²), not σ_down + σ_up."""
    x1, eps_hat, sigma_down, sigma_up, sigma_next = first_step(sample_tcd_comfyui)
    wrong = sigma_down * float(eps_hat.std()) + sigma_up
    assert wrong / sigma_next > 1.2  # γ 0.5, t 999 → 759: the reuse is 22 % too much noise
    assert float(x1.std()) == pytest.approx(sigma_next, rel=0.02)
    x1_old = first_step(sample_tcd)[0]
    assert float(x1_old.std()) == pytest.approx(wrong, rel=0.02)  # what the reuse gave (the check fails it)
    assert float(x1_old.std()) / sigma_next > 1.15


def test_the_rule_keeps_a_given_noise_sampler_no_seed_and_other_devices():
    x = torch.zeros(2, 3)
    given = default_noise_sampler(x, seed=5)
    assert comfyui_tcd_noise_sampler(x, 5, given) is given
    assert comfyui_tcd_noise_sampler(x, None) is None
    # not on the CPU: None = sample_tcd's default stream (that device's generator, unchanged for GPU users)
    assert comfyui_tcd_noise_sampler(torch.zeros(2, 3, device="meta"), 5) is None
    cpu = comfyui_tcd_noise_sampler(x, 5)(None, None)
    assert torch.equal(cpu, default_noise_sampler(x, seed=independent_noise_seed(5))(None, None))


def test_gamma_zero_and_an_explicit_noise_sampler_are_unchanged():
    sigmas = timesteps_to_sigmas(lcm_timesteps(4), SCHEDULE)
    x = comfyui_initial_noise(SEED)[:1] * (1 + sigmas[0] ** 2) ** 0.5

    def model(x, sigma, **_):
        return torch.tanh(x) * 0.5

    kw = dict(extra_args={"seed": SEED}, disable=True, eta=1.0, schedule=SCHEDULE)
    assert torch.equal(sample_tcd_comfyui(model, x, sigmas, gamma=0.0, **kw), sample_tcd(model, x, sigmas, gamma=0.0, **kw))
    ns = default_noise_sampler(x, seed=99)
    ns2 = default_noise_sampler(x, seed=99)
    assert torch.equal(sample_tcd_comfyui(model, x, sigmas, gamma=0.3, noise_sampler=ns, **kw),
                       sample_tcd(model, x, sigmas, gamma=0.3, noise_sampler=ns2, **kw))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_stream_is_unchanged():
    sigmas = timesteps_to_sigmas(lcm_timesteps(4), SCHEDULE).cuda()
    x = comfyui_initial_noise(SEED).cuda() * float((1 + sigmas[0] ** 2) ** 0.5)

    def model(x, sigma, **_):
        return torch.tanh(x) * 0.5

    kw = dict(extra_args={"seed": SEED}, disable=True, gamma=0.3, eta=1.0, schedule=SCHEDULE)
    assert torch.equal(sample_tcd_comfyui(model, x, sigmas, **kw), sample_tcd(model, x, sigmas, **kw))


@pytest.mark.parametrize("seed", [2**64 - 1, 2**64 - INDEPENDENT_NOISE_SEED_OFFSET, 0])
def test_every_seed_comfyui_allows_samples(seed):
    """ComfyUI's seed widget goes up to 2⁶⁴ − 1 and torch generators take seeds below 2⁶⁴: the offset wraps
    (seeds from 2⁶⁴ − 1 000 003 up used to fail with "Overflow when unpacking long long", even at γ 0)."""
    assert 0 <= independent_noise_seed(seed) < 2**64
    assert independent_noise_seed(seed) == (seed + INDEPENDENT_NOISE_SEED_OFFSET) - (2**64 if seed >= 2**64 - INDEPENDENT_NOISE_SEED_OFFSET else 0)
    sigmas = timesteps_to_sigmas(lcm_timesteps(2), SCHEDULE)
    x = torch.randn(1, 4, 8, 8)
    out = sample_tcd_comfyui(zero_model, x, sigmas, extra_args={"seed": seed}, disable=True, gamma=0.3,
                             schedule=SCHEDULE)
    assert torch.isfinite(out).all()
