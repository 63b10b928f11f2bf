"""``output.recommended_gamma``: the γ an adapter's metadata recommends (``lcm_lora.recommended_gamma``), which the
nodes' ``auto`` mode, ``lcm-lora inspect`` and the demo sample with. Default: the objective's (TCD 0.3, TDD's
s ratio, PCM / TSCD 0); a config error naming the key for an LCM-LoRA (no γ) or a value outside [0, 1]; not part
of the config hash (sampling advice, not the training trajectory)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule, write_adapter
from lcm_lora.lcm_core.sampling_recipe import read_recipe
from lcm_lora.training.config import config_hash, load_config
from lcm_lora.training.config_schema import schema_text
from lcm_lora.training.export import adapter_recipe, training_metadata


@pytest.mark.parametrize("overrides,gamma", [
    (["lcd.objective=tcd"], 0.3),
    (["lcd.objective=tcd", "lcd.tcd_s_sampling=tdd", "lcd.tdd_s_ratio=0.2"], 0.2),
    (["lcd.objective=pcm"], 0.0),
    (["lcd.objective=tscd"], 0.0),
    (["lcd.objective=lcm"], None),
])
def test_default_is_the_objectives_gamma(overrides, gamma):
    cfg = load_config({}, overrides)
    assert cfg.output.recommended_gamma is None
    assert adapter_recipe(cfg).gamma == gamma


@pytest.mark.parametrize("objective", ["tcd", "pcm", "tscd"])
def test_recommended_gamma_reaches_the_metadata_and_read_recipe(objective):
    cfg = load_config({}, [f"lcd.objective={objective}", "output.recommended_gamma=0.5"])
    base = load_config({}, [f"lcd.objective={objective}"])
    md = training_metadata("sd1", 4, 4.0, 10, config_hash(cfg), cfg)
    assert md["lcm_lora.recommended_gamma"] == "0.5"
    recipe = read_recipe(md)
    assert recipe.gamma == 0.5
    # everything else of the recipe is the objective's own
    assert recipe == dataclasses.replace(read_recipe(training_metadata("sd1", 4, 4.0, 10, "h", base)), gamma=0.5)
    assert config_hash(cfg) == config_hash(base)


@pytest.mark.parametrize("overrides,needle", [
    (["output.recommended_gamma=0.5"], "an LCM-LoRA is sampled by the LCM sampler"),
    (["lcd.objective=pcm", "output.recommended_gamma=1.5"], "must be <= 1.0"),
    (["lcd.objective=pcm", "output.recommended_gamma=-0.1"], "must be >= 0.0"),
    (["lcd.objective=tcd", "output.recommended_gamma=nan"], "got nan"),
    (["lcd.objective=tcd", "output.recommended_gamma=much"], "must be a number"),
])
def test_bad_recommended_gamma_is_an_error_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config({}, overrides)
    assert "output.recommended_gamma" in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("key", ["lcd.w_min", "optim.learning_rate", "lcd.ema_decay", "lora.alpha"])
def test_nan_is_refused_for_every_bounded_number(key):
    """nan compares False with every bound, so a range check alone let it through."""
    with pytest.raises(ConfigError) as e:
        load_config({}, [f"{key}=nan"])
    assert key in str(e.value) and "nan" in str(e.value), str(e.value)


def test_schema_lists_recommended_gamma():
    line = next(x for x in schema_text().splitlines() if x.strip().startswith("recommended_gamma:"))
    assert "the γ (TCD's stochasticity) the adapter's metadata recommends" in line, line


def test_inspect_shows_the_recommended_gamma(tmp_path, capsys):
    from lcm_lora.cli.main import main

    cfg = load_config({}, ["lcd.objective=pcm", "output.recommended_gamma=0.5"])
    g = torch.Generator().manual_seed(0)
    modules = {"unet.down_blocks.0.attentions.0.proj_in": LoraModule(torch.randn(4, 32, generator=g),
                                                                     torch.randn(32, 4, generator=g), 4.0)}
    path = tmp_path / "pcm.safetensors"
    write_adapter(LoraAdapter(modules=modules), path, extra_metadata=training_metadata("sd1", 4, 4.0, 10, "h", cfg))
    assert main(["inspect", "--json", "--allow-unknown-arch", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["sampling_recipe"]["gamma"] == 0.5
    assert main(["inspect", "--allow-unknown-arch", str(path)]) == 0
    assert "gamma 0.5" in capsys.readouterr().out
