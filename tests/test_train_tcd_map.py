"""The TCD trajectory consistency map and end-point draws (:mod:`lcm_lora.training.tcd`) and the
``lcd.objective`` configuration.

* boundary condition f(x, t, t) = x, bit for bit, for every timestep;
* the map equals diffusers' ``TCDScheduler.step`` ``pred_noised_sample`` (the official TCD scheduler,
  jabir-zheng/TCD ``scheduling_tcd.py``, upstreamed into diffusers) for ε and v prediction;
* the uniform s draw covers exactly the DDIM grid at or below t_n;
* TDD's target-timestep selection against RedAIGC/Target-Driven-Distillation ``train/SD15/train_tdd.py``
  executed from its own source (``$TDD_REFERENCE_SCRIPT``; skipped loudly without it);
* invalid objective combinations are config errors naming the key; ``--print-schema`` lists them.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import load_config, trajectory_dict
from lcm_lora.training.ddim_solver import DDIMSolver
from lcm_lora.training.tcd import sample_end_timesteps, tdd_candidates, trajectory_jump

diffusers = pytest.importorskip("diffusers")
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _solver():
    return DDIMSolver(diffusers.DDPMScheduler(**SD).alphas_cumprod, 50)


def test_boundary_condition_is_exact_for_every_timestep():
    solver = _solver()
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(1000)
    x = torch.randn(1000, 4, 3, 3, generator=gen) * torch.logspace(-3, 3, 1000).reshape(-1, 1, 1, 1)
    x0 = torch.randn(1000, 4, 3, 3, generator=gen) * 1e4  # whatever the network predicts
    assert torch.equal(trajectory_jump(x0, x, t, t, solver.alpha_schedule, solver.sigma_schedule), x)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7])
def test_map_equals_diffusers_tcd_scheduler(prediction_type, gamma):
    """``f(x, t, s)`` with s = floor((1 − γ)·t_prev) is TCDScheduler's predicted noised sample at s."""
    from lcm_lora.training.lcd_step import LcdLoss

    sched = diffusers.TCDScheduler(**SD, prediction_type=prediction_type)
    sched.set_timesteps(4)
    solver = _solver()
    lcd = LcdLoss(solver, prediction_type, objective="tcd")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = [int(t) for t in sched.timesteps]
    for i, t in enumerate(timesteps):
        raw = torch.randn(2, 4, 8, 8, generator=gen)
        out = sched.step(raw, sched.timesteps[i], x, eta=gamma, generator=torch.Generator().manual_seed(2))
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        s = int(np.floor((1 - gamma) * t_prev))
        ours = lcd.consistency(raw, x, torch.full((2,), t), torch.full((2,), s))
        torch.testing.assert_close(ours, out.pred_noised_sample, rtol=1e-5, atol=1e-5)
        x = out.prev_sample


def test_uniform_draw_is_the_grid_at_or_below_t_n():
    solver = _solver()
    gen = torch.Generator().manual_seed(0)
    for i in (0, 1, 7, 49):
        index = torch.full((4000,), i)
        s = sample_end_timesteps(index, solver, "uniform", gen)
        _, t_n = solver.start_and_target_timesteps(index)
        grid = {0} | {20 * j - 1 for j in range(1, i + 1)}  # p_e = max(τ_e − 20, 0), e = 0..i
        assert set(s.tolist()) == grid and int(t_n[0]) in grid
        counts = torch.bincount(s)[sorted(grid)].double()
        assert float(counts.std() / counts.mean()) < 0.2 if i else True  # uniform over the i + 1 points


# --------------------------------------------------------------------------- TDD vs its reference

def _tdd_reference():
    var = "TDD_REFERENCE_SCRIPT"
    path = os.environ.get(var)
    if not path:
        pytest.skip(f"{var} (RedAIGC/Target-Driven-Distillation train/SD15/train_tdd.py) not set")
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    keep = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in ("DDIMSolver", "extract_into_tensor")]
    assert {n.name for n in keep} == {"DDIMSolver", "extract_into_tensor"}, f"{path}: TDD's DDIMSolver not found"
    ns = {"np": np, "torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    return ns


def test_tdd_candidates_equal_the_reference_merged_timesteps():
    ns = _tdd_reference()
    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    for lo, hi in ((4, 8), (2, 4), (1, 16)):
        ref = ns["DDIMSolver"](ac.numpy(), timesteps=1000, ddim_timesteps=50, num_inference_steps_min=lo, num_inference_steps_max=hi)
        assert torch.equal(tdd_candidates(DDIMSolver(ac, 50), lo, hi), ref.merged_timesteps.long()), (lo, hi)


def test_tdd_draw_matches_the_reference_select_s():
    """Same candidates per t_n (s_ratio 0: s = m exactly, equal supports) and the same distribution of
    s with s_ratio 0.3 (per-t_n mean within 4 standard errors; equal min/max bounds of the support)."""
    ns = _tdd_reference()
    ac = diffusers.DDPMScheduler(**SD).alphas_cumprod
    ref = ns["DDIMSolver"](ac.numpy(), timesteps=1000, ddim_timesteps=50)
    solver = DDIMSolver(ac, 50)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    for i in (0, 3, 20, 31, 49):
        index = torch.full((n,), i)
        _, t_n = solver.start_and_target_timesteps(index)
        torch.manual_seed(i)  # the reference draws from torch's global generator
        theirs0 = ref.select_s(t_n, 0.0)
        ours0 = sample_end_timesteps(index, solver, "tdd", gen, s_ratio=0.0)
        assert set(theirs0.tolist()) == set(ours0.tolist()), i
        theirs = ref.select_s(t_n, 0.3).double()
        ours = sample_end_timesteps(index, solver, "tdd", gen, s_ratio=0.3).double()
        assert bool((ours <= t_n).all())
        se = ((theirs.var() + ours.var()) / n).sqrt()
        assert abs(float(theirs.mean() - ours.mean())) <= 4 * float(se) + 1e-9, (i, float(theirs.mean()), float(ours.mean()))


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("overrides,key", [
    (["lcd.tcd_s_sampling=tdd"], "lcd.tcd_s_sampling"),
    (["lcd.tdd_s_ratio=0.2"], "lcd.tdd_s_ratio"),
    (["lcd.objective=tcd", "lcd.tdd_s_ratio=0.2"], "lcd.tdd_s_ratio"),
    (["lcd.objective=tcd", "lcd.tdd_steps=[2, 6]"], "lcd.tdd_steps"),
    (["lcd.objective=tcd", "lcd.timestep_scaling=5"], "lcd.timestep_scaling"),
    (["lcd.objective=tcd", "lcd.tcd_s_sampling=tdd", "lcd.tdd_steps=[8, 4]"], "lcd.tdd_steps"),
    (["lcd.objective=tcd", "lcd.tcd_s_sampling=tdd", "lcd.tdd_s_ratio=1.5"], "lcd.tdd_s_ratio"),
    (["lcd.objective=ctm"], "lcd.objective"),  # an unknown objective (pcm and tscd exist: tests/test_train_phased_*.py)
])
def test_invalid_objective_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config({}, overrides)


@pytest.mark.parametrize("objective", ["lcm", "tcd", "pcm"])
def test_a_coarse_solver_grid_is_a_valid_config(objective):
    """num_ddim_timesteps below TDD's default [4, 8] steps: fine wherever tdd_steps is not used (it was refused for
    every objective, and setting tdd_steps then was refused as a TDD-only key)."""
    cfg = load_config({}, [f"lcd.objective={objective}", "lcd.num_ddim_timesteps=4"]
                      + (["lcd.phases=2"] if objective == "pcm" else []))
    assert cfg.lcd.num_ddim_timesteps == 4
    with pytest.raises(ConfigError, match="key 'lcd.tdd_steps'"):  # where it is used, it still must fit the grid
        load_config({}, ["lcd.objective=tcd", "lcd.tcd_s_sampling=tdd", "lcd.num_ddim_timesteps=4"])


def test_objective_keys_and_trajectory():
    tcd = load_config({"lcd": {"objective": "tcd", "tcd_s_sampling": "tdd", "tdd_s_ratio": 0.2, "tdd_steps": [2, 6]}})
    assert (tcd.lcd.objective, tcd.lcd.tcd_s_sampling, tcd.lcd.tdd_s_ratio, tcd.lcd.tdd_steps) == ("tcd", "tdd", 0.2, [2, 6])
    assert trajectory_dict(tcd)["lcd"]["objective"] == "tcd"  # a TCD checkpoint cannot resume as LCM
    lcm = load_config({})
    assert lcm.lcd.objective == "lcm"
    assert not {"objective", "tcd_s_sampling", "tdd_s_ratio", "tdd_steps"} & trajectory_dict(lcm)["lcd"].keys()


def test_print_schema_lists_the_objective(capsys):
    from lcm_lora.cli.main import main

    assert main(["train", "--print-schema"]) == 0
    out = capsys.readouterr().out
    assert "  objective: lcm  # one of lcm, tcd" in out
    assert "  tcd_s_sampling: uniform  # one of uniform, tdd" in out
    assert "  tdd_s_ratio: 0.3" in out and "  tdd_steps: [4, 8]" in out


def test_tcd_config_follows_the_reference_script():
    """``configs/tcd_sd15.yaml`` is TCD and takes the TCD-LoRA script's argparse defaults (read from its source)."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tcd_sd15.yaml")
    assert (cfg.lcd.objective, cfg.lcd.tcd_s_sampling, cfg.lcd.loss) == ("tcd", "uniform", "l2")
    var = "TCD_REFERENCE_SCRIPT"
    if not os.environ.get(var):
        pytest.skip(f"{var} (rootonchair tcd/train_tcd_distill_lora_sd_wds.py) not set: defaults not compared")
    tree = ast.parse(Path(os.environ[var]).read_text(encoding="utf-8"))
    ref = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = getattr(node.args[0], "value", None)
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant) and isinstance(flag, str):
                    ref[flag.lstrip("-")] = kw.value.value
    assert (cfg.lcd.w_min, cfg.lcd.w_max, cfg.lcd.num_ddim_timesteps) == (ref["w_min"], ref["w_max"], ref["num_ddim_timesteps"])
    assert (cfg.lora.rank, cfg.optim.learning_rate, cfg.optim.max_grad_norm) == (ref["lora_rank"], ref["learning_rate"], ref["max_grad_norm"])
    assert cfg.lcd.loss == ref["loss_type"] and cfg.train.batch_size == 12
