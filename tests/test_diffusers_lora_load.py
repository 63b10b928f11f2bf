"""A LoRA written by us, loaded by diffusers ``load_lora_weights`` into a fresh tiny pipeline,
reproduces the outputs of the source adapter applied by peft (UNet and text encoders).

Tiny SD1-shaped and SDXL-shaped pipelines are built from configs in code (tokenizer files
written to a temp dir; nothing from the hub). For SDXL we write sd-scripts' native SGM names
(``lora_unet_input_blocks_…``), diffusers-derived kohya names and the diffusers format.

Note: per-module alphas of the attention projections (to_q/k/v/out) differing from the rest
are not honoured by diffusers' kohya loader (``_get_alpha_name`` does not find the
``…processor.to_k_lora`` names); the test therefore varies alpha/rank on other modules.
"""
from __future__ import annotations

import json

import pytest
import torch

from lcm_lora.lcm_core.lora import LoraAdapter, adapter_from_state_dict, read_adapter, write_adapter
from lcm_lora.lcm_core.safetensors_io import read_safetensors
from lcm_lora.lcm_core.targets import LCM_LORA_UNET_TARGETS, TEXT_ENCODER_TARGETS

SD_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
               norm_num_groups=8)
XL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
               transformer_layers_per_block=(1, 1, 2), cross_attention_dim=64, attention_head_dim=(2, 4, 4),
               use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time",
               addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32)


def _tokenizer(d):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def _te_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=32)


def build_pipeline(xl: bool, d):
    from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, \
        UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    parts = dict(
        unet=UNet2DConditionModel(**(XL_UNET if xl else SD_UNET)),
        text_encoder=CLIPTextModel(_te_config()),
        vae=AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                          up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8,
                          layers_per_block=1),
        tokenizer=_tokenizer(d), scheduler=LCMScheduler())
    if xl:
        parts.update(text_encoder_2=CLIPTextModelWithProjection(_te_config()), tokenizer_2=parts["tokenizer"])
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def outputs(pipe, xl: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 500])
    ids = torch.randint(2, 64, (2, 7), generator=g)
    with torch.no_grad():
        out = {"text_encoder": pipe.text_encoder(ids).last_hidden_state}
        if xl:
            out["text_encoder_2"] = pipe.text_encoder_2(ids).text_embeds
            enc = torch.randn(2, 7, 64, generator=g)
            added = dict(text_embeds=torch.randn(2, 32, generator=g), time_ids=torch.randn(2, 6, generator=g))
            out["unet"] = pipe.unet(x, t, enc, added_cond_kwargs=added).sample
        else:
            out["unet"] = pipe.unet(x, t, torch.randn(2, 7, 32, generator=g)).sample
    return out


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def peft_source(xl: bool, d):
    """Pipeline with random peft LoRAs on UNet and text encoders, and the same adapter as ours."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_pipeline(xl, d)
    base = outputs(pipe, xl)
    configs = {
        "unet": LoraConfig(r=4, lora_alpha=3, target_modules=list(LCM_LORA_UNET_TARGETS),
                           rank_pattern={"conv1": 2}, alpha_pattern={"time_emb_proj": 5, "proj_in": 7}),
        "text_encoder": LoraConfig(r=2, lora_alpha=4, target_modules=list(TEXT_ENCODER_TARGETS)),
        "text_encoder_2": LoraConfig(r=3, lora_alpha=1.5, target_modules=list(TEXT_ENCODER_TARGETS)),
    }
    modules = {}
    for i, comp in enumerate(["unet", "text_encoder"] + (["text_encoder_2"] if xl else [])):
        model = getattr(pipe, comp)
        model.add_adapter(configs[comp])
        _randomize(model, seed=10 + i)
        part = adapter_from_state_dict(get_peft_model_state_dict(model), component=comp,
                                       peft_configs={comp: configs[comp].to_dict()})
        modules.update(part.modules)
    return base, outputs(pipe, xl), LoraAdapter(modules)


CASES = [(False, "kohya", "native"), (False, "diffusers", "native"),
         (True, "kohya", "ldm"), (True, "kohya", "diffusers"), (True, "diffusers", "native")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    cache = {}

    def get(xl):
        if xl not in cache:
            cache[xl] = peft_source(xl, tmp_path_factory.mktemp("tok"))
        return cache[xl]

    return get


@pytest.mark.parametrize("xl,fmt,unet_names", CASES)
def test_our_file_loads_in_diffusers_like_peft_source(tmp_path, sources, xl, fmt, unet_names):
    torch.set_num_threads(1)
    base, reference, adapter = sources(xl)
    path = tmp_path / "lora.safetensors"
    write_adapter(adapter, path, fmt, unet_names=unet_names, unet_config=XL_UNET if xl else SD_UNET)
    keys = read_safetensors(path)[0]
    if fmt == "kohya":
        assert any(k.startswith("lora_te1_" if xl else "lora_te_") for k in keys)
        assert any("input_blocks" in k for k in keys) == (unet_names == "ldm")
    fresh = build_pipeline(xl, tmp_path)
    fresh.load_lora_weights(str(path))
    got = outputs(fresh, xl)
    for comp, ref in reference.items():
        assert (ref - base[comp]).abs().max() > 1e-2, f"{comp}: the LoRA has no visible effect"
        torch.testing.assert_close(got[comp], ref, rtol=1e-5, atol=1e-5, msg=comp)
    # and our reader gets the same adapter back
    back = read_adapter(path, unet_config=XL_UNET if xl else SD_UNET)
    assert set(back.modules) == set(adapter.modules)
    for k, m in adapter.modules.items():
        torch.testing.assert_close(back.modules[k].delta_weight(), m.delta_weight(), rtol=0, atol=0)
