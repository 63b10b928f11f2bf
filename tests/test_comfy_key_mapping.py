"""Our key names against real ComfyUI's LoRA key maps (``comfy.lora.model_lora_keys_unet`` /
``model_lora_keys_clip``), for SD1.5, SD2, SDXL and SSD-1B.

ComfyUI runs out of process under ``$COMFYUI_PYTHON`` with ``$COMFYUI_PATH`` on ``sys.path``.
Its models are built on the meta device (no memory): the UNet config comes from ComfyUI's own
``model_detection.unet_config_from_diffusers_unet`` applied to the diffusers UNet's state-dict
shapes, so ComfyUI decides the architecture and its block layout itself.

Checked both ways: every name we write (kohya native / diffusers-derived / LDM, and ComfyUI's
``diffusion_model.`` / ``text_encoders.`` keys) is in ComfyUI's map and addresses the weight we
mean; and every key ComfyUI accepts for a Linear/Conv weight parses, with our reader, to the
canonical module owning that weight.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import pytest

from lcm_lora.lcm_core import model_configs
from lcm_lora.lcm_core.lora import comfy_format, diffusers_format, kohya
from lcm_lora.lcm_core.lora.key_parsing import BARE, COMFY, DIFFUSERS, KOHYA, family_of
from lcm_lora.lcm_core.lora.keys import canonical_to_kohya, canonical_to_ldm
from lcm_lora.lcm_core.lora.module_table import architecture_modules

pytestmark = pytest.mark.comfyui

COMFY_SIDE = textwrap.dedent('''
    import json, sys
    import torch
    comfy_path, src, dst = sys.argv[1:4]
    sys.path.insert(0, comfy_path)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_detection, comfy.lora
    out = {}
    for arch, shapes in json.load(open(src)).items():
        sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        unet_config = comfy.model_detection.unet_config_from_diffusers_unet(sd)
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
        with torch.device("meta"):
            model = model_config.get_model({}, "", device="meta")
            clip = model_config.clip_target({}).clip(device="meta", dtype=torch.float32)
        out[arch] = {
            "model_config": type(model_config).__name__,
            "unet": comfy.lora.model_lora_keys_unet(model, {}),
            "clip": comfy.lora.model_lora_keys_clip(clip, {}),
            "unet_weights": [k for k in model.state_dict() if k.endswith(".weight")],
            "clip_weights": [k for k in clip.state_dict() if k.endswith(".weight")],
        }
    json.dump(out, open(dst, "w"))
''')
COMFY_CLASS = {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "ssd1b": "SSD1B"}


@pytest.fixture(scope="module")
def comfy_maps(tmp_path_factory):
    comfy_path, comfy_python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_path or not comfy_python:
        pytest.skip("SKIPPED ComfyUI key-map test: set COMFYUI_PATH (ComfyUI checkout) and COMFYUI_PYTHON "
                    "(its python) to compare our LoRA key names with real ComfyUI")
    d = tmp_path_factory.mktemp("comfy")
    shapes = {a: {k: list(v.shape) for k, v in model_configs.build_unet(a).state_dict().items()}
              for a in model_configs.ARCHITECTURES}
    (d / "shapes.json").write_text(json.dumps(shapes))
    (d / "side.py").write_text(COMFY_SIDE)
    proc = subprocess.run([comfy_python, str(d / "side.py"), comfy_path, str(d / "shapes.json"), str(d / "maps.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((d / "maps.json").read_text())


def _target(value):
    return value[0] if isinstance(value, list) else value


@pytest.mark.parametrize("arch", model_configs.ARCHITECTURES)
def test_every_module_name_we_write_is_found_by_comfy(comfy_maps, arch):
    maps = comfy_maps[arch]
    assert maps["model_config"] == COMFY_CLASS[arch]
    weights = set(maps["unet_weights"]) | set(maps["clip_weights"])
    missing = []
    for key in architecture_modules(arch):
        comp = key.split(".", 1)[0]
        table = maps["unet"] if comp == "unet" else maps["clip"]
        weight = canonical_to_ldm(key, arch, style="comfy") + ".weight"
        assert weight in weights, f"{key}: ComfyUI model has no weight {weight}"
        names = {canonical_to_kohya(key, arch, unet_names=s) for s in ("native", "diffusers", "ldm")}
        names.add(comfy_format.canonical_to_module(key, arch))
        for name in names:
            if _target(table.get(name)) != weight:
                missing.append((key, name, table.get(name)))
    assert not missing, f"{len(missing)} names not mapped by ComfyUI, e.g. {missing[:3]}"


def _parse(name: str, arch: str):
    fam = family_of(name)
    if fam == KOHYA:
        return kohya.module_to_canonical(name, arch)
    if fam == COMFY:
        return comfy_format.module_to_canonical(name, arch)
    if fam == DIFFUSERS:
        return diffusers_format.module_to_canonical(name)
    if fam == BARE:
        return diffusers_format.bare_to_canonical(name)
    return "unsupported"


@pytest.mark.parametrize("arch", model_configs.ARCHITECTURES)
def test_every_comfy_lora_key_parses_to_the_same_module(comfy_maps, arch):
    maps = comfy_maps[arch]
    owner = {canonical_to_ldm(k, arch, style="comfy") + ".weight": k for k in architecture_modules(arch)}
    checked, wrong = 0, []
    for table in (maps["unet"], maps["clip"]):
        for name, value in table.items():
            weight = _target(value)
            if weight not in owner or name.startswith(("lycoris_", "lora_prior_")):
                continue  # norms/embeddings, or naming schemes of other trainers
            if "class_embedding" in name:
                continue  # ComfyUI aliases class_embedding and add_embedding to label_emb; SD has no class_embedding
            if arch != "sd2" and name.startswith("lora_te_") and weight.startswith("clip_g."):
                continue  # ComfyUI's fallback lora_te_ → clip_g only applies without clip_l (refiner)
            checked += 1
            got = _parse(name, arch)
            if got != owner[weight]:
                wrong.append((name, got, owner[weight]))
    assert checked > len(owner), checked
    assert not wrong, f"{len(wrong)} ComfyUI keys parse differently, e.g. {wrong[:3]}"
