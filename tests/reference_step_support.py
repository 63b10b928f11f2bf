"""Shared by the reference-step parity tests: load ``benchmarks/trainer/reference_step.py`` (not a
package module) and stand in for the reference's optimizer to capture its gradients."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("lcm_reference_step", ROOT / "benchmarks" / "trainer" / "reference_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GradTap:
    """Stands in for the reference's optimizer: records the LoRA gradients it applies at ``step()``
    (after the reference's own clipping, if any)."""

    def __init__(self, optimizer, params):
        self.optimizer, self.params, self.grads = optimizer, params, None

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.params.items()}
        self.optimizer.step()

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)
