"""CPU thread defaults of the CLI (issue 17, item 10; numbers in BENCHMARKS.md "CPU threads"):
OMP_WAIT_POLICY=PASSIVE unless the user set it (before torch loads), ``--threads`` wins."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lcm_lora.lcm_core import cpu_threads


def test_wait_policy_is_passive_unless_set(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cpu_threads.configure_before_torch()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cpu_threads.configure_before_torch()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_cli_sets_the_policy_before_torch_loads():
    """In a fresh `python -m lcm_lora.training` process torch is imported after the policy is set."""
    code = ("import os, sys, runpy; sys.argv = ['x', '--print-schema'];\n"
            "try:\n    runpy.run_module('lcm_lora.training', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import torch; print('POLICY', os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300).stdout
    assert "POLICY PASSIVE" in out


def test_explicit_threads_win(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_explicit_threads", False)
    old = torch.get_num_threads()
    try:
        assert cpu_threads.apply_thread_default(None) == old  # no --threads: torch's default stays
        assert cpu_threads.apply_thread_default(1) == 1
        with pytest.raises(ValueError, match=">= 1"):
            cpu_threads.apply_thread_default(0)
    finally:
        torch.set_num_threads(old)


def _params(n):
    return torch.nn.ParameterList([torch.nn.Parameter(torch.empty(n, device="meta"))])


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_explicit_threads", False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_small_model_trains_on_one_thread_then_restores(two_threads):
    small = _params(cpu_threads.SMALL_UNET_PARAMS - 1)
    with cpu_threads.training_threads(small, torch.device("cpu")) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("case", ["large model", "cuda", "--threads", "OMP_NUM_THREADS"])
def test_per_workload_default_only_when_nothing_chose(two_threads, monkeypatch, case):
    model = _params(cpu_threads.SMALL_UNET_PARAMS if case == "large model" else 10)
    device = torch.device("cuda" if case == "cuda" else "cpu")
    if case == "--threads":
        cpu_threads.apply_thread_default(2)
    if case == "OMP_NUM_THREADS":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with cpu_threads.training_threads(model, device) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_tiny_training_runs_on_one_thread_and_gives_the_threads_back(two_threads, tmp_path):
    """The trainer's optimizer loop on the tiny CPU teacher uses 1 thread (its `start` event says so);
    afterwards the caller's count is back (the demo evaluates next, one thread per core)."""
    from pathlib import Path

    from lcm_lora.training.run_log import read_events
    from lcm_lora.training.tiny_models import build_tiny_teacher, write_tiny_dataset
    from lcm_lora.training.trainer import train

    teacher = build_tiny_teacher(tmp_path / "teacher", block_out_channels=(16, 32))
    data = write_tiny_dataset(tmp_path / "data", n=4, size=16)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    train(tiny, tmp_path / "run", overrides=[f"teacher={teacher}", f"data={data}", "max_steps=1", "batch_size=2",
                                              "lora.rank=4", "lora.alpha=4", "validation.every=0", "checkpoint.every=0",
                                              "logging.progress=false"], progress=False)
    start = next(e for e in read_events(tmp_path / "run") if e["event"] == "start")
    assert start["threads"] == 1
    assert torch.get_num_threads() == 2
