"""The LCD solver and consistency parametrisation against diffusers (DDIMScheduler, LCMScheduler)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from lcm_lora.training.ddim_solver import DDIMSolver
from lcm_lora.training.lcd_step import LcdLoss, distance

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.fixture(scope="module")
def solver():
    return DDIMSolver(DDPMScheduler(**SD).alphas_cumprod, 50)


def test_grid_is_lcm_original_grid(solver):
    lcm = LCMScheduler(**SD, original_inference_steps=50)
    lcm.set_timesteps(50)
    assert sorted(solver.timesteps.tolist()) == sorted(lcm.timesteps.tolist())
    start, end = solver.start_and_target_timesteps(torch.arange(50))
    assert (start - end)[1:].eq(20).all() and end[0] == 0  # skip k = 20, t_n clamped at 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers(solver, prediction_type):
    """One solver step from tau_i equals DDIMScheduler(trailing, eta=0).step on the 50-step grid."""
    sched = DDIMScheduler(**SD, prediction_type=prediction_type, timestep_spacing="trailing", set_alpha_to_one=False,
                          clip_sample=False)
    sched.set_timesteps(50)
    gen = torch.Generator().manual_seed(0)
    for i in (0, 1, 17, 49):
        t = int(solver.timesteps[i])
        x = torch.randn(2, 4, 8, 8, generator=gen)
        out = torch.randn(2, 4, 8, 8, generator=gen)
        idx = torch.full((2,), i)
        tt = solver.timesteps[idx]
        x0 = solver.predicted_x0(out, tt, x, prediction_type)
        eps = solver.predicted_eps(out, tt, x, prediction_type)
        ours = solver.ddim_step(x0, eps, idx)
        ref = sched.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        ref_x0 = sched.step(out, t, x, eta=0.0).pred_original_sample
        torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-5)


def test_add_noise_matches_ddpm(solver):
    sched = DDPMScheduler(**SD)
    x0, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([19, 499, 999])
    torch.testing.assert_close(solver.add_noise(x0, noise, t), sched.add_noise(x0, noise, t))


def test_consistency_boundary_matches_lcm_scheduler(solver):
    """f(x, t) = c_skip x + c_out x0 equals LCMScheduler.step's denoised output; f(x, 0) = x."""
    lcd = LcdLoss(solver, "epsilon", timestep_scaling=10.0)
    lcm = LCMScheduler(**SD, original_inference_steps=50, timestep_scaling=10.0)
    lcm.set_timesteps(4)
    gen = torch.Generator().manual_seed(1)
    for t in lcm.timesteps.tolist():
        x = torch.randn(2, 4, 8, 8, generator=gen)
        eps = torch.randn(2, 4, 8, 8, generator=gen)
        lcm._step_index = list(lcm.timesteps).index(t)
        ref = lcm.step(eps, t, x, generator=torch.Generator().manual_seed(0)).denoised
        ours = lcd.consistency(eps, x, torch.full((2,), t))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    f0 = lcd.consistency(torch.randn(2, 4, 8, 8, generator=gen) * 100, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(f0, x)  # exact boundary condition at t = 0
    f1 = lcd.consistency(torch.zeros_like(x), x, torch.ones(2, dtype=torch.long))
    c_skip, _ = lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(1))
    x0 = x / solver.alpha_schedule[1]
    assert (f1 - x).abs().max() <= (1 - c_skip) * x0.abs().max() + 1e-6  # f(x, t -> 0) -> x


def test_distances():
    a, b = torch.randn(100), torch.randn(100)
    c = 0.001
    torch.testing.assert_close(distance(a, b, "huber", c), (((a - b) ** 2 + c * c).sqrt() - c).mean())
    torch.testing.assert_close(distance(a, b, "l2"), torch.nn.functional.mse_loss(a, b))


@pytest.mark.parametrize("objective", ["lcm", "tcd"])
def test_the_step_keeps_float64_and_float32_as_given(objective):
    """The training step computes in float32 (half-precision outputs are promoted) and stays float64 when given
    float64 — the exact step the reference-step parity tests compare — and the two agree to float32 rounding. The
    schedules follow the alphas' dtype (the trainer's are float32: unchanged)."""
    from lcm_lora.training.lcd_step import LcdRandomness

    alphas = DDPMScheduler(**SD).alphas_cumprod
    assert DDIMSolver(alphas, 50).alpha_schedule.dtype == torch.float32
    assert DDIMSolver(alphas.double(), 50).alpha_schedule.dtype == torch.float64
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    cond = torch.randn(3, 5, generator=gen)
    index, s = torch.tensor([3, 20, 49]), torch.tensor([19, 199, 379])

    def model(x, t, c):  # a smooth stand-in for a UNet: depends on x, t and the condition
        return torch.tanh(x * (1 + t.reshape(-1, 1, 1, 1) / 1000) + c.mean(dim=1).reshape(-1, 1, 1, 1))

    losses = {}
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        work = torch.float64 if dtype == torch.float64 else torch.float32
        lcd = LcdLoss(DDIMSolver(alphas.to(work), 50), "epsilon", "huber", 0.001, 10.0, objective)
        rnd = LcdRandomness(index, noise.to(work), torch.full((3,), 1.0, dtype=work), s if objective == "tcd" else None)

        def m(x, t, c, dtype=dtype):
            return model(x, t, c).to(dtype)  # a half-precision model hands back bf16 outputs

        pred, target = lcd.predictions(m, m, m, latents.to(work), cond.to(work), cond.to(work), rnd)
        assert pred.dtype == target.dtype == work
        losses[dtype] = lcd(m, m, m, latents.to(work), cond.to(work), cond.to(work), rnd)
        assert losses[dtype].dtype == work
    assert float(losses[torch.float32]) == pytest.approx(float(losses[torch.float64]), rel=1e-4)
