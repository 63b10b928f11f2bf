"""The tiny teacher and dataset that the trainer tests train on (``training.tiny_models``).

One place for the pair every trainer test builds: a two-level UNet (block channels 16 / 32) with its text
encoder(s) and VAE, and ``n`` captioned images of ``size`` px. Sets one torch thread: the tests' tiny kernels
gain nothing from a second one, and two pytest workers or a side process keep the other core.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lcm_lora.training.tiny_models import build_tiny_teacher, write_tiny_dataset


def tiny_teacher_and_data(folder: Path, n: int = 8, size: int = 16, variant: str = "sd") -> tuple[Path, Path]:
    """Write ``folder/teacher`` (``variant`` "sd" or "sdxl") and ``folder/data``; return their paths."""
    torch.set_num_threads(1)
    teacher = build_tiny_teacher(Path(folder) / "teacher", block_out_channels=(16, 32), variant=variant)
    data = write_tiny_dataset(Path(folder) / "data", n=n, size=size)
    return teacher, data
