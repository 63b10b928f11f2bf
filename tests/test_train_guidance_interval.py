"""``lcd.guidance_interval``: the teacher's solver step is guided only where its start timestep lies in
``[lo, hi]`` (Kynkäänniemi et al. 2024, arXiv 2404.07724, "guidance in a limited interval").

* One teacher step against diffusers' ``DDIMScheduler.step`` driven by the closed-form Gaussian ε (guided
  inside the interval, conditional outside).
* LCD on Gaussian data converges to the closed-form fixed point of the *interval-guided* DDIM chain (each
  step's ε is the exact ε of N(μ_g, s²) inside the interval and of N(μ_c, s²) outside), and measurably not to
  the fully guided one — the same construction as ``test_train_gaussian_closed_form.py``.
* Config: a bad interval or one with ``solver_guidance: false`` is an error naming the key; the default keeps
  the config hash of older runs; the adapter's metadata and ``lcm-lora inspect`` record it.
"""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import config_hash, load_config, trajectory_dict
from lcm_lora.training.config_rules import guidance_interval
from lcm_lora.training.config_schema import schema_text
from lcm_lora.training.ddim_solver import DDIMSolver
from lcm_lora.training.export import training_metadata
from lcm_lora.training.lcd_step import LcdLoss, sample_lcd_randomness
from test_train_gaussian_closed_form import AC, MU_C, MU_G, MU_U, OMEGA, SD, A, G, S, TableStudent, exact_eps, rms, teacher, v

INTERVAL = (200, 700)


def _guided(t: int) -> bool:
    return INTERVAL[0] <= t <= INTERVAL[1]


def test_one_teacher_step_matches_diffusers_ddim_with_interval_guidance():
    solver = DDIMSolver(AC.float(), 50)
    lcd = LcdLoss(solver, "epsilon", guidance_interval=INTERVAL)
    index = torch.tensor([49, 34, 25, 9, 5, 0])  # t 999 / 699 / 519 / 199 / 119 / 19: out, in, in, out, out, out
    start, end = solver.start_and_target_timesteps(index)
    x = torch.randn(len(index), 2, generator=torch.Generator().manual_seed(0))
    w = torch.full((len(index),), OMEGA)
    cond, uncond = MU_C.float().expand(len(index), 2), MU_U.float().expand(len(index), 2)
    ours = lcd.teacher_step(teacher, x, start, index, w, cond, uncond)

    sched = DDIMScheduler(**SD, set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(50)  # steps of 20; from t = 19 it lands on ᾱ_0 (set_alpha_to_one False), as the solver
    for row, (t, p) in enumerate(zip(start.tolist(), end.tolist())):
        assert t - p == 20 or (t, p) == (19, 0)
        tt, xr = torch.tensor([t]), x[row:row + 1]
        eps = ((1 + OMEGA) * exact_eps(xr, tt, MU_C) - OMEGA * exact_eps(xr, tt, MU_U)) if _guided(t) else exact_eps(xr, tt, MU_C)
        ref = sched.step(eps, t, xr).prev_sample
        torch.testing.assert_close(ours[row:row + 1], ref, rtol=1e-5, atol=1e-5, msg=f"t={t}")
    # every timestep guided = the interval (0, 999) = no interval, bit for bit
    full = LcdLoss(solver, "epsilon").teacher_step(teacher, x, start, index, w, cond, uncond)
    assert torch.equal(full, LcdLoss(solver, "epsilon", guidance_interval=(0, 999)).teacher_step(
        teacher, x, start, index, w, cond, uncond))
    outside = torch.tensor([not _guided(t) for t in start.tolist()])
    diff = (full - ours).abs().amax(dim=1)
    assert (diff[outside] > 1e-3).all() and (diff[~outside] == 0).all(), diff  # only steps outside it change


def interval_chain_map(x: torch.Tensor, i: int, grid: torch.Tensor, interval=INTERVAL) -> torch.Tensor:
    """The discrete fixed point: exact DDIM steps (float64) from grid[i] down to 0, each with the exact ε of the
    guided Gaussian N(μ_g, s²) where its start timestep is in ``interval`` and of N(μ_c, s²) elsewhere."""
    x = x.double()
    for j in range(i, -1, -1):
        t = int(grid[j])
        p = int(grid[j - 1]) if j > 0 else 0
        mu = MU_G if interval[0] <= t <= interval[1] else MU_C
        eps = G[t] * (x - A[t] * mu) / v(torch.tensor([t]))
        x0 = (x - G[t] * eps) / A[t]
        x = A[p] * x0 + G[p] * eps
    return x


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    solver = DDIMSolver(AC.float(), 50)
    lcd = LcdLoss(solver, "epsilon", loss="huber", huber_c=0.001, guidance_interval=INTERVAL)
    student = TableStudent()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    steps = 2000
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    batch = 512
    cond, uncond = MU_C.float().expand(batch, 2), MU_U.float().expand(batch, 2)
    for _ in range(steps):
        x0 = (MU_C + S * torch.randn(batch, 2, generator=gen, dtype=torch.float64)).float()
        rnd = sample_lcd_randomness(x0.shape, 50, OMEGA, OMEGA, gen)
        loss = lcd(student, teacher, lambda x, t, c: student(x, t), x0, cond, uncond, rnd)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return student, lcd, solver


@pytest.mark.parametrize("i", [0, 5, 9, 25, 34, 49])
def test_student_converges_to_the_interval_guided_chain(trained, i):
    student, lcd, solver = trained
    t = solver.timesteps[torch.full((4000,), i)]
    z = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = (A[t, None] * MU_C + v(t).sqrt() * z).float()  # the marginal the student is trained on
    scale = v(torch.tensor([0])).sqrt()[0]
    with torch.no_grad():
        f = lcd.consistency(student(x, t), x, t).double()
    err = (f - interval_chain_map(x, i, solver.timesteps)) / scale
    assert rms(err) <= 0.05 and err.abs().max() <= 0.25, (i, rms(err))
    if i >= 25:  # a guided step lies below: the fully guided chain is a different map, far outside the tolerance
        full = interval_chain_map(x, i, solver.timesteps, interval=(0, 999))
        assert rms((full - f) / scale) > 0.15, (i, rms((full - f) / scale))


# --------------------------------------------------------------------------- configuration
def test_interval_reaches_the_loss_metadata_and_not_the_old_hash():
    cfg = load_config({}, ["lcd.guidance_interval=200,700"])
    assert guidance_interval(cfg.lcd) == (200, 700)
    assert trajectory_dict(cfg)["lcd"]["guidance_interval"] == [200, 700]
    default = load_config({}, [])
    assert guidance_interval(default.lcd) is None
    assert "guidance_interval" not in json.dumps(trajectory_dict(default))  # older runs keep their hash
    assert config_hash(cfg) != config_hash(default)
    assert config_hash(load_config({}, ["lcd.guidance_interval=[0, 999]"])) == config_hash(default)
    md = training_metadata("sd1", 4, 4.0, 10, config_hash(cfg), cfg)
    assert md["lcm_lora.guidance_interval"] == "200,700" and md["lcm_lora.w_range"] == "3.0,15.0"
    assert "lcm_lora.guidance_interval" not in training_metadata("sd1", 4, 4.0, 10, "h", default)


@pytest.mark.parametrize("overrides,needle", [
    (["lcd.guidance_interval=700,200"], "must be [lo, hi] timesteps with 0 <= lo <= hi <= 999"),
    (["lcd.guidance_interval=200,1000"], "must be [lo, hi] timesteps"),
    (["lcd.guidance_interval=200"], "must be [lo, hi] timesteps"),  # one number reads as the list [200], as "200,700" as two
    (["lcd.guidance_interval=1,2,3"], "must be [lo, hi] timesteps"),
    (["lcd.guidance_interval=-5,700"], "lcd.guidance_interval"),
    (["lcd.guidance_interval=200,700", "lcd.solver_guidance=false"], "which 'lcd.solver_guidance: false' turns off"),
])
def test_bad_interval_is_an_error_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config({}, overrides)
    assert "lcd.guidance_interval" in str(e.value) and needle in str(e.value), str(e.value)


def test_schema_and_inspect_show_the_interval(tmp_path, capsys):
    from lcm_lora.cli.main import main
    from test_train_normal_cfg import _adapter

    line = next(x for x in schema_text().splitlines() if x.strip().startswith("guidance_interval:"))
    assert line.startswith("  guidance_interval: [0, 999]  # [lo, hi]"), line
    cfg = load_config({}, ["lcd.objective=pcm", "lcd.phases=2", "lcd.guidance_interval=200,700"])
    path = _adapter(tmp_path / "gi.safetensors", training_metadata("sd1", 4, 4.0, 10, config_hash(cfg), cfg))
    assert main(["inspect", "--allow-unknown-arch", str(path)]) == 0
    assert "cfg 1, w 3-15, guided on teacher timesteps 200-700)" in capsys.readouterr().out
    assert main(["inspect", "--json", "--allow-unknown-arch", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["sampling_recipe"]["guidance_interval"] == [200, 700]


def test_trainer_run_with_an_interval_that_guides_no_step_equals_omega_zero(tmp_path):
    """End to end through ``training.train`` on the tiny teacher: an interval holding no solver timestep
    ([0, 0]; the 50-grid starts at 19) gives the losses of ω = 0 exactly, and differs from guiding every step;
    the adapter records the interval."""
    from pathlib import Path

    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.training.trainer import train
    from tiny_training import tiny_teacher_and_data

    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    over = [f"teacher={teacher}", f"data={data}", "batch_size=4", "lora.rank=4", "lora.alpha=4", "validation.every=0",
            "checkpoint.every=0", "logging.progress=false", f"data.cache_dir={tmp_path / 'cache'}", "max_steps=3",
            "lcd.w_min=2", "lcd.w_max=4"]

    def losses(name, *extra):
        res = train(tiny, tmp_path / name, overrides=[*over, *extra], progress=False)
        rows = (tmp_path / name / "metrics.csv").read_text().splitlines()[1:]
        return res, [float(r.split(",")[1]) for r in rows]

    res, none = losses("none", "lcd.guidance_interval=[0,0]")
    _, zero = losses("zero", "lcd.w_min=0", "lcd.w_max=0")
    _, every = losses("every")
    assert len(none) == 3 and none == zero, (none, zero)
    assert none != every
    assert read_adapter(res.adapter_path).metadata["lcm_lora.guidance_interval"] == "0,0"
