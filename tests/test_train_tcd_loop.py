"""The TCD objective in the training loop (slow): an interrupted and resumed TCD run (TDD's s draw, the
one with two extra random draws) repeats the uninterrupted run's losses bit for bit, and a TCD checkpoint
cannot be resumed as an LCM run."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.training.trainer import train
from tiny_training import tiny_teacher_and_data

pytestmark = pytest.mark.slow
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def test_tcd_resume_is_exact_and_objective_is_part_of_the_trajectory(tmp_path):
    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    over = [f"teacher={teacher}", f"data={data}", "max_steps=4", "batch_size=4", "lora.rank=4", "lora.alpha=4",
            "validation.every=0", "checkpoint.every=0", "logging.progress=false", f"data.cache_dir={tmp_path / 'cache'}",
            "lcd.objective=tcd", "lcd.tcd_s_sampling=tdd"]
    full = train(TINY, tmp_path / "full", overrides=over, progress=False)

    def interrupt(step, loss):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)

    part = train(TINY, tmp_path / "split", overrides=over, progress=False, on_step=interrupt)
    assert part.status == "interrupted" and part.final_step == 2
    # A resume keeps the run's own overrides (training/resume_config.py), so resuming "as an LCM run" means
    # saying so: objective lcm, and the TCD-only s draw back at its default.
    as_lcm = [o for o in over if not o.startswith("lcd.")] + ["lcd.objective=lcm", "lcd.tcd_s_sampling=uniform"]
    with pytest.raises(ConfigError, match="different configuration"):
        train(TINY, tmp_path / "split", resume=True, overrides=as_lcm, progress=False)
    rest = train(TINY, tmp_path / "split", resume=True, overrides=over, progress=False)
    assert part.losses + rest.losses == full.losses
