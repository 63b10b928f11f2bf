"""LCM boundary conditions vs diffusers LCMScheduler and the closed forms; diffusers vs ComfyUI convention gap."""
import numpy as np
import pytest
import torch

from lcm_lora.lcm_core.boundary import boundary_scalings, comfyui_minus_diffusers, consistency_output
from lcm_lora.lcm_core.denoisers import eps_to_denoised
from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.schedule import DiscreteSchedule
from lcm_lora.lcm_core.timesteps import lcm_timesteps

diffusers = pytest.importorskip("diffusers")


def test_scalings_match_diffusers_for_every_timestep():
    ref = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = torch.arange(1000)
    c_skip, c_out = boundary_scalings(t)
    for i in (0, 1, 2, 19, 39, 259, 499, 759, 999):
        r_skip, r_out = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(i))
        assert float(c_skip[i]) == pytest.approx(float(r_skip), rel=1e-6, abs=1e-12)
        assert float(c_out[i]) == pytest.approx(float(r_out), rel=1e-6, abs=1e-12)
    # closed form (float64) and the boundary condition f(x, 0) = x
    tt = t.double().numpy() * 10
    np.testing.assert_allclose(c_skip.numpy(), 0.25 / (tt**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out.numpy(), tt / np.sqrt(tt**2 + 0.25), rtol=1e-6)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0


def test_consistency_output_matches_lcm_scheduler_denoised():
    """diffusers' LCMScheduler.step: denoised = c_out * pred_x0 + c_skip * sample (VP sample)."""
    ref = diffusers.LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ref.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in ref.timesteps[:1].tolist() + [19, 1]:
        ref.set_timesteps(timesteps=[t, 0] if t else [t])
        out = ref.step(eps, torch.tensor(t), sample)
        ac = ref.alphas_cumprod[t]
        pred_x0 = (sample - (1 - ac).sqrt() * eps) / ac.sqrt()
        assert torch.allclose(consistency_output(sample, pred_x0, t), out.denoised, atol=1e-6)
        # per-batch timesteps
        both = consistency_output(sample, pred_x0, torch.tensor([t, t]))
        assert torch.allclose(both, out.denoised, atol=1e-6)


def test_eps_to_denoised_conventions_and_their_exact_gap():
    sched = DiscreteSchedule()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64) * 3
    eps = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    for t in (0, 1, 5, 19, 259, 999):
        sigma = sched.sigmas[t].double()
        x0 = x - sigma * eps
        c_skip, c_out = 0.25 / ((10.0 * t) ** 2 + 0.25), 10.0 * t / ((10.0 * t) ** 2 + 0.25) ** 0.5
        diff_ref = c_out * x0 + c_skip * x / (1 + sigma**2) ** 0.5   # diffusers: c_skip * VP sample
        comfy_ref = c_out * x0 + c_skip * x                          # ComfyUI LCM.calculate_denoised
        d = eps_to_denoised(x, sigma, eps, t, "diffusers")
        c = eps_to_denoised(x, sigma, eps, t, "comfyui")
        assert torch.allclose(d, diff_ref, rtol=1e-6, atol=1e-9)
        assert torch.allclose(c, comfy_ref, rtol=1e-6, atol=1e-9)
        assert torch.allclose(eps_to_denoised(x, sigma, eps, t, None), x0)
        assert torch.allclose(c - d, comfyui_minus_diffusers(x, sigma, t).double(), rtol=1e-4, atol=1e-12)
    with pytest.raises(ConfigError, match="boundary"):
        eps_to_denoised(x, 1.0, eps, 1, "karras")


def test_gap_is_negligible_on_the_lcm_grid():
    """Quantified: for LCM timesteps (t >= 19) the convention gap is < 1e-7 relative to |x_sigma|."""
    sched = DiscreteSchedule()
    ts = torch.tensor(lcm_timesteps(50))
    rel = comfyui_minus_diffusers(torch.ones(len(ts), 1), sched.sigmas[ts], ts).abs().max()
    t = ts.double()
    closed = (0.25 / ((10 * t) ** 2 + 0.25) * (1 - 1 / (1 + sched.sigmas[ts].double() ** 2) ** 0.5)).max()
    assert float(rel) == pytest.approx(float(closed), rel=1e-5)
    assert float(rel) < 1e-7
    # ...but not at tiny timesteps (t = 0: c_skip = 1)
    assert float(comfyui_minus_diffusers(torch.ones(1), sched.sigmas[0], 0)) > 4e-4
