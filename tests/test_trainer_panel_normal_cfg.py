"""The trainer panel's ``normal_cfg`` override (``lcd.normal_cfg``: the cfg a normal-CFG adapter's metadata
recommends, ``lcm_lora.recommended_cfg``), without ComfyUI.

References: the trainer's own config loader (``load_config`` with ``lcd.normal_cfg=...`` on the command line
gives the same config, hash, metadata and error messages as the panel's request), and the shipped YAML files
read as plain YAML (which configs are normal-CFG ones). The browser side (the field shown only for those
configs, never sent otherwise) is ``tests/comfy/test_comfy_trainer_panel_browser.py``.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from test_trainer_jobs_paths import TR

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.sampling_recipe import read_recipe
from lcm_lora.training.config import config_hash, dump_config, load_config
from lcm_lora.training.config_panel import panel_overrides
from lcm_lora.training.export import training_metadata

ROOT = Path(__file__).resolve().parents[1]
NORMAL = ROOT / "configs" / "pcm_normal_cfg_sd15.yaml"
GUIDED = ROOT / "configs" / "tiny_cpu.yaml"
pytestmark = pytest.mark.filterwarnings("ignore:.*adamw8bit is not usable here:UserWarning")  # the shipped PCM config's optimizer


def _body(config="pcm_normal_cfg_sd15.yaml", **overrides):
    return {"config": config, "teacher": "t", "data": "d", "output_name": "o", "overrides": overrides}


def _job(path: Path, tmp_path: Path, **overrides):
    req = TR.parse_start_request(_body(path.name, **overrides))
    return TR.job_config(req, path, teacher=tmp_path / "teacher", data=tmp_path / "data", adapter_name="a.safetensors")


def test_schema_offers_normal_cfg_within_what_the_trainer_accepts():
    spec = panel_overrides()["normal_cfg"]
    assert (spec["key"], spec["kind"], spec["default"]) == ("lcd.normal_cfg", "float", 7.5)
    assert spec["min"] > 1.0 and spec["min"] <= 1.5 and 20 <= spec["max"] <= 50, spec  # trainer: > 1; distilled ~1.5
    assert "recommended_cfg" in spec["doc"]


def test_normal_cfg_config_gets_the_panels_cfg(tmp_path):
    """The job's config.yaml == the trainer's own ``lcd.normal_cfg=3`` on that config; outside the hash; metadata 3.0."""
    cfg = _job(NORMAL, tmp_path, normal_cfg=3, max_steps=5)
    (tmp_path / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg and back.lcd.normal_cfg == 3.0 and not back.lcd.solver_guidance
    cli = load_config(NORMAL, ["lcd.normal_cfg=3", "train.max_steps=5"])
    assert back.lcd == cli.lcd and back.train == cli.train
    md = training_metadata("sd1", 64, 64.0, 5, config_hash(back), back)
    assert md["lcm_lora.recommended_cfg"] == "3.0" and read_recipe(md).cfg == 3.0
    # not given: the config's own cfg (7.5), same hash
    plain = _job(NORMAL, tmp_path, max_steps=5)  # (same paths: the hash covers teacher and data)
    assert plain.lcd.normal_cfg == 7.5 and config_hash(plain) == config_hash(back)


def test_guided_config_refuses_normal_cfg_and_is_unchanged_without_it(tmp_path):
    with pytest.raises(ConfigError) as trainer:
        load_config(GUIDED, ["lcd.normal_cfg=3"])
    with pytest.raises(TR.RequestError) as panel:
        _job(GUIDED, tmp_path, normal_cfg=3)
    assert panel.value.status == 400 and panel.value.problem == trainer.value.problem
    assert "key 'lcd.normal_cfg' applies to 'lcd.solver_guidance: false' only" in panel.value.problem
    # without the key a guided config's job is the shipped config: the trainer's own run of it has the same hash
    cfg = _job(GUIDED, tmp_path, max_steps=5)
    cli = load_config(GUIDED, [f"teacher.path={tmp_path / 'teacher'}", f"data.path={tmp_path / 'data'}", "train.max_steps=5"])
    assert cfg.lcd == cli.lcd and config_hash(cfg) == config_hash(cli)


@pytest.mark.parametrize("value,needle", [
    (1, "must be >= 1.01, got 1"), (1.0, "must be >= 1.01"), (0.5, "must be >= 1.01"), (-3, "must be >= 1.01"),
    (30.5, "must be <= 30.0"), (1e9, "must be <= 30.0"), ("3", "must be a number"), (True, "must be a number"),
    (None, "must be a number"), ([3], "must be a number"), (math.nan, "must be finite"), (math.inf, "must be finite"),
])
def test_bad_normal_cfg_is_refused_naming_the_key(value, needle):
    with pytest.raises(TR.RequestError) as e:
        TR.parse_start_request(_body(normal_cfg=value))
    assert e.value.status == 400 and "key 'lcd.normal_cfg'" in e.value.problem and needle in e.value.problem, e.value.problem


@pytest.mark.parametrize("value", [1.01, 1.5, 2, 5.5, 30])
def test_bounds_are_inclusive(value, tmp_path):
    assert _job(NORMAL, tmp_path, normal_cfg=value).lcd.normal_cfg == float(value)


def test_normal_cfg_configs_lists_the_shipped_ones_by_their_yaml(tmp_path):
    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    expected = {}
    for path in shipped:
        lcd = yaml.safe_load(path.read_text(encoding="utf-8")).get("lcd") or {}
        if lcd.get("solver_guidance", True) is False:
            expected[path.name] = float(lcd.get("normal_cfg", 7.5))
    assert expected and "pcm_normal_cfg_sd15.yaml" in expected
    assert TR.normal_cfg_configs(shipped) == expected
    # one more normal-CFG config at cfg 5, and a broken one (left out, logged; starting it reports the error)
    (tmp_path / "xl.yaml").write_text("lcd:\n  solver_guidance: false\n  normal_cfg: 5\n", encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("lcd:\n  normal_cfg: 5\n", encoding="utf-8")
    assert TR.normal_cfg_configs([tmp_path / "xl.yaml", tmp_path / "broken.yaml", GUIDED]) == {"xl.yaml": 5.0}
