"""PCM and TSCD (``lcd.objective: pcm | tscd``) on Gaussian data, where every map is known in closed form.

Same setting as ``test_train_gaussian_closed_form.py`` / ``test_train_tcd_closed_form.py``: data
N(μ_c, diag S²), unconditional N(μ_u, S²), LCD's guided teacher = exact ε of N(μ_g, S²). An η = 0 DDIM
step from t to p is affine, ``x_p − α_p μ_g = (α_p α_t S² + σ_p σ_t)/v_t · (x − α_t μ_g)``, and the exact
PF-ODE map is ``f*(x, t, s) = α_s μ_g + sqrt(v_s / v_t)(x − α_t μ_g)``.

1. **Fixed point, loss 0.** The loss's fixed point maps τ_i to s by the chain of teacher DDIM steps from
   τ_i down to the grid point p_m just above s (PCM: s *is* the phase edge p_e), then any fixed map from
   p_m to s (here f*). A student whose map is exactly that (an ε "network" inverting the jump) has loss 0
   for every solver index, for 1, 2, 4, 8 phases (PCM) and 8, 4, 2, 1 segments (TSCD, crossing rows
   included: there s = t_n and both sides are the teacher's point) — through the trainer's own
   :class:`LcdLoss` and s draws. The same student built for another phase split, or the untrained
   teacher, has a loss ≥ 10⁶ times larger.
2. **Training converges to the phase edge.** An affine ε table per grid point (N = 10, 2 phases), started
   at the conditional teacher, trained by :class:`LcdLoss` (objective ``pcm``): one jump from 999 lands
   on the closed-form fixed point at the phase edge (RMS ≤ 0.01 of the data std there) and on the
   analytic PF-ODE point f*(x, 999, edge) within the DDIM chain's own gap + 0.01; two phased steps
   999 → edge → 0 land on f*(x, 999, 0) within the chain's gap + 0.01 and closer than the teacher's
   own 2-step DDIM.
"""
from __future__ import annotations

import pytest
import torch
from test_train_gaussian_closed_form import AC, MU_C, MU_G, MU_U, OMEGA, A, G, S, exact_eps, rms, teacher_trailing_ddim, v

from lcm_lora.training.ddim_solver import DDIMSolver
from lcm_lora.training.lcd_step import LcdLoss, sample_lcd_randomness
from lcm_lora.training.phased import pcm_end_timesteps, tscd_end_timesteps


def _gain(t: int, p: int) -> torch.Tensor:
    return (A[p] * A[t] * S**2 + G[p] * G[t]) / (A[t] ** 2 * S**2 + G[t] ** 2)


def fixed_point(x: torch.Tensor, t: int, s: int, k: int) -> torch.Tensor:
    """DDIM steps from the grid point t down to the smallest grid point p ≥ s, then f*(·, p, s)."""
    y, cur = x.double(), t
    while cur > s:
        p = max(cur - k, 0)
        if p < s:
            break
        y = A[p] * MU_G + _gain(cur, p) * (y - A[cur] * MU_G)
        cur = p
    return A[s] * MU_G + (v(torch.tensor([s])) / v(torch.tensor([cur]))).sqrt()[0] * (y - A[cur] * MU_G)


class InvertedMap(torch.nn.Module):
    """ε(x, t; s) whose TCD-form jump to s is ``target_map(x, t, s)`` (s passed in the conditioning):
    x̂0 = ((σ_s/σ_t) x − f)/(α_s (e^{−h} − 1)), ε = (x − α_t x̂0)/σ_t (float64, then float32)."""

    def __init__(self, target_map):
        super().__init__()
        self.target_map = target_map

    def forward(self, x, t, cond):
        out = exact_eps(x, t, MU_C).double()  # s = t: the jump ignores the output; use the teacher's
        for row in range(x.shape[0]):
            tt, ss = int(t[row]), int(cond["s"][row])
            if ss == tt:
                continue
            f = self.target_map(x[row:row + 1], tt, ss)[0]
            lam_t, lam_s = torch.log(A[tt] / G[tt]), torch.log(A[ss] / G[ss])
            x0 = ((G[ss] / G[tt]) * x[row].double() - f) / (A[ss] * torch.expm1(-(lam_s - lam_t)))
            out[row] = (x[row].double() - A[tt] * x0) / G[tt]
        return out.float()


def teacher(x, t, cond):
    return exact_eps(x, t, cond["mu"].double())


def _loss(objective, student, s_rule, n_per_index=3, seed=0):
    torch.manual_seed(seed)
    solver = DDIMSolver(AC.float(), 50)
    lcd = LcdLoss(solver, "epsilon", loss="l2", objective=objective)
    gen = torch.Generator().manual_seed(seed)
    batch = 50 * n_per_index
    x0 = (MU_C + S * torch.randn(batch, 2, generator=gen, dtype=torch.float64)).float()
    rnd = sample_lcd_randomness(x0.shape, 50, OMEGA, OMEGA, gen)
    rnd.index = torch.arange(50).repeat(n_per_index)  # every solver index
    rnd.tcd_s = s_rule(rnd.index, solver, gen)
    cond = {"mu": MU_C.float().expand(batch, 2), "s": rnd.tcd_s}
    uncond = {"mu": MU_U.float().expand(batch, 2), "s": rnd.tcd_s}
    with torch.no_grad():
        return float(lcd(student, teacher, student, x0, cond, uncond, rnd)), rnd


@pytest.mark.parametrize("phases", [1, 2, 4, 8])
def test_pcm_fixed_point_has_zero_loss(phases):
    exact = InvertedMap(lambda x, t, s: fixed_point(x, t, s, 20))
    loss, rnd = _loss("pcm", exact, lambda i, solver, g: pcm_end_timesteps(i, solver, phases))
    assert loss <= 1e-11, loss
    if phases == 1:  # one phase = consistency to 0
        assert bool((rnd.tcd_s == 0).all())
    # the student that is exact for another phase split, and the untrained teacher, are far from it
    other = 2 * phases if phases < 8 else 4

    def wrong(x, t, s):
        e = int(pcm_end_timesteps(torch.tensor([(t + 1) // 20 - 1]), DDIMSolver(AC.float(), 50), other)[0])
        return fixed_point(x, t, e, 20)

    wrong_loss, _ = _loss("pcm", InvertedMap(wrong), lambda i, solver, g: pcm_end_timesteps(i, solver, phases))
    untrained, _ = _loss("pcm", lambda x, t, c: exact_eps(x, t, MU_C), lambda i, solver, g: pcm_end_timesteps(i, solver, phases))
    assert wrong_loss >= 1e6 * max(loss, 1e-14) and untrained >= 1e6 * max(loss, 1e-14), (loss, wrong_loss, untrained)


@pytest.mark.parametrize("segments", [8, 4, 2, 1])
def test_tscd_fixed_point_has_zero_loss_including_crossing_rows(segments):
    exact = InvertedMap(lambda x, t, s: fixed_point(x, t, s, 20))
    loss, rnd = _loss("tscd", exact, lambda i, solver, g: tscd_end_timesteps(i, solver, segments, g))
    assert loss <= 1e-11, loss
    _, t_n = DDIMSolver(AC.float(), 50).start_and_target_timesteps(rnd.index)
    assert bool((rnd.tcd_s == t_n).any()) and bool((rnd.tcd_s < t_n).any())  # both kinds of row were checked
    untrained, _ = _loss("tscd", lambda x, t, c: exact_eps(x, t, MU_C),
                         lambda i, solver, g: tscd_end_timesteps(i, solver, segments, g))
    assert untrained >= 1e6 * max(loss, 1e-14), (loss, untrained)


# --------------------------------------------------------------------------- training converges (PCM)
N, K, PHASES = 10, 100, 2  # grid τ_i = 100 (i + 1) − 1; phase starts 0, 5 → edges 0 and 499


class GridTable(torch.nn.Module):
    """ε(x, τ_i) = a_i ⊙ x + b_i, initialised at the conditional teacher's exact ε (PCM's s is a function of i)."""

    def __init__(self):
        super().__init__()
        taus = torch.arange(1, N + 1) * K - 1
        a, g = A[taus, None], G[taus, None]
        self.a = torch.nn.Parameter((g / (a * a * S**2 + g * g)).float())
        self.b = torch.nn.Parameter((-g * a * MU_C / (a * a * S**2 + g * g)).float())

    def forward(self, x, t, cond):
        i = torch.clamp(torch.div(t + 1, K, rounding_mode="floor") - 1, min=0)
        return self.a[i] * x + self.b[i]


@pytest.fixture(scope="module")
def trained_pcm():
    torch.manual_seed(0)
    solver = DDIMSolver(AC.float(), N)
    lcd = LcdLoss(solver, "epsilon", loss="huber", huber_c=0.001, objective="pcm")
    student = GridTable()
    steps, batch = 300, 512
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = (MU_C + S * torch.randn(batch, 2, generator=gen, dtype=torch.float64)).float()
        rnd = sample_lcd_randomness(x0.shape, N, OMEGA, OMEGA, gen)
        rnd.tcd_s = pcm_end_timesteps(rnd.index, solver, PHASES)
        loss = lcd(student, teacher, student, x0, {"mu": MU_C.float().expand(batch, 2)},
                   {"mu": MU_U.float().expand(batch, 2)}, rnd)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return student, lcd


def _marginal(t: int, n=4000, seed=1):
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (A[t] * MU_G + v(torch.tensor([t])).sqrt() * z).float()


def _exact(x, t, s):
    return A[s] * MU_G + (v(torch.tensor([s])) / v(torch.tensor([t]))).sqrt() * (x.double() - A[t] * MU_G)


def _jump(student, lcd, x, t, s):
    tt, ss = torch.full((x.shape[0],), t), torch.full((x.shape[0],), s)
    with torch.no_grad():
        return lcd.consistency(student(x, tt, None), x, tt, ss)


def test_trained_pcm_jumps_to_the_phase_edge_and_samples_the_pf_ode(trained_pcm):
    student, lcd = trained_pcm
    edge = int(pcm_end_timesteps(torch.tensor([N - 1]), lcd.solver, PHASES)[0])
    assert edge == 499
    x = _marginal(999)
    f = _jump(student, lcd, x, 999, edge).double()
    scale = v(torch.tensor([edge])).sqrt()[0]
    chain = torch.stack([fixed_point(r[None], 999, edge, K)[0] for r in x])
    assert rms((f - chain) / scale) <= 0.01, rms((f - chain) / scale)
    gap = rms((chain - _exact(x, 999, edge)) / scale)
    assert rms((f - _exact(x, 999, edge)) / scale) <= gap + 0.01
    untrained = _jump(GridTable(), lcd, x, 999, edge).double()
    assert rms((untrained - chain) / scale) >= 10 * max(rms((f - chain) / scale), 1e-3)

    # two phased steps (the integrator's phased timesteps for 2 phases: 999 → 499 → 0)
    z = _jump(student, lcd, _jump(student, lcd, x, 999, edge), edge, 0)
    scale0 = v(torch.tensor([0])).sqrt()[0]
    ode = _exact(x, 999, 0)
    gap0 = rms((torch.stack([fixed_point(r[None], 999, 0, K)[0] for r in x]) - ode) / scale0)
    err = rms((z.double() - ode) / scale0)
    assert err <= gap0 + 0.01, (err, gap0)
    y = teacher_trailing_ddim(x.clone(), 2)
    assert rms((y.double() - ode) / scale0) > 2 * err, (rms((y.double() - ode) / scale0), err)
