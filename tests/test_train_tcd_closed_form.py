"""TCD (``lcd.objective: tcd``) on Gaussian data, where the PF-ODE solution map is known in closed form.

Same setting as ``test_train_gaussian_closed_form.py`` (data N(μ_c, diag s²), unconditional N(μ_u, s²),
LCD's guided teacher = exact ε of N(μ_g, s²) with μ_g = μ_c + ω(μ_c − μ_u)). The PF-ODE keeps
(x − α_t μ_g)/sqrt(v_t) constant (v_t = α_t² s² + σ_t²), so the exact trajectory map from t to s is

    f*(x, t, s) = α_s μ_g + sqrt(v_s / v_t) (x − α_t μ_g).

The TCD loss (student ``f(x_{τ_i}, τ_i, s)`` vs target ``f(DDIM(x), τ_{i−1}, s)``, s = p_e uniform on
the grid at or below t_n, f(x, t, t) = x) has as fixed point the chain of η=0 DDIM steps from τ_i
down to s; each is affine for Gaussians with gain (α_p α_t s² + σ_p σ_t)/v_t, so

    f_N(x, τ_i, p_e) = α_{p_e} μ_g + Π_{j=e..i} (α_{p_j} α_{τ_j} s² + σ_{p_j} σ_{τ_j}) / v_{τ_j} · (x − α_{τ_i} μ_g).

The student's network is an ε table with one affine map per (t, s) grid pair (TCD's map is
f = DDIM jump with the network's x̂0; one ε per (x, t) cannot be exact for every s, so s is given to
the table through the conditioning to make the exact fixed point representable), initialised at
the conditional teacher, trained with the trainer's :class:`LcdLoss` (objective ``tcd``) on s drawn
by the trainer's :func:`sample_end_timesteps`. Checked (errors relative to the data std at s):

* one step, several (t, s): student vs f_N RMS ≤ 0.01 (max ≤ 0.05), vs f* ≤ the closed-form
  DDIM-grid gap |f_N − f*| + 0.01; for long jumps the untrained student is ≥ 10× further from f_N;
* multi-step, deterministic (γ = 0), 4 steps 999 → 799 → 499 → 199 → 0, per sample vs f*(x, 999, 0)
  within the chain's gap + 0.01, and closer than the teacher's own 4-step DDIM;
* multi-step, stochastic (TCD's γ-sampling, γ = 0.3, s snapped down to the grid, exact re-noising):
  the endpoint distribution's W2 to the exact N(α_0 μ_g, v_0) ≤ the chain's W2 gap + 0.02.

The grid has N = 10 points (``lcd.num_ddim_timesteps: 10``; the closed forms hold for any N): 55
(t, s) pairs, so 400 steps of 512 samples converge every table entry.
"""
from __future__ import annotations

import pytest
import torch
from test_train_gaussian_closed_form import AC, MU_C, MU_G, MU_U, OMEGA, A, G, S, exact_eps, rms, teacher_trailing_ddim, v

from lcm_lora.training.ddim_solver import DDIMSolver
from lcm_lora.training.lcd_step import LcdLoss, sample_lcd_randomness
from lcm_lora.training.tcd import sample_end_timesteps

N = 10  # DDIM grid (lcd.num_ddim_timesteps): few (t, s) pairs, so every table entry sees many samples
K = 1000 // N  # skip: τ_i = K (i + 1) − 1, p_i = max(τ_i − K, 0)


def grid_index(t: torch.Tensor) -> torch.Tensor:
    """τ_i → i (0 → 0)."""
    return torch.clamp(torch.div(t + 1, K, rounding_mode="floor") - 1, min=0)


def end_index(s: torch.Tensor) -> torch.Tensor:
    """p_e → e (p_0 = 0, p_e = τ_{e−1})."""
    return torch.where(s == 0, torch.zeros_like(s), torch.div(s + 1, K, rounding_mode="floor"))


def exact_jump(x, t, s):
    return A[s, None] * MU_G + (v(s) / v(t)).sqrt() * (x.double() - A[t, None] * MU_G)


def ddim_chain(x, i, e):
    gain = torch.ones(2, dtype=torch.float64)
    for j in range(i, e - 1, -1):
        t, p = K * (j + 1) - 1, max(K * j - 1, 0)
        gain = gain * (A[p] * A[t] * S**2 + G[p] * G[t]) / (A[t] ** 2 * S**2 + G[t] ** 2)
    p_e = max(K * e - 1, 0)
    return A[p_e] * MU_G + gain * (x.double() - A[K * (i + 1) - 1] * MU_G)


class PairTable(torch.nn.Module):
    """ε(x, t; s) = a[i(t), e(s)] ⊙ x + b[i(t), e(s)], initialised at the conditional teacher's exact ε."""

    def __init__(self):
        super().__init__()
        taus = torch.arange(1, N + 1) * K - 1
        a, g = A[taus, None], G[taus, None]
        slope = (g / (a * a * S**2 + g * g)).float()
        offset = (-g * a * MU_C / (a * a * S**2 + g * g)).float()
        self.a = torch.nn.Parameter(slope[:, None, :].repeat(1, N + 1, 1))
        self.b = torch.nn.Parameter(offset[:, None, :].repeat(1, N + 1, 1))

    def forward(self, x, t, cond):
        i, e = grid_index(t), end_index(cond["s"])
        return self.a[i, e] * x + self.b[i, e]


def teacher(x, t, cond):
    return exact_eps(x, t, cond["mu"].double())


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    solver = DDIMSolver(AC.float(), N)
    lcd = LcdLoss(solver, "epsilon", loss="huber", huber_c=0.001, objective="tcd")
    student = PairTable()
    steps, lr, batch = 400, 1e-2, 512
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = (MU_C + S * torch.randn(batch, 2, generator=gen, dtype=torch.float64)).float()
        rnd = sample_lcd_randomness(x0.shape, N, OMEGA, OMEGA, gen)
        rnd.tcd_s = sample_end_timesteps(rnd.index, solver, "uniform", gen)
        cond = {"mu": MU_C.float().expand(batch, 2), "s": rnd.tcd_s}
        uncond = {"mu": MU_U.float().expand(batch, 2), "s": rnd.tcd_s}
        loss = lcd(student, teacher, student, x0, cond, uncond, rnd)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return student, lcd


def _marginal(t: int, n=4000, seed=1):
    tt = torch.full((n,), t)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (A[tt, None] * MU_G + v(tt).sqrt() * z).float(), tt


def _jump(student, lcd, x, t: int, s: int):
    tt, ss = torch.full((x.shape[0],), t), torch.full((x.shape[0],), s)
    with torch.no_grad():
        return lcd.consistency(student(x, tt, {"s": ss}), x, tt, ss)


@pytest.mark.parametrize("i,e", [(9, 0), (9, 5), (6, 2), (3, 0), (2, 1), (0, 0)])
def test_one_step_trajectory_map_matches_closed_forms(trained, i, e):
    student, lcd = trained
    t, s = K * (i + 1) - 1, max(K * e - 1, 0)
    x, tt = _marginal(t)
    f = _jump(student, lcd, x, t, s).double()
    scale = v(torch.tensor([s])).sqrt()[0]
    err = (f - ddim_chain(x, i, e)) / scale
    assert rms(err) <= 0.01 and float(err.abs().max()) <= 0.05, (i, e, rms(err))
    gap = rms((ddim_chain(x, i, e) - exact_jump(x, tt, torch.full_like(tt, s))) / scale)
    assert rms((f - exact_jump(x, tt, torch.full_like(tt, s))) / scale) <= gap + 0.01, (i, e, gap)
    if i - e >= 3:  # a long jump: the untrained student (= the teacher's ε in the same map) is far off
        untrained = _jump(PairTable(), lcd, x, t, s).double()
        assert rms((untrained - ddim_chain(x, i, e)) / scale) >= 10 * max(rms(err), 1e-3)


def test_multi_step_deterministic_matches_the_pf_ode_solution(trained):
    student, lcd = trained
    ts = [999, 799, 499, 199]  # τ_9, τ_7, τ_4, τ_1; the ends p_8, p_5, p_2, p_0 are on the grid
    x, tt = _marginal(999)
    z = x
    for t, s in zip(ts, ts[1:] + [0]):
        z = _jump(student, lcd, z, t, s)  # γ = 0: the next point is the trajectory jump itself
    scale = v(torch.tensor([0])).sqrt()[0]
    ode = exact_jump(x, tt, torch.zeros_like(tt))
    gap = rms((ddim_chain(x, N - 1, 0) - ode) / scale)
    err = rms((z.double() - ode) / scale)
    assert err <= gap + 0.01, (err, gap)
    # the teacher's own 4-step DDIM from the same points is worse
    y = teacher_trailing_ddim(x.clone(), 4)
    assert rms((y.double() - ode) / scale) > 2 * err, (rms((y.double() - ode) / scale), err)


def _w2(a, mean, std):
    return float(((a.mean(0) - mean) ** 2 + (a.std(0) - std) ** 2).sum().sqrt())


def test_multi_step_stochastic_keeps_the_exact_marginals(trained):
    """TCD's strategic stochastic sampling (γ = 0.3): jump to s ≈ (1 − γ)·t_next, then re-noise exactly
    to t_next; with an exact map every stage keeps the exact marginal, so the endpoint distribution
    matches N(α_0 μ_g, v_0) up to the chain's discretisation."""
    student, lcd = trained
    gamma, ts = 0.3, [999, 799, 499, 199, 0]
    x, _ = _marginal(999, n=20000, seed=2)
    gen = torch.Generator().manual_seed(4)
    z = x
    for t, t_next in zip(ts, ts[1:]):
        s_raw = int((1 - gamma) * t_next)
        s = 0 if s_raw < K - 1 else K * ((s_raw + 1) // K) - 1  # snap down to the training grid p_e
        z = _jump(student, lcd, z, t, s)
        if t_next > 0:  # forward noising from s to t_next (TCDScheduler.step, exact kernel)
            ratio = AC[t_next] / AC[s]
            z = (ratio.sqrt() * z.double() + (1 - ratio).sqrt() * torch.randn(z.shape, generator=gen, dtype=torch.float64)).float()
    mean, std = A[0] * MU_G, v(torch.tensor([0])).sqrt()[0]
    chain = ddim_chain(x, N - 1, 0)
    gap = _w2(chain, mean, std)
    w2 = _w2(z.double(), mean, std)
    assert w2 <= gap + 0.02, (w2, gap)
