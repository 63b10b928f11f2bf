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
    old = torch.get_num_threads()
    try:
        assert cpu_threads.apply_thread_default(None) == old  # no --threads: torch's default stays
        assert cpu_threads.apply_thread_default(1) == 1
        with pytest.raises(ValueError, match=">= 1"):
            cpu_threads.apply_thread_default(0)
    finally:
        torch.set_num_threads(old)
