"""SDXL for real (slow): an architecture-exact random-weight SDXL checkpoint (≈6.9 GB fp16,
made at test time) runs example workflow (b) — SDXL + LCM-LoRA — in its own ComfyUI server.

The server keeps the UNet in bf16 (``--bf16-unet``) so the test fits a 24 GB machine; the
default run covers SDXL key mapping completely (``test_comfy_keymaps``).
Run with ``pytest -m slow tests/comfy/test_comfy_sdxl_slow.py``.
"""
from __future__ import annotations

import os
import re

import pytest

import comfy_harness as H
import lora_fixtures as F
from conftest import LCM_SDXL, SDXL_CKPT, SDXL_PREFIXES, cached_checkpoint
from test_comfy_workflows import EXAMPLES, SDXL_EXAMPLES, api_prompt

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def sdxl_server(comfy_env, tmp_path_factory, workdir):
    comfy_path, python = comfy_env
    checkpoint = cached_checkpoint(comfy_env, tmp_path_factory, "sdxl", workdir)
    server = H.ComfyServer(comfy_path, python, base_dir=tmp_path_factory.mktemp("comfy-sdxl"),
                           extra_args=("--bf16-unet",))
    server.prepare()
    os.symlink(checkpoint, server.checkpoints / SDXL_CKPT)
    shapes = F.module_shapes("sdxl")
    keys = F.select_modules(shapes, SDXL_PREFIXES + ("up_blocks.0.attentions.1.", "down_blocks.1.resnets.0."),
                            te_layers=(0, 31), te_components=("text_encoder", "text_encoder_2"))
    F.write_kohya(F.random_lora("sdxl", keys, shapes, rank=4, seed=3), server.loras / LCM_SDXL)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        print(f"\nComfyUI (SDXL) server log: {server.log_path}")


@pytest.mark.parametrize("name", SDXL_EXAMPLES)
def test_sdxl_workflow_runs(sdxl_server, name):
    object_info = sdxl_server.object_info()
    prompt = api_prompt(name, object_info, max_steps=2)
    result = sdxl_server.run(prompt, timeout=1800)
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    assert "Requested to load SDXL" in result.log  # ComfyUI detected the checkpoint as SDXL
    assert "lora key not loaded" not in result.log, re.findall(r"lora key not loaded: \S+", result.log)[:5]
    assert result.images()
    assert EXAMPLES[name].is_file()
