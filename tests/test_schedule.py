"""DiscreteSchedule vs diffusers (alphas_cumprod), closed forms (float64) and ComfyUI's conversion rules."""
import numpy as np
import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.schedule import DiscreteSchedule, DistilledDiscreteSchedule

diffusers = pytest.importorskip("diffusers")


def _float64_reference():
    """Closed form in float64 numpy: scaled_linear betas, cumprod, sigma = sqrt((1-ac)/ac)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    return ac, np.sqrt((1 - ac) / ac)


def test_alphas_cumprod_bitwise_equal_to_diffusers():
    ref = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    sched = DiscreteSchedule()
    assert sched.alphas_cumprod.dtype == torch.float32
    assert torch.equal(sched.alphas_cumprod, ref)
    assert torch.equal(DiscreteSchedule(beta_schedule="linear").alphas_cumprod,
                       diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear").alphas_cumprod)


@pytest.mark.parametrize("convention,rtol", [("diffusers", 3e-5), ("comfyui", 1e-6)])
def test_sigmas_match_closed_form(convention, rtol):
    _, sig64 = _float64_reference()
    sched = DiscreteSchedule(convention=convention)
    assert sched.sigmas.dtype == torch.float32 and sched.sigmas.shape == (1000,)
    np.testing.assert_allclose(sched.sigmas.numpy(), sig64, rtol=rtol)
    assert sched.sigma_min == sched.sigmas[0] and sched.sigma_max == sched.sigmas[-1]
    assert float(sched.sigma_max) == pytest.approx(14.6146, abs=1e-3)  # well-known SD sigma_max


def test_timestep_to_sigma_is_log_linear_interpolation():
    sched = DiscreteSchedule()
    log_s = np.log(sched.sigmas.double().numpy())
    ts = np.array([0.0, 0.25, 1.5, 18.9, 499.0, 500.5, 998.2, 999.0])
    low = np.floor(ts).astype(int)
    high = np.ceil(ts).astype(int)
    w = ts - low
    expected = np.exp((1 - w) * log_s[low] + w * log_s[high])
    got = sched.timestep_to_sigma(torch.tensor(ts)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # clamped at both ends, like ModelSamplingDiscrete.sigma
    assert torch.allclose(sched.timestep_to_sigma(torch.tensor([-5.0, 2000.0])), sched.sigmas[[0, -1]], rtol=1e-6)


def test_sigma_to_timestep_round_trip_and_nearest():
    sched = DiscreteSchedule()
    t = torch.arange(1000)
    assert torch.equal(sched.sigma_to_timestep(sched.sigmas), t)
    assert torch.equal(sched.sigma_to_timestep(sched.grid_sigma(t.float())), t)
    assert torch.equal(sched.grid_sigma(t.float()), sched.sigmas)
    # off-grid sigmas: brute-force nearest in log space
    rng = np.random.default_rng(0)
    sig = np.exp(rng.uniform(np.log(0.03), np.log(14.0), 200)).astype(np.float32)
    log_table = np.log(sched.sigmas.numpy())
    expected = np.abs(np.log(sig)[None, :] - log_table[:, None]).argmin(axis=0)
    assert sched.sigma_to_timestep(torch.from_numpy(sig)).tolist() == expected.tolist()
    assert int(sched.sigma_to_timestep(torch.tensor(0.0))) == 0


def test_continuous_timestep_inverts_interpolation():
    sched = DiscreteSchedule()
    ts = torch.tensor([0.0, 3.25, 19.0, 250.5, 998.75, 999.0])
    back = sched.sigma_to_continuous_timestep(sched.timestep_to_sigma(ts))
    assert torch.allclose(back, ts, atol=2e-3)
    assert torch.equal(sched.sigma_to_continuous_timestep(sched.sigmas), torch.arange(1000).float())
    assert float(sched.sigma_to_continuous_timestep(torch.tensor(0.0))) == 0.0


def test_distilled_grid_and_snapping():
    full = DiscreteSchedule()
    dist = full.distilled(50)
    assert isinstance(dist, DistilledDiscreteSchedule) and dist.base is full
    grid = list(range(19, 1000, 20))
    assert dist.grid_timesteps.tolist() == grid
    assert torch.equal(dist.sigmas, full.sigmas[grid])
    assert torch.equal(dist.alphas_cumprod, full.alphas_cumprod)
    assert dist.sigma_to_timestep(dist.sigmas).tolist() == grid
    # every full-table sigma snaps to the nearest grid timestep in log-sigma
    log_grid = np.log(full.sigmas[grid].numpy())
    expected = np.array(grid)[np.abs(np.log(full.sigmas.numpy())[None, :] - log_grid[:, None]).argmin(axis=0)]
    assert dist.sigma_to_timestep(full.sigmas).tolist() == expected.tolist()
    # grid timesteps map to the table sigma; in between interpolates along the grid
    assert torch.equal(dist.grid_sigma(torch.tensor(grid, dtype=torch.float32)), full.sigmas[grid])
    mid = float(np.exp(0.5 * (np.log(full.sigmas[39].item()) + np.log(full.sigmas[59].item()))))
    assert float(dist.timestep_to_sigma(torch.tensor(49.0))) == pytest.approx(mid, rel=1e-6)
    assert DiscreteSchedule().distilled(25).grid_timesteps.tolist() == list(range(39, 1000, 40))


def test_scaled_space_matches_diffusers_add_noise():
    sched = DiscreteSchedule()
    ref = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in (19, 259, 999):
        sigma = sched.sigmas[t]
        sample = sched.to_scaled(x0 + sigma * noise, sigma)
        expected = ref.add_noise(x0, noise, torch.tensor([t]))
        assert (sample - expected).abs().max() < 1e-5
        assert (sched.from_scaled(sample, sigma) - (x0 + sigma * noise)).abs().max() < 1e-4


@pytest.mark.parametrize("kwargs", [dict(convention="k"), dict(beta_schedule="cosine"), dict(beta_start=0.1, beta_end=0.01),
                                    dict(num_train_timesteps=1)])
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match="DiscreteSchedule"):
        DiscreteSchedule(**kwargs)
    with pytest.raises(ConfigError, match="original_inference_steps"):
        DiscreteSchedule().distilled(0)


def test_zero_terminal_snr_matches_diffusers_rescale():
    """Lin et al. 2024 Algorithm 1 (diffusers' ``rescale_zero_terminal_snr`` on the betas): the same σ at every
    timestep but the last, where diffusers' ᾱ is 0 (σ = ∞) and ComfyUI's (ours) is 4.8973e-08 (σ ≈ 4519)."""
    import pytest
    import torch
    from diffusers.schedulers.scheduling_lcm import rescale_zero_terminal_snr

    from lcm_lora.lcm_core.errors import ConfigError
    from lcm_lora.lcm_core.schedule import DiscreteSchedule

    ours = DiscreteSchedule(convention="comfyui", zero_terminal_snr=True)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    assert float(abar[-1]) == 0.0
    ref = ((1 - abar[:-1]) / abar[:-1]).sqrt()
    torch.testing.assert_close(ours.sigmas[:-1].double(), ref, rtol=1e-5, atol=0)
    assert float(ours.sigma_max) == pytest.approx(((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5, rel=1e-6)
    torch.testing.assert_close(ours.alphas_cumprod.double(), 1 / (ours.sigmas.double() ** 2 + 1), rtol=1e-5, atol=0)
    assert torch.equal(ours.timestep_to_sigma(torch.tensor(999.0)), ours.sigma_max)
    plain = DiscreteSchedule(convention="comfyui")
    assert float(plain.sigma_max) < 15 and not plain.zero_terminal_snr
    with pytest.raises(ConfigError, match="zero_terminal_snr needs convention 'comfyui'"):
        DiscreteSchedule(zero_terminal_snr=True)
