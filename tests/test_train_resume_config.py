"""``--resume`` continues a run with its own saved config (issue 17, item 1); a config file given
again is merged on top (keys changed in it since the run started win; null keys and unchanged keys
keep the run's values, overrides included); ``key=value`` overrides come last. The end-to-end CLI
route (README's resume lines, run verbatim on the tiny config) is in ``test_readme_commands.py``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.config import dump_config, load_config
from lcm_lora.training.resume_config import (
    SAVED_CONFIG,
    SOURCE_RECORD,
    record_for_run,
    resolve_run_config,
    source_record,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def _start_run(run: Path, config: Path, overrides: list[str]):
    """What a fresh run leaves in its folder: config.yaml (file + overrides) and the file's own values."""
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config, overrides)
    (run / SAVED_CONFIG).write_text(dump_config(cfg))
    (run / SOURCE_RECORD).write_text(json.dumps(source_record(config)))
    return cfg


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "data").mkdir()
    cfg = _start_run(tmp_path / "RUN", TINY, ["teacher=teacher", "data=data", "max_steps=20", "lora.rank=4"])
    return tmp_path / "RUN", cfg


def test_resume_without_config_is_the_saved_config(run):
    folder, started = run
    cfg = resolve_run_config(None, folder, True)
    assert cfg.to_dict() == started.to_dict()
    assert cfg.teacher.path == str(folder.parent / "teacher")  # absolute, whatever the cwd is later


def test_template_given_again_keeps_the_runs_values(run):
    """The README's `--config configs/tiny_cpu.yaml --output RUN --resume max_steps=600`:
    teacher/data (null in the template) and the run's own overrides (rank 4, max_steps 20) stay."""
    folder, started = run
    cfg = resolve_run_config(TINY, folder, True)
    assert cfg.to_dict() == started.to_dict()
    cfg = resolve_run_config(TINY, folder, True, ["max_steps=600"])
    expected = started.to_dict()
    expected["train"]["max_steps"] = 600
    assert cfg.to_dict() == expected


def test_keys_edited_in_the_file_since_the_start_are_applied(run, tmp_path):
    folder, started = run
    edited = tmp_path / "edited.yaml"
    shutil.copy(TINY, edited)
    (folder / SOURCE_RECORD).write_text(json.dumps(source_record(edited)))  # the run started from this copy
    edited.write_text(edited.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 5.0e-4"))
    cfg = resolve_run_config(edited, folder, True)
    assert cfg.optim.learning_rate == 5e-4
    assert cfg.lora.rank == 4 and cfg.train.max_steps == 20 and cfg.teacher.path == started.teacher.path
    # an override still wins over the file
    assert resolve_run_config(edited, folder, True, ["optim.learning_rate=2e-4"]).optim.learning_rate == 2e-4


def test_runs_without_a_source_record_take_every_key_the_file_sets(run):
    folder, started = run
    (folder / SOURCE_RECORD).unlink()
    cfg = resolve_run_config(TINY, folder, True)
    assert cfg.lora.rank == 8 and cfg.train.max_steps == 300  # the file's values
    assert cfg.teacher.path == started.teacher.path  # null in the file: kept


def test_without_resume_the_given_config_is_used_as_is(run):
    folder, _ = run
    assert resolve_run_config(TINY, folder, False).teacher.path is None
    with pytest.raises(ConfigError, match="give --config"):
        resolve_run_config(None, folder.parent / "elsewhere", True)


def test_source_record_is_kept_when_another_file_is_given(run):
    folder, _ = run
    assert record_for_run(TINY, folder, True)["file"] == str(TINY.resolve())
    assert record_for_run(folder / SAVED_CONFIG, folder, True) is None  # not the start file: keep the old record
    assert record_for_run({"train": {"max_steps": 3}}, folder, True) is None


def test_cli_accepts_overrides_after_options_and_no_config_with_resume(run, capsys, monkeypatch):
    """`lcm-lora train --output RUN --resume max_steps=600` reaches the trainer with the run's config."""
    from lcm_lora.cli.main import main
    from lcm_lora.training import cli as train_cli

    folder, _ = run
    seen = {}

    def fake_run_one(config, output, resume, overrides, progress):
        seen.update(config=config, output=output, resume=resume, overrides=overrides)
        return 0

    monkeypatch.setattr(train_cli, "_run_one", fake_run_one)
    assert main(["train", "--output", str(folder), "--resume", "max_steps=600", "seed=0"]) == 0
    assert seen == {"config": None, "output": str(folder), "resume": True, "overrides": ["max_steps=600", "seed=0"]}
    assert main(["train", "--config", str(TINY), "teacher=t", "--output", str(folder), "max_steps=5", "--resume"]) == 0
    assert seen["overrides"] == ["teacher=t", "max_steps=5"] and seen["resume"] is True
    assert main(["train", "--resume"]) == 2
    assert "--config is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(TINY), "--output", str(folder), "--bogus"])
