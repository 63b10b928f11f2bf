"""A TCD adapter from a tiny training run records its objective and sampling recipe
(``lcm_core.sampling_recipe``), ``lcm-lora inspect`` shows it, and the trainer's validation grid
samples it with the TCD sampler (an LCM adapter: LCM sampler, ``lcm_lora.objective = lcm``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lcm_lora.lcm_core.lora import read_adapter
from lcm_lora.lcm_core.sampling_recipe import read_recipe
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_tcd")
    teacher, data = tiny_teacher_and_data(root, n=8, size=16)
    return root, teacher, data


def _spy(monkeypatch, name):
    """Record the calls of ``lcm_core.sampling.<name>`` (the validation grid imports it at call time)."""
    from lcm_lora.lcm_core import sampling

    calls, original = [], getattr(sampling, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sampling, name, spy)
    return calls


def _run(assets, out, *extra):
    root, teacher, data = assets
    overrides = [f"teacher={teacher}", f"data={data}", "max_steps=2", "batch_size=4", "lora.rank=4", "lora.alpha=4",
                 "validation.every=2", "validation.steps=[1, 2]", "checkpoint.every=0", "logging.progress=false",
                 f"data.cache_dir={root / 'cache'}", "lcd.w_min=2", *extra]
    return train(TINY, out, overrides=overrides, progress=False)


def test_tcd_run_records_recipe_validates_with_tcd_and_inspect_shows_it(assets, tmp_path, monkeypatch, capsys):
    from lcm_lora.cli.main import main

    tcd_calls, lcm_calls = _spy(monkeypatch, "sample_tcd"), _spy(monkeypatch, "sample_lcm")
    result = _run(assets, tmp_path / "tcd", "lcd.objective=tcd")
    assert result.status == "finished"
    assert [c["gamma"] for c in tcd_calls] == [0.3, 0.3] and lcm_calls == []  # one TCD grid row per step count
    assert (tmp_path / "tcd" / "validation" / "step-00000002.png").is_file()

    md = read_adapter(result.adapter_path).metadata
    recipe = read_recipe(md)
    assert (recipe.objective, recipe.sampler, recipe.steps, recipe.gamma, recipe.cfg, recipe.model_sampling, recipe.w_range) == (
        "tcd", "tcd", 4, 0.3, 1.0, "eps", (2.0, 15.0))
    assert md["lcm_lora.tcd_s_sampling"] == "uniform"

    assert main(["inspect", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    assert "objective:     tcd (sampler tcd, 4 steps, gamma 0.3, cfg 1, w 2-15)" in capsys.readouterr().out
    assert main(["inspect", "--json", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["objective"] == "tcd" and info["sampling_recipe"]["model_sampling"] == "eps"


def test_lcm_run_records_lcm_recipe_and_validates_with_lcm(assets, tmp_path, monkeypatch, capsys):
    from lcm_lora.cli.main import main

    tcd_calls, lcm_calls = _spy(monkeypatch, "sample_tcd"), _spy(monkeypatch, "sample_lcm")
    result = _run(assets, tmp_path / "lcm")
    assert len(lcm_calls) == 2 and tcd_calls == []
    recipe = read_recipe(read_adapter(result.adapter_path).metadata)
    assert (recipe.objective, recipe.sampler, recipe.gamma, recipe.model_sampling, recipe.w_range) == ("lcm", "lcm", None, "lcm", (2.0, 15.0))
    assert main(["inspect", "--allow-unknown-arch", str(result.adapter_path)]) == 0
    assert "objective:     lcm (sampler lcm, 4 steps, cfg 1, w 2-15)" in capsys.readouterr().out


def test_tdd_metadata_recommends_its_gamma():
    from lcm_lora.training.config import load_config
    from lcm_lora.training.export import training_metadata

    cfg = load_config({"lcd": {"objective": "tcd", "tcd_s_sampling": "tdd", "tdd_s_ratio": 0.2}})
    md = training_metadata("sd1", 4, 4.0, 10, "0" * 16, cfg)
    assert read_recipe(md).gamma == 0.2 and md["lcm_lora.tcd_s_sampling"] == "tdd(s_ratio=0.2,steps=4-8)"


def test_inspect_without_recipe_says_so(tmp_path, capsys):
    from lcm_lora.cli.main import main
    from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule, write_adapter

    path = tmp_path / "plain.safetensors"
    module = LoraModule(down=torch.randn(2, 8), up=torch.randn(8, 2), alpha=2.0)
    write_adapter(LoraAdapter(modules={"unet.down_blocks.0.attentions.0.proj_in": module}), path)
    assert main(["inspect", "--allow-unknown-arch", str(path)]) == 0
    assert "objective:     not recorded" in capsys.readouterr().out
