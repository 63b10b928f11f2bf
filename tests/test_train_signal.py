"""A real SIGTERM to a training subprocess (as the ComfyUI panel sends): checkpoint, clean exit, resumable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from lcm_lora.training import checkpoint as ckpt
from lcm_lora.training.run_log import read_events
from tiny_training import tiny_teacher_and_data

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"


def _signal_after_two_steps(args, env, out, send):
    """Start the trainer (its own process group), ``send(proc)`` once it logged two steps; (proc, stderr)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if sum(e["event"] == "step" for e in read_events(out)) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        send(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, err


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    out = tmp_path / "run"
    common = [sys.executable, "-m", "lcm_lora.training", "--config", str(TINY), "--output", str(out), "--no-progress",
              f"teacher={teacher}", f"data={data}", "batch_size=2", "lora.rank=4", "validation.every=0", "checkpoint.every=0"]
    args = common + ["max_steps=100000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, err = _signal_after_two_steps(args, env, out, lambda p: p.send_signal(signal.SIGTERM))
    assert proc.returncode == 130, err[-3000:]
    events = read_events(out)
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "interrupted"
    steps = [e["step"] for e in events if e["event"] == "step"]
    saved = ckpt.list_checkpoints(out)
    assert saved and saved[-1][0] == steps[-1] == end["step"]
    state = json.loads((saved[-1][1] / "trainer_state.json").read_text())
    assert state["step"] == steps[-1]
    # resumable from the command line, with a new step budget
    # "--resume" directly before key=value overrides (argparse would take the first as CKPT)
    resume_args = common[:8] + ["--resume"] + common[8:] + [f"max_steps={steps[-1] + 1}"]
    done = subprocess.run(resume_args, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "lcm_lora.safetensors").is_file()


def _nproc_command(tmp_path, *extra):
    teacher, data = tiny_teacher_and_data(tmp_path, n=8, size=16)
    return [sys.executable, "-m", "lcm_lora.training", "--config", str(TINY), "--output", str(tmp_path / "run"),
            "--nproc", "2", "--no-progress", f"teacher={teacher}", f"data={data}", "batch_size=4", "lora.rank=4",
            "validation.every=0", "checkpoint.every=0", *extra]


def test_nproc_exit_codes_are_those_of_one_process(tmp_path):
    """`--nproc 2` returns what one process would: 130 after a Ctrl-C to the terminal's process group (every
    process checkpoints first; it used to return 0), 3 when the run diverges (it used to return 2)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "int" / "run"
    proc, err = _signal_after_two_steps(_nproc_command(tmp_path / "int", "max_steps=100000"), env, out,
                                        lambda p: os.killpg(p.pid, signal.SIGINT))  # Ctrl-C: the whole process group
    assert proc.returncode == 130, err[-3000:]
    assert read_events(out)[-1]["status"] == "interrupted" and ckpt.list_checkpoints(out)
    diverged = subprocess.run(_nproc_command(tmp_path / "nan", "max_steps=20", "optim.learning_rate=1e30"),
                              capture_output=True, text=True, env=env, timeout=300)
    assert diverged.returncode == 3, diverged.stderr[-3000:]


def test_a_crash_in_one_of_nproc_processes_shows_its_traceback(monkeypatch, capsys):
    """torch's spawn wrapper keeps a child's traceback in a file and turns KeyboardInterrupt into exit 0: each
    process prints its own traceback and exits 1 on a crash, 130 on a second Ctrl-C."""
    import pytest

    from lcm_lora.training import cli

    def crash(*a, **k):
        raise RuntimeError("a bug in the trainer")

    monkeypatch.setattr(cli, "_run_one", crash)
    with pytest.raises(SystemExit) as stopped:
        cli._spawned("c.yaml", "out", None, [], False)
    assert stopped.value.code == 1 and "RuntimeError: a bug in the trainer" in capsys.readouterr().err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_one", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli._spawned("c.yaml", "out", None, [], False)
    assert stopped.value.code == 130
    assert cli._combined_exit([0, 130]) == 130 and cli._combined_exit([3, 130]) == 3 and cli._combined_exit([0, 0]) == 0
    assert cli._combined_exit([1, 130]) == 2 and "exit codes 1, 130" in capsys.readouterr().err
