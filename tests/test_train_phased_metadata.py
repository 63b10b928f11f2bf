"""PCM and TSCD adapters from tiny training runs: the metadata records the objective and the phases
(``lcm_core.sampling_recipe``), ``lcm-lora inspect`` shows them, the validation grid samples on the phased
timesteps with the deterministic TCD sampler (γ 0), and an interrupted and resumed TSCD run whose stages
change mid-run repeats the uninterrupted run's losses bit for bit (the stage follows the global step)."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from lcm_lora.lcm_core.lora import read_adapter
from lcm_lora.lcm_core.sampling_recipe import read_recipe
from lcm_lora.lcm_core.timesteps import sigmas_to_timesteps
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_phased")
    teacher, data = tiny_teacher_and_data(root, n=8, size=16)
    return root, teacher, data


def _overrides(assets, *extra, steps=2, validation=2):
    root, teacher, data = assets
    return [f"teacher={teacher}", f"data={data}", f"max_steps={steps}", "batch_size=4", "lora.rank=4", "lora.alpha=4",
            f"validation.every={validation}", "validation.steps=[1, 2]", "checkpoint.every=0", "logging.progress=false",
            f"data.cache_dir={root / 'cache'}", "lcd.w_min=2", *extra]


def _spy_tcd(monkeypatch):
    from lcm_lora.lcm_core import sampling

    calls, original = [], sampling.sample_tcd

    def spy(model, x, sigmas, *args, **kwargs):
        calls.append({"gamma": kwargs.get("gamma"), "timesteps": sigmas_to_timesteps(sigmas.cpu())})
        return original(model, x, sigmas, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample_tcd", spy)
    return calls


def test_pcm_run_records_objective_and_phases(assets, tmp_path, monkeypatch, capsys):
    from lcm_lora.cli.main import main

    calls = _spy_tcd(monkeypatch)
    result = train(TINY, tmp_path / "pcm", overrides=_overrides(assets, "lcd.objective=pcm"), progress=False)
    assert result.status == "finished"
    # validation rows of 1 and 2 steps on PCM's 4-phase edges, deterministic
    assert calls == [{"gamma": 0.0, "timesteps": [999]}, {"gamma": 0.0, "timesteps": [999, 499]}]

    md = read_adapter(result.adapter_path).metadata
    assert md["lcm_lora.objective"] == "pcm" and md["lcm_lora.phases"] == "4"
    recipe = read_recipe(md)
    assert (recipe.objective, recipe.sampler, recipe.steps, recipe.gamma, recipe.cfg, recipe.model_sampling, recipe.phases,
            recipe.w_range) == ("pcm", "tcd", 4, 0.0, 1.0, "eps", 4, (2.0, 15.0))
    assert "PCM-LoRA" in md["ss_training_comment"]

    assert main(["inspect", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    out = capsys.readouterr().out
    assert "objective:     pcm (sampler tcd, 4 steps, 4 phases, timesteps 999/739/499/239, gamma 0, cfg 1, w 2-15)" in out
    assert main(["inspect", "--json", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["objective"] == "pcm" and info["sampling_recipe"]["phases"] == 4
    assert info["sampling_recipe"]["timesteps"] == [999, 739, 499, 239]


def test_pcm_with_moved_phase_starts_records_and_samples_them(assets, tmp_path, monkeypatch, capsys):
    """``lcd.phase_starts`` [0, 15, 30, 41]: the validation grid samples on the moved edges (2 steps: every other
    one, 999 → 599), the adapter records them, and ``inspect`` shows them with the timesteps they give."""
    from lcm_lora.cli.main import main

    calls = _spy_tcd(monkeypatch)
    result = train(TINY, tmp_path / "pcm_starts", overrides=_overrides(assets, "lcd.objective=pcm",
                                                                         "lcd.phase_starts=[0, 15, 30, 41]"), progress=False)
    assert calls == [{"gamma": 0.0, "timesteps": [999]}, {"gamma": 0.0, "timesteps": [999, 599]}]
    md = read_adapter(result.adapter_path).metadata
    assert md["lcm_lora.phase_starts"] == "0,15,30,41" and read_recipe(md).phase_starts == (0, 15, 30, 41)
    assert main(["inspect", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    assert ("4 phases, starting at solver indices 0/15/30/41, timesteps 999/819/599/299, gamma 0"
            in capsys.readouterr().out)


def test_pcm_without_solver_guidance_records_normal_cfg(assets, tmp_path):
    result = train(TINY, tmp_path / "pcm_cfg", overrides=_overrides(assets, "lcd.objective=pcm", "lcd.phases=2",
                                                                       "lcd.solver_guidance=false", validation=0), progress=False)
    md = read_adapter(result.adapter_path).metadata
    recipe = read_recipe(md)
    assert (recipe.objective, recipe.phases, recipe.steps, recipe.cfg, recipe.w_range) == ("pcm", 2, 2, 7.5, None)
    assert md["lcm_lora.solver_guidance"] == "false" and "lcm_lora.w_range" not in md


def test_tscd_run_records_last_stage_and_resumes_exactly(assets, tmp_path, monkeypatch, capsys):
    from lcm_lora.cli.main import main

    over = _overrides(assets, "lcd.objective=tscd", "lcd.tscd_segments=[8, 4, 2]", "lcd.tscd_stage_steps=1", steps=4,
                      validation=4)
    calls = _spy_tcd(monkeypatch)
    full = train(TINY, tmp_path / "full", overrides=over, progress=False)
    assert full.status == "finished"
    # the last stage has 2 segments: 2 phases, 2 steps, 999 -> 499 -> 0
    assert calls == [{"gamma": 0.0, "timesteps": [999]}, {"gamma": 0.0, "timesteps": [999, 499]}]
    md = read_adapter(full.adapter_path).metadata
    recipe = read_recipe(md)
    assert (recipe.objective, recipe.phases, recipe.steps, recipe.sampler, recipe.gamma) == ("tscd", 2, 2, "tcd", 0.0)
    assert md["lcm_lora.tscd_segments"] == "8,4,2" and md["lcm_lora.tscd_stage_steps"] == "1"
    assert main(["inspect", "--allow-unknown-arch", str(full.adapter_path)]) == 0
    assert "objective:     tscd (sampler tcd, 2 steps, 2 phases, timesteps 999/499, gamma 0" in capsys.readouterr().out

    def interrupt(step, loss):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    no_val = [o for o in over if not o.startswith("validation.every")] + ["validation.every=0"]
    full = train(TINY, tmp_path / "full2", overrides=no_val, progress=False)
    part = train(TINY, tmp_path / "split", overrides=no_val, progress=False, on_step=interrupt)
    assert part.status == "interrupted" and part.final_step == 2
    rest = train(TINY, tmp_path / "split", resume=True, overrides=no_val, progress=False)
    assert part.losses + rest.losses == full.losses  # stages 8, 4 | 2, 2: drawn by the global step
    # the same run with one stage only draws other s, so the losses differ (the stages are in effect)
    flat = train(TINY, tmp_path / "flat", overrides=[o for o in no_val if "tscd_segments" not in o] +
                 ["lcd.tscd_segments=[8]"], progress=False)
    assert flat.losses[0] == full.losses[0] and flat.losses[1:] != full.losses[1:]
