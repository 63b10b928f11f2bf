"""Silence library messages that mean nothing to a user of the command-line tools.

* diffusers' ``There are modules in UNet2DConditionModel that should be kept in float32: []`` —
  logged by ``ModelMixin.to(dtype)`` whenever a model is cast, even when the list is empty;
* transformers' / huggingface_hub's progress bars (``Writing model shards`` when a text encoder
  is saved; download bars, which never apply: nothing is downloaded).

``lcm-lora --debug`` keeps them. Called by the CLI entry points before diffusers/transformers are
imported (the progress-bar switch is read at import time); a value the user set is kept.
"""
from __future__ import annotations

import logging
import os

_FP32_LOGGER = "diffusers.models.modeling_utils"


class _EmptyFp32ListFilter(logging.Filter):
    """Drop diffusers' float32 warning only when its module list is empty (nothing to keep)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("should be kept in float32: []" in message or "should be kept in float32: None" in message)


def quiet_libraries(debug: bool = False) -> None:
    """Install the filters above unless ``debug``."""
    if debug:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Already imported (the switch above is read at import time): turn their bars off directly.
    import sys

    for name in ("transformers.utils.logging", "diffusers.utils.logging", "huggingface_hub.utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "disable_progress_bars" if name.startswith("hugging") else "disable_progress_bar"):
            getattr(module, "disable_progress_bars" if name.startswith("hugging") else "disable_progress_bar")()
    logger = logging.getLogger(_FP32_LOGGER)
    if not any(isinstance(f, _EmptyFp32ListFilter) for f in logger.filters):
        logger.addFilter(_EmptyFp32ListFilter())


def quiet_libraries_active() -> bool:
    """Whether :func:`quiet_libraries` is in effect here (a spawned worker re-applies it: ``demo/parallel.py``)."""
    return any(isinstance(f, _EmptyFp32ListFilter) for f in logging.getLogger(_FP32_LOGGER).filters)
