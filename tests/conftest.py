"""Fixtures shared by the tests in ``tests/`` (the ComfyUI tests have their own in ``tests/comfy``)."""
from __future__ import annotations

import os

import pytest
from torch import nn


class TinyTorchModel(nn.Module):
    """Every module kind a LoRA targets, tiny: Linear 12→10 and 10→9, Conv 3×3 4→6, Conv 1×1 6→5."""

    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(12, 10)
        self.lin2 = nn.Linear(10, 9)
        self.conv3 = nn.Conv2d(4, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 5, 1)


@pytest.fixture
def tiny_torch_model():
    """The class of the tiny torch model (call it after seeding: its initial weights are random)."""
    return TinyTorchModel


@pytest.fixture
def tree(tmp_path):
    """A confined folder for the path-confinement tests (lcm_core.safe_names, the trainer panel):
    root/{a.safetensors, sub/b.ckpt, model/unet/config.json, link_in -> a, link_out -> outside, dir_out -> outside/}"""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "model" / "unet").mkdir(parents=True)
    (root / "model" / "unet" / "config.json").write_text("{}")
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (root / "a.safetensors").write_bytes(b"a")
    (root / "sub" / "b.ckpt").write_bytes(b"b")
    os.symlink(root / "a.safetensors", root / "link_in.safetensors")
    os.symlink(outside / "secret.safetensors", root / "link_out.safetensors")
    os.symlink(outside, root / "dir_out")
    return root, outside
