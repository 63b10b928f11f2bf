"""Key mapping coverage: every Linear/Conv2d of the full-size SD1.5, SD2, SDXL and SSD-1B UNets
and text encoders maps both ways in every convention, checked against independent references:
the real diffusers/transformers models (meta device), diffusers' single-file converters
(``convert_ldm_unet_checkpoint``, ``convert_open_clip_checkpoint``) and diffusers' own kohya
LoRA key converter."""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import pytest
import torch

from lcm_lora.lcm_core import model_configs
from lcm_lora.lcm_core.lora import comfy_format, diffusers_format
from lcm_lora.lcm_core.lora.keys import (
    canonical_to_kohya,
    canonical_to_ldm,
    canonical_to_ldm_weight,
    decode_underscored,
    kohya_to_canonical,
    ldm_to_canonical,
    module_name_in,
)
from lcm_lora.lcm_core.lora.module_table import architecture_modules, unet_modules
from lcm_lora.lcm_core.lora.unet_names import UnetLayout, diffusers_to_ldm, ldm_to_diffusers

ARCHS = model_configs.ARCHITECTURES


@lru_cache(maxsize=None)
def meta_models(arch):
    torch.set_num_threads(1)
    return model_configs.build_unet(arch), model_configs.build_text_encoders(arch)


def reference_modules(arch) -> dict[str, tuple]:
    """Canonical key → weight shape of every Linear/Conv2d, from the real models."""
    unet, tes = meta_models(arch)
    out = {f"unet.{n}": tuple(m.weight.shape) for n, m in unet.named_modules()
           if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    for comp, te in tes.items():
        for n, m in te.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                path = n if hasattr(te, "text_model") else "text_model." + n
                out[f"{comp}.{path}"] = tuple(m.weight.shape)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_module_table_matches_real_models(arch):
    ours = {k: v.shape for k, v in architecture_modules(arch).items()}
    assert ours == reference_modules(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_canonical_text_encoder_keys_resolve_in_live_models(arch):
    _, tes = meta_models(arch)
    for key in architecture_modules(arch):
        comp, path = key.split(".", 1)
        if comp != "unet":
            te = tes[comp]
            assert isinstance(te.get_submodule(module_name_in(te, path)), torch.nn.Linear)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_module_round_trips_in_every_convention(arch):
    layout = UnetLayout.for_arch(arch)
    for key in architecture_modules(arch):
        comp, path = key.split(".", 1)
        for style in ("native", "diffusers", "ldm"):
            name = canonical_to_kohya(key, arch, unet_names=style)
            assert name.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"))
            assert kohya_to_canonical(name, arch) == key, (style, name)
        assert diffusers_format.module_to_canonical(key) == key
        assert diffusers_format.bare_to_canonical(path, comp) == key
        comfy_name = comfy_format.canonical_to_module(key, arch)
        assert comfy_format.module_to_canonical(comfy_name, arch, layout) == key
        for style in ("comfy", "checkpoint"):
            ldm = canonical_to_ldm(key, arch, style=style)
            ref = canonical_to_ldm_weight(key, arch, style=style)
            assert ref is not None, key
            if ldm is not None:
                assert ldm_to_canonical(ldm + ".weight", arch) == key
            else:  # only OpenCLIP fused q/k/v and the transposed text_projection lack a 1:1 key
                assert style == "checkpoint" and comp != "unet" and (ref.rows or ref.transposed)


def test_kohya_names_follow_sd_scripts_conventions():
    # sd-scripts: diffusers-derived UNet names for SD1/2; SGM names for SDXL; lora_te1/te2 for SDXL.
    k = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert canonical_to_kohya(k, "sd1") == "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert canonical_to_kohya(k, "sdxl") == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert canonical_to_kohya("text_encoder.text_model.encoder.layers.3.mlp.fc1", "sd1") == \
        "lora_te_text_model_encoder_layers_3_mlp_fc1"
    assert canonical_to_kohya("text_encoder.text_model.encoder.layers.3.mlp.fc1", "sdxl") == \
        "lora_te1_text_model_encoder_layers_3_mlp_fc1"
    assert canonical_to_kohya("text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj", "sdxl") == \
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"
    assert decode_underscored("down_blocks_0_resnets_1_conv_shortcut") == "down_blocks.0.resnets.1.conv_shortcut"


@pytest.mark.parametrize("arch", ARCHS)
def test_ldm_names_agree_with_diffusers_single_file_converter(arch):
    """Every UNet parameter (incl. norms and biases): our diffusers→LDM name, fed to diffusers'
    ``convert_ldm_unet_checkpoint``, comes back under the original diffusers name."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet, _ = meta_models(arch)
    layout = UnetLayout.for_arch(arch)
    checkpoint, ids = {}, {}
    for i, (name, _) in enumerate(unet.state_dict().items()):
        module, _, param = name.rpartition(".")
        ldm = diffusers_to_ldm(module, layout)
        assert ldm is not None, name
        assert ldm_to_diffusers(ldm, layout) == module
        checkpoint[f"model.diffusion_model.{ldm}.{param}"] = torch.tensor([float(i)])
        ids[name] = float(i)
    converted = convert_ldm_unet_checkpoint(checkpoint, model_configs.unet_config(arch))
    assert set(converted) == set(ids)
    assert all(converted[k].item() == v for k, v in ids.items())


@pytest.mark.parametrize("arch,comp", [("sd2", "text_encoder"), ("sdxl", "text_encoder_2")])
def test_openclip_checkpoint_names_agree_with_diffusers(arch, comp):
    """Checkpoint-style OpenCLIP locations (fused in_proj rows, c_fc/c_proj, transposed projection)
    against diffusers ``convert_open_clip_checkpoint``."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    _, tes = meta_models(arch)
    te = tes[comp]
    hidden = te.config.hidden_size
    prefix = "cond_stage_model.model." if arch == "sd2" else "conditioner.embedders.1.model."
    keys = [k for k in architecture_modules(arch) if k.startswith(comp + ".")]
    refs = {k: canonical_to_ldm_weight(k, arch, style="checkpoint") for k in keys}
    checkpoint = {}
    for k, ref in refs.items():
        assert ref.key.startswith(prefix)
        if ref.key in checkpoint:
            continue
        if ref.transposed:  # real shape (hidden, projection_dim): the converter reads shape[0]
            t = torch.arange(hidden * te.config.projection_dim, dtype=torch.float32)
            checkpoint[ref.key] = t.reshape(hidden, te.config.projection_dim)
            continue
        rows = 3 * hidden if ref.rows else hidden
        # column 0 encodes the weight key, column 1 the row, so the converter's slicing is observable
        t = torch.zeros(rows, 2)
        t[:, 0] = float(len(checkpoint))
        t[:, 1] = torch.arange(rows, dtype=torch.float32)
        checkpoint[ref.key] = t
    converted = convert_open_clip_checkpoint(te, checkpoint, prefix=prefix)
    for k, ref in refs.items():
        path = k.split(".", 1)[1]
        got = converted[module_name_in(te, path) + ".weight"] if module_name_in(te, path) + ".weight" in converted \
            else converted[path + ".weight"]
        src = checkpoint[ref.key].T if ref.transposed else checkpoint[ref.key]
        if ref.rows:
            src = src[ref.rows[0]:ref.rows[1]]
        assert torch.equal(got, src), k
        if ref.rows is None and not ref.transposed:
            assert ldm_to_canonical(ref.key, arch) == k


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("unet_names", ["native", "diffusers"])
def test_kohya_names_agree_with_diffusers_kohya_loader(arch, unet_names):
    """diffusers' own kohya reader (``_maybe_map_sgm_blocks_to_diffusers`` +
    ``_convert_non_diffusers_lora_to_diffusers``) maps every name we write to the same module."""
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    expected = set(architecture_modules(arch))
    if unet_names == "diffusers" and arch in ("sdxl", "ssd1b"):
        # diffusers' heuristic turns lora_unet_add_embedding_linear_1 into "add.embedding.linear"
        # (its SDXL "emb" index-strip rule); the sd-scripts-native SGM name label_emb_0_0 works.
        expected = {k for k in expected if not k.startswith("unet.add_embedding")}
    sd = {}
    for key in expected:
        name = canonical_to_kohya(key, arch, unet_names=unet_names)
        sd[f"{name}.lora_down.weight"] = torch.zeros(1, 1)
        sd[f"{name}.lora_up.weight"] = torch.zeros(1, 1)
        sd[f"{name}.alpha"] = torch.tensor(1.0)
    sd = _maybe_map_sgm_blocks_to_diffusers(sd, SimpleNamespace(**model_configs.unet_config(arch)))
    converted, alphas = _convert_non_diffusers_lora_to_diffusers(sd)
    got = set()
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(comp) + 1:]: v for k, v in converted.items() if k.startswith(comp + ".")}
        if not part:
            continue
        part = convert_unet_state_dict_to_peft(part) if comp == "unet" else \
            convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        got |= {f"{comp}.{k[:-len('.lora_A.weight')]}" for k in part if k.endswith(".lora_A.weight")}
    assert got == expected
    assert len(alphas) == len(expected)


def test_tiny_layouts_round_trip():
    """Non-default layouts (1 resnet per level, attention-free last up level) map both ways."""
    cfg = dict(block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=16,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               transformer_layers_per_block=(1, 1, 2), use_linear_projection=True)
    layout = UnetLayout.from_config(cfg)
    names = set()
    for path in unet_modules(cfg):
        ldm = diffusers_to_ldm(path, layout)
        assert ldm is not None and ldm_to_diffusers(ldm, layout) == path
        names.add(ldm)
    assert len(names) == len(unet_modules(cfg))
