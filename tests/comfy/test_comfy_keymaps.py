"""Full key-mapping coverage: every module an LCM-LoRA (or a style LoRA's text encoders) can hold,
for SD1, SD2, SDXL and SSD-1B, reaches the right ComfyUI weight through the loader's path.

The loader converts adapters to kohya names (``lcm_core``) and lets ComfyUI's own
``model_lora_keys_unet`` / ``model_lora_keys_clip`` resolve them (the maps LoraLoader uses).
Here the full-size models are built on the meta device in ComfyUI's python; for each module
the ComfyUI target must exist, have the module's weight shape, and be the weight that
``lcm_core``'s ``canonical_to_ldm`` names.
"""
from __future__ import annotations

import pytest
import torch

import lora_fixtures as F

pytestmark = pytest.mark.comfyui

ARCHS = ("sd1", "sd2", "sdxl", "ssd1b")


@pytest.fixture(scope="module")
def keymaps(comfy_facts):
    return comfy_facts["keymaps"]


def full_adapter(arch: str):
    """Rank-1 adapter on every LCM-LoRA target module and every text-encoder attention/MLP layer."""
    from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule

    shapes = F.module_shapes(arch)
    te_layers = tuple(range(32))
    keys = F.select_modules(shapes, ("",), te_layers=te_layers, te_components=("text_encoder", "text_encoder_2"))
    modules = {}
    for key in keys:
        shape = shapes[key]
        if len(shape) == 4:
            modules[key] = LoraModule(down=torch.zeros(1, shape[1], shape[2], shape[3]), up=torch.zeros(shape[0], 1, 1, 1), alpha=1.0)
        else:
            modules[key] = LoraModule(down=torch.zeros(1, shape[1]), up=torch.zeros(shape[0], 1), alpha=1.0)
    return LoraAdapter(modules=modules, architecture=arch), shapes


@pytest.mark.parametrize("arch", ARCHS)
def test_every_module_maps_to_the_right_comfyui_weight(keymaps, arch):
    from lcm_lora.lcm_core.lora import adapter_to_state_dict, canonical_to_kohya, canonical_to_ldm

    km = keymaps[arch]
    adapter, shapes = full_adapter(arch)
    suffixes = {s for s in F.LCM_TARGET_SUFFIXES if any(k.startswith("unet.") and k.endswith(s) for k in adapter.modules)}
    assert suffixes == set(F.LCM_TARGET_SUFFIXES)
    state_dict = adapter_to_state_dict(adapter, "kohya", arch)
    names = {k.split(".", 1)[0] for k in state_dict}
    assert len(names) == len(adapter.modules)
    problems = []
    for key in adapter.modules:
        name = canonical_to_kohya(key, arch)
        assert name in names
        table = km["unet"] if name.startswith("lora_unet_") else km["clip"]
        if name not in table:
            problems.append(f"{key} -> {name}: unknown to ComfyUI")
            continue
        target, shape = table[name]
        if tuple(shape) != tuple(shapes[key]):
            problems.append(f"{key} -> {target}: shape {shape} != {shapes[key]}")
        if target != canonical_to_ldm(key, arch, style="comfy") + ".weight":
            problems.append(f"{key} -> {target}, lcm_core says {canonical_to_ldm(key, arch, style='comfy')}")
    assert not problems, f"{len(problems)} problems, e.g. {problems[:5]}"


def test_comfyui_detects_each_architecture(keymaps):
    assert {a: keymaps[a]["model_class"] for a in ARCHS} == {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "ssd1b": "SSD1B"}
