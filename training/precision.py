"""The training step's arithmetic precision: float32 at least.

The step's ``.float()`` casts exist so that a half-precision model's outputs (fp16/bf16 autocast) are used in float32,
as the reference scripts do. :func:`at_least_float32` does that and leaves float64 as it is, so the same step run in
float64 (the reference-step parity tests' exact step) stays float64 throughout; for float32 and half inputs it is
``.float()``.
"""
from __future__ import annotations

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or ``x`` itself when it is float64."""
    return x if x.dtype == torch.float64 else x.float()
