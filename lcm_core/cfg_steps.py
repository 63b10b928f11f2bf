"""Classifier-free guidance on the first k steps only: negative prompts with few-step adapters.

LCM / TCD adapters are sampled at cfg 1 (guidance ω was distilled into them), so the negative
prompt is never evaluated. Real CFG ``ε = ε(neg) + g·(ε(pos) − ε(neg))`` (Ho & Salimans 2022,
Eq. 6) on the first ``k`` steps — where the noise is high and the layout is decided — and plain
conditional steps after lets the negative prompt act at ``steps + k`` UNet evaluations instead of
``2·steps`` (measured in the demo: ``demo/student_sampling.py`` ``cfg_steps``,
``demo/negative_prompts.py``).

Which model evaluations belong to "the first k steps" is decided by σ, not by counting calls, so
it holds for any sampler, also one that evaluates the model more than once per step: step ``i``
of a schedule ``σ_0 > σ_1 > … > σ_steps`` covers ``(σ_{i+1}, σ_i]``, so an evaluation at σ is
guided iff ``σ > σ_k``.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["EVERY_STEP", "guided_step_count", "cfg_at", "unet_evaluations"]

# "CFG on every step": ComfyUI's own convention for "to the end" (KSamplerAdvanced end_at_step = 10000).
EVERY_STEP = 10000


def guided_step_count(cfg_steps: int, steps: int) -> int:
    """How many of ``steps`` steps get CFG for a ``cfg_steps`` setting (``EVERY_STEP`` or more = all)."""
    cfg_steps, steps = int(cfg_steps), int(steps)
    if cfg_steps < 0:
        raise ValueError(f"cfg_steps must be >= 0, got {cfg_steps}")
    return min(cfg_steps, max(steps, 0))


def cfg_at(sigma: float, sigmas: Sequence[float], cfg: float, cfg_steps: int) -> float:
    """The guidance scale of a model evaluation at ``sigma`` in a run over ``sigmas``
    (``steps + 1`` decreasing values, the last usually 0): ``cfg`` on the first ``cfg_steps``
    steps, 1.0 (conditional prediction only) after."""
    steps = len(sigmas) - 1
    k = guided_step_count(cfg_steps, steps)
    if k >= steps:
        return cfg
    if k == 0:
        return 1.0
    return cfg if float(sigma) > float(sigmas[k]) else 1.0


def unet_evaluations(steps: int, cfg: float, cfg_steps: int = EVERY_STEP) -> int:
    """UNet evaluations per image: one per step, one more per guided step unless cfg is 1
    (ComfyUI's ``sampling_function`` skips the negative prompt at cfg 1.0)."""
    k = guided_step_count(cfg_steps, steps)
    return int(steps) + (0 if math.isclose(cfg, 1.0) else k)
