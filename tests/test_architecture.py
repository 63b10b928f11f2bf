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
from lcm_lora.lcm_core.lora.architecture import (
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


# --------------------------------------------------------------------------- architecture families
# A partial adapter can be "unknown" between members of one family yet clearly not another
# architecture: its candidate set (every architecture whose real model has all its modules with
# these shapes, read off diffusers above) must be honoured by the checks.


def _partial_sdxl():
    """One SDXL cross-attention projection (640×2048): exists in SDXL and SSD-1B only."""
    return select("sdxl", lambda k: k == "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")


def test_partial_sdxl_family_adapter_is_unknown_within_the_family():
    part = _partial_sdxl()
    assert len(part) == 1
    det = detect_adapter_architecture(part)
    # candidates = the architectures whose real model holds this module with this shape
    reference = tuple(a for a in ARCHS if real_shapes(a).get(next(iter(part))) == next(iter(part.values())))
    assert det.arch == "unknown" and det.candidates == reference == ("sdxl", "ssd1b")


@pytest.mark.parametrize("expected", ["sd1", "sd2"])
def test_family_candidates_exclude_other_architectures(expected):
    det = detect_adapter_architecture(_partial_sdxl())
    with pytest.raises(ArchitectureMismatchError) as info:
        require_architecture(det, expected, "xl.safetensors")
    msg = str(info.value)
    assert msg.startswith("xl.safetensors: ") and f"expected {expected}, found sdxl or ssd1b" in msg
    assert info.value.expected == expected and info.value.found == "sdxl or ssd1b"


@pytest.mark.parametrize("expected", ["sdxl", "ssd1b"])
def test_family_candidates_accept_family_members(expected):
    det = detect_adapter_architecture(_partial_sdxl())
    require_architecture(det, expected, "xl.safetensors")  # may be either: not a mismatch
    with pytest.raises(ArchitectureMismatchError):  # ... but it is not *known* to be it
        require_architecture(det, expected, "xl.safetensors", allow_unknown=False)


def test_unknown_without_candidates_still_passes_by_default():
    det = Detection("unknown", ["nothing fits"], ())
    require_architecture(det, "sd1", "x")
    require_architecture(None, "sd1", "x")


def test_same_architecture_with_family_candidates():
    xl = detect_adapter_architecture(_partial_sdxl())
    sd1 = detect_adapter_architecture(select("sd1", lambda k: k.endswith("attn2.to_k")))
    assert sd1.arch == "sd1"
    with pytest.raises(ArchitectureMismatchError) as info:
        require_same_architecture([("sd1.safetensors", sd1), ("xl.safetensors", xl)])
    msg = str(info.value)
    assert msg.startswith("xl.safetensors: ") and "expected sd1, found sdxl or ssd1b" in msg \
        and "sd1.safetensors is sd1" in msg
    # the order does not matter: the second input is the one named as the clash
    with pytest.raises(ArchitectureMismatchError) as info:
        require_same_architecture([("xl.safetensors", xl), ("sd1.safetensors", sd1)])
    assert "expected sdxl or ssd1b, found sd1" in str(info.value)
    # within the family: a known member narrows the unknown one; two unknowns stay ambiguous
    assert require_same_architecture([("a", xl), ("b", "ssd1b")]) == "ssd1b"
    assert require_same_architecture([("a", xl), ("b", xl), ("c", None)]) is None
    # three pairwise-compatible candidate sets with an empty common set are still refused
    with pytest.raises(ArchitectureMismatchError) as info:
        require_same_architecture([("a", Detection("unknown", [], ("sd1", "sd2"))),
                                   ("b", Detection("unknown", [], ("sd2", "sdxl"))),
                                   ("c", Detection("unknown", [], ("sd1", "sdxl")))])
    assert str(info.value).startswith("c: ") and "a, b together allow only sd2" in str(info.value)


def test_merge_and_fuse_use_the_candidates_of_unknown_adapters(tmp_path):
    from safetensors.torch import save_file

    from lcm_lora.lcm_core.fuse_checkpoint import fuse_checkpoint
    from lcm_lora.lcm_core.merge import merge_adapters

    def adapter(shapes, arch=None):
        return LoraAdapter({k: LoraModule(torch.ones(1, s[1]), torch.ones(s[0], 1)) for k, s in shapes.items()},
                           architecture=arch)

    xl = adapter(_partial_sdxl())
    sd1 = adapter(select("sd1", lambda k: k.endswith("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")), "sd1")
    with pytest.raises(ArchitectureMismatchError) as info:
        merge_adapters([sd1, xl], [0.8, 1.0], names=["sd1.safetensors", "xl.safetensors"], progress=False)
    assert "xl.safetensors" in str(info.value) and "sd1" in str(info.value) and "sdxl or ssd1b" in str(info.value)
    merged, _ = merge_adapters([xl, xl], [1.0, 1.0], progress=False)
    assert merged.architecture is None  # sdxl or ssd1b: still undecided
    ckpt = tmp_path / "sd1.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768)},
              ckpt)
    with pytest.raises(ArchitectureMismatchError) as info:
        fuse_checkpoint(ckpt, [xl], [1.0], ["xl.safetensors"], tmp_path / "out.safetensors", arch="sd1",
                        progress=False)
    assert "expected sd1, found sdxl or ssd1b" in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_a_configured_teacher_arch_is_checked_against_a_single_file_checkpoint():
    """teacher.arch set (not auto) skipped the detection, so an SD1.5 file with arch sdxl failed deep in diffusers'
    conversion; now a recognised file must match, and an unrecognised one is forced to the configured arch."""
    from types import SimpleNamespace

    from lcm_lora.lcm_core.errors import ArchitectureMismatchError
    from lcm_lora.training.single_file import detect_arch

    state = {k: SimpleNamespace(shape=s) for k, s in ldm_checkpoint("sd1").items()}
    assert detect_arch(state, "auto", "x.safetensors") == detect_arch(state, "sd1", "x.safetensors") == "sd1"
    with pytest.raises(ArchitectureMismatchError, match="expected sdxl, found sd1"):
        detect_arch(state, "sdxl", "x.safetensors")
    assert detect_arch({"odd.weight": SimpleNamespace(shape=(3,))}, "sd2", "x.safetensors") == "sd2"
