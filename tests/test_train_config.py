"""Trainer config: shipped configs, defaults vs the reference script, errors naming file and key, overrides."""
from __future__ import annotations

import ast
import re
import os
from pathlib import Path

import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import TrainConfig, config_hash, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_shipped_configs_exist_and_validate():
    names = {p.name for p in CONFIGS}
    assert {"sd15.yaml", "sdxl.yaml", "ssd1b.yaml", "tiny_cpu.yaml"} <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.teacher.path is None  # templates: the user gives the teacher
        assert cfg.lcd.num_ddim_timesteps == 50


def test_shipped_architectures():
    assert load_config(ROOT / "configs/sd15.yaml").teacher.arch == "sd1"
    assert load_config(ROOT / "configs/sdxl.yaml").teacher.arch == "sdxl"
    assert load_config(ROOT / "configs/ssd1b.yaml").teacher.arch == "ssd1b"


def _reference_defaults(path: str) -> dict:
    """argparse defaults of the diffusers reference script, read from its source (never imported)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = getattr(node.args[0], "value", None)
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant) and isinstance(flag, str):
                    out[flag.lstrip("-")] = kw.value.value
    return out


@pytest.mark.skipif(not os.environ.get("LCM_REFERENCE_SCRIPT"), reason="LCM_REFERENCE_SCRIPT (diffusers train_lcm_distill_lora_*.py) not set")
def test_defaults_match_reference_script():
    ref = _reference_defaults(os.environ["LCM_REFERENCE_SCRIPT"])
    d = TrainConfig()
    assert d.lcd.num_ddim_timesteps == ref["num_ddim_timesteps"]
    assert d.lcd.huber_c == ref["huber_c"]
    assert d.lcd.w_max == ref["w_max"]
    assert d.lcd.timestep_scaling == ref["timestep_scaling_factor"]
    assert d.lora.rank == ref["lora_rank"]
    assert d.optim.beta1 == ref["adam_beta1"] and d.optim.beta2 == ref["adam_beta2"] and d.optim.eps == ref["adam_epsilon"]
    assert d.optim.max_grad_norm == ref["max_grad_norm"]
    assert d.lcd.w_min in (3.0, 5.0) and ref["w_min"] in (3.0, 5.0)


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lcd:\n  w_mni: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "lcd.w_mni" in msg and "lcd.w_min" in msg  # suggestion


def test_unknown_section_and_bad_types(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("trainer:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown section 'trainer'"):
        load_config(p)
    p.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: key 'train\.max_steps' must be an integer"):
        load_config(p)
    p.write_text("lcd:\n  loss: l1\n")
    with pytest.raises(ConfigError, match=r"key 'lcd\.loss' must be one of huber, l2"):
        load_config(p)
    p.write_text("lcd:\n  w_min: 9\n  w_max: 2\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: key 'lcd\.w_min'"):
        load_config(p)
    p.write_text("lora:\n  rank: 0\n")
    with pytest.raises(ConfigError, match=r"key 'lora\.rank' must be >= 1"):
        load_config(p)


def test_parse_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("lcd: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot parse"):
        load_config(p)
    t = tmp_path / "broken.toml"
    t.write_text("[lcd\nw_min = 3\n")
    with pytest.raises(ConfigError, match="broken.toml: cannot parse"):
        load_config(t)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_toml_equals_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lcd:\n  w_min: 4.0\n  loss: l2\ntrain:\n  max_steps: 7\nvalidation:\n  steps: [1, 4]\n")
    t = tmp_path / "c.toml"
    t.write_text('[lcd]\nw_min = 4.0\nloss = "l2"\n[train]\nmax_steps = 7\n[validation]\nsteps = [1, 4]\n')
    a, b = load_config(y), load_config(t)
    assert a.to_dict() == b.to_dict()
    assert config_hash(a) == config_hash(b)


def test_overrides(tmp_path):
    cfg = load_config(ROOT / "configs/tiny_cpu.yaml", ["teacher=some/dir", "max_steps=12", "lcd.w_min=1e-1", "validation.steps=[1,2]"])
    assert cfg.teacher.path == os.fspath(Path.cwd() / "some/dir")
    assert cfg.train.max_steps == 12
    assert cfg.lcd.w_min == pytest.approx(0.1)
    assert cfg.validation.steps == [1, 2]
    assert parse_override("data=x")[0] == "data.path"
    assert load_config({}, ["seed=3"]).train.seed == 3  # train wins over validation.seed, prompts_only.seed
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config({}, ["steps=3"])  # prompts_only.steps, validation.steps
    with pytest.raises(ConfigError, match="unknown key 'lcd.w_mn'"):
        load_config({}, ["lcd.w_mn=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config({}, ["max_steps"])


def test_paths_in_files_are_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("teacher: ../teacher\ndata:\n  path: imgs\n")
    cfg = load_config(p)
    assert Path(cfg.teacher.path).resolve() == (tmp_path / "teacher").resolve()
    assert Path(cfg.data.path).resolve() == (tmp_path / "sub" / "imgs").resolve()


def test_hash_ignores_logging_but_not_lcd():
    a = load_config({})
    b = load_config({"logging": {"every": 50}, "checkpoint": {"keep": 9}, "train": {"max_steps": 5}})
    c = load_config({"lcd": {"huber_c": 0.01}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_printed_schema_is_a_valid_config_with_the_defaults():
    import yaml

    from lcm_lora.training.config_schema import schema_text

    assert load_config(yaml.safe_load(schema_text())).to_dict() == TrainConfig().to_dict()


def test_a_shipped_config_is_found_from_any_folder(tmp_path, monkeypatch):
    """`--config configs/tiny_cpu.yaml` (README, the demo's "next:" line) works outside a checkout's root and from a
    pip install: a name that is no file here but a config the package ships is that config; a file here wins."""
    from lcm_lora.training.config import SHIPPED_CONFIGS, config_path, load_config

    monkeypatch.chdir(tmp_path)
    assert config_path("configs/tiny_cpu.yaml") == SHIPPED_CONFIGS / "tiny_cpu.yaml"
    assert config_path("tiny_cpu.yaml") == SHIPPED_CONFIGS / "tiny_cpu.yaml"
    assert load_config("configs/tiny_cpu.yaml").train.max_steps == load_config(SHIPPED_CONFIGS / "tiny_cpu.yaml").train.max_steps
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny_cpu.yaml").write_text("train:\n  max_steps: 7\n")
    assert load_config("configs/tiny_cpu.yaml").train.max_steps == 7  # the user's own file wins
    assert config_path("other/tiny_cpu.yaml") == Path("other/tiny_cpu.yaml")  # only configs/NAME or NAME
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config("configs/nope.yaml")


@pytest.mark.parametrize("overrides, fragment", [
    (["lcd.huber_c=0"], "'lcd.huber_c' must be > 0 with 'lcd.loss: huber'"),
    (["lcd.objective=tscd", "lcd.num_ddim_timesteps=8"], "'lcd.tscd_segments': 8 segments are 125 timesteps wide, "
                                                         "not wider than one solver step (125"),
    (["lcd.objective=tscd", "lcd.tscd_segments=[50]"], "50 segments are 20 timesteps wide"),
])
def test_combinations_that_train_nothing_or_nan_are_refused(overrides, fragment):
    """pseudo-Huber at c = 0 has a NaN gradient where a difference is 0 (a finite loss, NaN weights); TSCD segments
    no wider than a solver step make every row cross an edge (the stage distils one teacher step, no segment)."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config({}, overrides)
    load_config({}, ["lcd.huber_c=0", "lcd.loss=l2"])  # c is unused by l2
    load_config({}, ["lcd.objective=tscd", "lcd.num_ddim_timesteps=8", "lcd.tscd_segments=[4,2,1]"])
