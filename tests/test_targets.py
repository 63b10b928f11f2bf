"""LCM-LoRA target modules and the paper's parameter counts.

References: the ``lora_target_modules`` list of diffusers' LCM-LoRA training scripts (read from
the diffusers git mirror), peft's own injection on the full-size meta UNets, and the LCM-LoRA
report (arXiv 2311.05556, §3 / Table 1: rank 64 → 67.5M parameters on SD1.5, 197M on SDXL).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
from functools import lru_cache

import pytest
import torch

from lcm_lora.lcm_core import model_configs
from lcm_lora.lcm_core.targets import LCM_LORA_UNET_TARGETS, lora_parameter_count, lora_target_names

_DEV_MIRROR = "/work/.mirror/huggingface+diffusers/repo"  # dev-machine fallback, never printed
DIFFUSERS_MIRROR = os.environ.get("DIFFUSERS_MIRROR", _DEV_MIRROR)
SCRIPTS = [
    "examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py",
    "examples/consistency_distillation/train_lcm_distill_lora_sdxl_wds.py",
    "examples/consistency_distillation/train_lcm_distill_lora_sdxl.py",
]


def _script_targets(path: str) -> list[str]:
    try:
        text = subprocess.run(["git", "-C", DIFFUSERS_MIRROR, "show", f"HEAD:{path}"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        where = "" if DIFFUSERS_MIRROR == _DEV_MIRROR else f" ({DIFFUSERS_MIRROR} is not one)"
        pytest.skip(f"set DIFFUSERS_MIRROR to a git checkout of huggingface/diffusers{where} "
                    "to compare the targets with its LCM-LoRA training scripts")
    m = re.search(r"lora_target_modules = (\[\s*\"[^\]]*\])", text)
    assert m, f"no lora_target_modules list in {path}"
    return ast.literal_eval(m.group(1))


@pytest.mark.parametrize("script", SCRIPTS)
def test_targets_equal_the_training_scripts(script):
    assert tuple(_script_targets(script)) == LCM_LORA_UNET_TARGETS


@lru_cache(maxsize=None)
def _meta_unet(arch):
    torch.set_num_threads(1)
    return model_configs.build_unet(arch)


@lru_cache(maxsize=None)
def _peft_count(arch, rank=64) -> int:
    """Parameters peft itself adds for these targets (meta device, no memory)."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    unet = copy.deepcopy(_meta_unet(arch))
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LCM_LORA_UNET_TARGETS))
    model = inject_adapter_in_model(cfg, unet, low_cpu_mem_usage=True)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("arch", model_configs.ARCHITECTURES)
def test_target_names_match_live_model(arch):
    assert sorted(lora_target_names(arch)) == sorted(lora_target_names(_meta_unet(arch)))


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_parameter_count_equals_peft(arch):
    assert lora_parameter_count(arch, 64) == _peft_count(arch)


def test_paper_parameter_counts():
    sdxl = lora_parameter_count("sdxl", 64)
    sd15 = lora_parameter_count("sd1", 64)
    assert round(sdxl / 1e6) == 197  # paper: 197M
    # paper: 67.5M. These targets give 67.25M on the SD1.5 UNet (peft agrees, test above): 0.37%
    # below the paper. No target kind explains it (the smallest, downsamplers.0.conv, is 1.43M);
    # adding the two untargeted time_embedding linears (+0.27M) would give 67.52M, and the fp16
    # file of 67.25M parameters is 134.5 MB (≈ "135 MB" / 2 bytes) — the paper's number cannot be
    # reproduced exactly from the published target list. Tolerance: half a percent, tight enough
    # to catch any missing or extra target kind.
    assert abs(sd15 - 67.5e6) / 67.5e6 < 0.005
