"""Architecture detection from adapters (full and partial) and from checkpoint key/shape maps.

Inputs are built from the real diffusers/transformers models on the meta device (the
independent reference for which modules and shapes each architecture has); LDM single-file
layouts come from our diffusers→LDM names, which ``test_key_mapping`` checks against
diffusers' own converter."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from lcm_lora.lcm_core import model_configs
from lcm_lora.lcm_core.architecture import (
    Detection,
    detect_adapter_architecture,
    detect_checkpoint_architecture,
    require_architecture,
    require_same_architecture,
)
from lcm_lora.lcm_core.errors import ArchitectureMismatchError
from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule, canonical_to_ldm_weight
from lcm_lora.lcm_core.lora.unet_names import UnetLayout, diffusers_to_ldm

ARCHS = model_configs.ARCHITECTURES


@lru_cache(maxsize=None)
def real_shapes(arch) -> dict[str, tuple]:
    """Canonical key → weight shape of every Linear/Conv2d, read off the real models."""
    torch.set_num_threads(1)
    unet = model_configs.build_unet(arch)
    out = {f"unet.{n}": tuple(m.weight.shape) for n, m in unet.named_modules()
           if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    for comp, te in model_configs.build_text_encoders(arch).items():
        for n, m in te.named_modules():
            if isinstance(m, torch.nn.Linear):
                out[f"{comp}.{n if hasattr(te, 'text_model') else 'text_model.' + n}"] = tuple(m.weight.shape)
    return out


@lru_cache(maxsize=None)
def real_unet_state_shapes(arch) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model_configs.build_unet(arch).state_dict().items()}


def select(arch, pred):
    return {k: s for k, s in real_shapes(arch).items() if pred(k)}


@pytest.mark.parametrize("arch", ARCHS)
def test_full_adapters(arch):
    det = detect_adapter_architecture(real_shapes(arch))
    assert det.arch == arch, det


@pytest.mark.parametrize("arch", ARCHS)
def test_unet_only_and_attention_only_adapters(arch):
    assert detect_adapter_architecture(select(arch, lambda k: k.startswith("unet."))).arch == arch
    attn = select(arch, lambda k: k.startswith("unet.") and k.endswith(("to_q", "to_k", "to_v", "to_out.0")))
    assert detect_adapter_architecture(attn).arch == arch


@pytest.mark.parametrize("arch", ["sdxl", "ssd1b"])
def test_lcm_lora_targets_adapter(arch):
    from lcm_lora.lcm_core.targets import matches_target

    shapes = select(arch, lambda k: k.startswith("unet.") and matches_target(k[5:]))
    assert detect_adapter_architecture(shapes).arch == arch


def test_detection_from_a_real_adapter_object():
    shapes = select("sd2", lambda k: k.endswith("attn2.to_k"))
    adapter = LoraAdapter({k: LoraModule(torch.zeros(1, s[1]), torch.zeros(s[0], 1)) for k, s in shapes.items()})
    det = detect_adapter_architecture(adapter)
    assert det.arch == "sd2" and det.known and "sd2" in str(det)


def test_ambiguous_partial_adapters_are_unknown_with_reason():
    # self-attention only: SD1 and SD2 share every shape (only cross-attention/text widths differ)
    attn1 = select("sd1", lambda k: ".attn1." in k)
    det = detect_adapter_architecture(attn1)
    assert det.arch == "unknown" and "ambiguous" in det.evidence[0] and "sd1" in det.evidence[0] \
        and "sd2" in det.evidence[0]
    # CLIP-L text encoder only: SD1 = SDXL's first encoder
    te = select("sd1", lambda k: k.startswith("text_encoder."))
    det = detect_adapter_architecture(te)
    assert det.arch == "unknown" and {"sd1", "sdxl", "ssd1b"} <= set(det.candidates)
    # ... unless metadata says so (sd-scripts' ss_base_model_version) or kohya uses lora_te1_
    assert detect_adapter_architecture(te, hints=["sd_v1"]).arch == "sd1"
    assert detect_adapter_architecture(te, hints=["sdxl_family"]).arch == "sdxl"
    # SDXL modules that also exist in SSD-1B, covering neither model's kinds completely
    part = select("sdxl", lambda k: k.startswith("unet.down_blocks.2.attentions.0.transformer_blocks.")
                  and int(k.split(".")[6]) < 4)
    det = detect_adapter_architecture(part)
    assert det.arch == "unknown" and set(det.candidates) == {"sdxl", "ssd1b"}
    assert detect_adapter_architecture(part, hints=["ssd1b"]).arch == "ssd1b"


def test_mismatching_shapes_are_unknown_with_evidence():
    shapes = dict(select("sd1", lambda k: k.startswith("unet.")))
    shapes["unet.conv_in"] = (320, 9, 3, 3)  # inpainting UNet
    det = detect_adapter_architecture(shapes)
    assert det.arch == "unknown" and any("unet.conv_in" in e for e in det.evidence)
    assert detect_adapter_architecture({}).arch == "unknown"


def ldm_checkpoint(arch) -> dict[str, tuple]:
    """Single-file layout: UNet under model.diffusion_model., text encoders as SD/SGM store them."""
    layout = UnetLayout.for_arch(arch)
    out = {}
    for name, shape in real_unet_state_shapes(arch).items():
        module, _, param = name.rpartition(".")
        out[f"model.diffusion_model.{diffusers_to_ldm(module, layout)}.{param}"] = shape
    for key, shape in real_shapes(arch).items():
        if key.startswith("text_encoder"):
            ref = canonical_to_ldm_weight(key, arch, style="checkpoint")
            if ref.rows:
                shape = (3 * shape[0], shape[1])
            out[ref.key] = tuple(reversed(shape)) if ref.transposed else shape
    out["first_stage_model.decoder.conv_out.weight"] = (3, 128, 3, 3)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_detection_single_file(arch):
    det = detect_checkpoint_architecture(ldm_checkpoint(arch))
    assert det.arch == arch, det


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_detection_diffusers_and_comfy_keys(arch):
    assert detect_checkpoint_architecture(real_unet_state_shapes(arch)).arch == arch
    comfy = {k.replace("model.diffusion_model.", "diffusion_model."): v
             for k, v in ldm_checkpoint(arch).items() if k.startswith("model.diffusion_model.")}
    assert detect_checkpoint_architecture(comfy).arch == arch


def test_checkpoint_detection_rejects_others():
    ckpt = ldm_checkpoint("sd1")
    ckpt["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    det = detect_checkpoint_architecture(ckpt)
    assert det.arch == "unknown" and any("input_blocks.0.0" in e for e in det.evidence)
    assert detect_checkpoint_architecture({"foo.weight": (3, 3)}).arch == "unknown"
    assert detect_checkpoint_architecture({}).arch == "unknown"


def test_require_architecture_names_both():
    with pytest.raises(ArchitectureMismatchError) as info:
        require_architecture("sd1", "sdxl", "lora.safetensors")
    msg = str(info.value)
    assert msg.startswith("lora.safetensors: ") and "expected sdxl" in msg and "found sd1" in msg
    require_architecture("sdxl", "sdxl", "x")
    require_architecture(Detection("unknown"), "sdxl", "x")  # unknown passes by default
    with pytest.raises(ArchitectureMismatchError):
        require_architecture(Detection("unknown"), "sdxl", "x", allow_unknown=False)
    assert require_same_architecture({"a": "sdxl", "b": None, "c": Detection("sdxl")}) == "sdxl"
    with pytest.raises(ArchitectureMismatchError) as info:
        require_same_architecture({"a.safetensors": "sd1", "b.safetensors": "sdxl"})
    assert "sd1" in str(info.value) and "sdxl" in str(info.value) and "b.safetensors" in str(info.value)
