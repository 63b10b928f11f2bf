"""LoRA formats: exact round trips between kohya / diffusers / peft / ComfyUI, files written by
independent tools (peft ``save_pretrained``, diffusers ``save_lora_weights`` and
``convert_state_dict_to_kohya``) read with ΔW equal to peft's own ``get_delta_weight``, and a
clear error naming the key for every malformed adapter."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from lcm_lora.lcm_core.errors import AdapterFileError, ArchitectureMismatchError, ConfigError, OutputExistsError
from lcm_lora.lcm_core.lora import (
    LoraAdapter,
    LoraModule,
    adapter_from_state_dict,
    adapter_to_state_dict,
    read_adapter,
    write_adapter,
)
from lcm_lora.lcm_core.lora.module_table import architecture_modules
from lcm_lora.lcm_core.safetensors_io import read_safetensors, write_safetensors

FORMATS = ["kohya", "diffusers", "peft", "comfy"]
EXT = {"kohya": ".safetensors", "diffusers": ".safetensors", "comfy": ".safetensors", "peft": ""}


def random_adapter(arch: str, every: int = 9, seed: int = 0, tucker: bool = False) -> LoraAdapter:
    """Every ``every``-th module of ``arch`` (plus all conv kinds), mixed ranks/alphas/dtypes."""
    g = torch.Generator().manual_seed(seed)
    table = architecture_modules(arch)
    keys = [k for i, k in enumerate(table) if i % every == 0]
    keys += [k for k in table if k.endswith(("conv_shortcut", "downsamplers.0.conv", ".conv1"))][:3]
    keys += [k for k in table if k.startswith("unet.") and k.endswith("proj_in")][:1]
    dtypes = [torch.float16, torch.float32, torch.bfloat16]
    alphas = [None, 1.0, 0.1, 3.5, -2.0, 1 / 3]
    mods = {}
    for i, k in enumerate(dict.fromkeys(keys)):
        shape = table[k].shape
        r = 1 + i % 3
        dt = dtypes[i % 3]
        if len(shape) == 2:
            down, up, mid = torch.randn(r, shape[1], generator=g), torch.randn(shape[0], r, generator=g), None
        elif tucker and shape[2:] == (3, 3) and i % 2 == 0:
            down = torch.randn(r, shape[1], 1, 1, generator=g)
            mid = torch.randn(r, r, 3, 3, generator=g).to(dt)
            up = torch.randn(shape[0], r, 1, 1, generator=g)
        else:
            down, up, mid = torch.randn(r, *shape[1:], generator=g), torch.randn(shape[0], r, 1, 1, generator=g), None
        mods[k] = LoraModule(down.to(dt), up.to(dt), alphas[i % len(alphas)], mid)
    return LoraAdapter(mods, metadata={"source_note": "test", "ss_network_dim": "999"}, architecture=arch)


def assert_same(a: LoraAdapter, b: LoraAdapter):
    assert set(a.modules) == set(b.modules)
    for k, m in a.modules.items():
        n = b.modules[k]
        assert m.down.dtype == n.down.dtype and torch.equal(m.down, n.down), k
        assert m.up.dtype == n.up.dtype and torch.equal(m.up, n.up), k
        assert (m.mid is None and n.mid is None) or torch.equal(m.mid, n.mid), k
        assert m.alpha == n.alpha, (k, m.alpha, n.alpha)


@pytest.mark.parametrize("first,second", list(itertools.product(FORMATS, FORMATS)))
def test_any_format_to_any_format_is_exact(tmp_path, first, second):
    arch = "sdxl"
    src = random_adapter(arch, every=23)
    p1 = tmp_path / f"a_{first}{EXT[first]}"
    p2 = tmp_path / f"b_{second}{EXT[second]}"
    write_adapter(src, p1, first)
    mid = read_adapter(p1)
    assert mid.source_format == first and mid.architecture == arch
    write_adapter(mid, p2, second)
    out = read_adapter(p2)
    assert_same(src, out)
    assert out.architecture == arch and out.metadata["source_note"] == "test"


@pytest.mark.parametrize("arch", ["sd1", "sd2", "ssd1b"])
def test_conversion_chain_through_every_format(tmp_path, arch):
    src = random_adapter(arch, every=11)
    current = src
    for i, fmt in enumerate(FORMATS + ["kohya"]):
        p = tmp_path / f"{i}_{fmt}{EXT[fmt]}"
        write_adapter(current, p, fmt)
        current = read_adapter(p)
        assert current.source_format == fmt and current.architecture == arch
        assert_same(src, current)


@pytest.mark.parametrize("unet_names", ["native", "diffusers", "ldm"])
@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_kohya_naming_styles_and_tucker(tmp_path, arch, unet_names):
    src = random_adapter(arch, every=13, tucker=True)
    assert any(m.mid is not None for m in src.modules.values())
    write_adapter(src, tmp_path / "k.safetensors", "kohya", unet_names=unet_names)
    back = read_adapter(tmp_path / "k.safetensors")
    assert_same(src, back)
    keys = read_safetensors(tmp_path / "k.safetensors")[0]
    ldm = any("input_blocks" in k or "output_blocks" in k for k in keys)
    assert ldm == (unet_names == "ldm" or (unet_names == "native" and arch == "sdxl"))
    write_adapter(back, tmp_path / "c.safetensors", "comfy")
    assert_same(src, read_adapter(tmp_path / "c.safetensors"))
    for fmt in ("peft", "diffusers"):
        with pytest.raises(ConfigError, match="lora_mid"):
            write_adapter(src, tmp_path / f"x_{fmt}", fmt)
        assert not (tmp_path / f"x_{fmt}").exists()
    # `lcm-lora convert --to diffusers/peft` folds each Tucker module into a conv LoRA of the same rank, exactly
    from lcm_lora.cli.main import main

    for fmt in ("diffusers", "peft"):
        out = tmp_path / (f"f_{fmt}.safetensors" if fmt == "diffusers" else f"f_{fmt}")
        args = ["convert", str(tmp_path / "k.safetensors"), "--to", fmt, "-o", str(out)]
        if src.components() != {"unet"} and fmt == "peft":
            continue  # peft folders hold one component (tested elsewhere)
        assert main(args) == 0
        folded = read_adapter(out)
        assert all(m.mid is None for m in folded.modules.values()) and folded.modules.keys() == src.modules.keys()
        for key, m in src.modules.items():  # exact up to storing the folded factor in the module's own dtype
            assert folded.modules[key].rank == m.rank and folded.modules[key].down.dtype == m.down.dtype
            want = m.delta_weight(torch.float64)
            err = float((folded.modules[key].delta_weight(torch.float64) - want).norm() / want.norm())
            assert err <= 4 * torch.finfo(m.down.dtype).eps, (key, m.down.dtype, err)


def test_known_names_in_each_format():
    m = lambda o, i: LoraModule(torch.ones(2, i), torch.ones(o, 2), 4.0)  # noqa: E731
    a = LoraAdapter({
        "unet.down_blocks.1.attentions.0.proj_in": m(640, 640),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": m(768, 768),
        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1": m(5120, 1280),
    }, architecture="sdxl")
    assert set(adapter_to_state_dict(a, "kohya")) == {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
        "lora_unet_input_blocks_4_1_proj_in.alpha",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"}
    comfy = adapter_to_state_dict(a, "comfy")
    assert "diffusion_model.input_blocks.4.1.proj_in.lora_up.weight" in comfy
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.lora_down.weight" in comfy
    assert "text_encoders.clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.alpha" in comfy
    assert "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight" in adapter_to_state_dict(a, "diffusers")


def test_metadata_kept_and_ours_written(tmp_path):
    src = random_adapter("sdxl", every=50)
    recipe = json.dumps({"method": "concat", "inputs": ["a", "b"]})
    write_adapter(src, tmp_path / "k.safetensors", "kohya", extra_metadata={"lcm_lora.merge_recipe": recipe})
    _, md = read_safetensors(tmp_path / "k.safetensors")
    assert md["source_note"] == "test"
    assert md["lcm_lora.architecture"] == "sdxl" and md["lcm_lora.format_version"] == "1"
    assert md["lcm_lora.merge_recipe"] == recipe
    assert json.loads(md["lcm_lora.rank"]) == sorted(src.ranks())
    assert md["ss_network_dim"] == "Dynamic" and md["ss_base_model_version"] == "sdxl_base_v1-0"
    uniform = LoraAdapter({k: LoraModule(m.down, m.up, 8.0) for k, m in src.modules.items()
                           if m.rank == 2}, architecture="sdxl")
    write_adapter(uniform, tmp_path / "u.safetensors", "kohya")
    md = read_safetensors(tmp_path / "u.safetensors")[1]
    assert (md["ss_network_dim"], md["ss_network_alpha"], md["lcm_lora.alpha"]) == ("2", "8.0", "8")
    # diffusers: LoraConfig kwargs in lora_adapter_metadata, as diffusers' save_lora_weights writes
    write_adapter(uniform, tmp_path / "d.safetensors", "diffusers")
    cfg = json.loads(read_safetensors(tmp_path / "d.safetensors")[1]["lora_adapter_metadata"])
    assert cfg["unet.r"] == 2 and cfg["unet.lora_alpha"] == 8


def test_overwrite_and_invalid_adapter_are_refused(tmp_path):
    src = random_adapter("sd1", every=40)
    p = tmp_path / "x.safetensors"
    write_adapter(src, p)
    with pytest.raises(OutputExistsError):
        write_adapter(src, p)
    write_adapter(src, p, overwrite=True)
    bad = LoraAdapter(dict(src.modules))
    k = next(iter(bad.modules))
    bad.modules[k] = LoraModule(bad.modules[k].down.clone(), bad.modules[k].up.clone())
    bad.modules[k].up.view(-1)[0] = float("nan")
    with pytest.raises(AdapterFileError, match="NaN"):
        write_adapter(bad, tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()
    with pytest.raises(ConfigError, match="unknown LoRA format"):
        write_adapter(src, tmp_path / "y", "lycoris")


def test_peft_folder_layouts(tmp_path):
    src = random_adapter("sdxl", every=30)
    write_adapter(src, tmp_path / "multi", "peft")
    assert {p.name for p in (tmp_path / "multi").iterdir()} == {"unet", "text_encoder", "text_encoder_2"}
    assert_same(src, read_adapter(tmp_path / "multi"))
    unet_only = LoraAdapter({k: m for k, m in src.modules.items() if k.startswith("unet.")})
    write_adapter(unet_only, tmp_path / "flat", "peft")
    assert (tmp_path / "flat" / "adapter_config.json").is_file()
    assert_same(unet_only, read_adapter(tmp_path / "flat"))


# ----------------------------------------------------------------- files written by other tools


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=8)


def _randomize(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _peft_deltas(model) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            name = name.removeprefix("base_model.model.")
            out[name] = mod.get_delta_weight(next(iter(mod.lora_A.keys())))
    return out


def _assert_deltas(adapter: LoraAdapter, deltas, comp="unet"):
    assert set(adapter.modules) == {f"{comp}.{k}" for k in deltas}
    for k, d in deltas.items():
        ours = adapter.modules[f"{comp}.{k}"].delta_weight()
        torch.testing.assert_close(ours, d.reshape(ours.shape), rtol=1e-5, atol=1e-6)


TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
           "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


@pytest.mark.parametrize("rslora", [False, True])
def test_reads_peft_save_pretrained(tmp_path, rslora):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, rank_pattern={"conv1": 2},
                     alpha_pattern={"to_k": 3, "time_emb_proj": 9}, use_rslora=rslora)
    model = get_peft_model(_tiny_unet(), cfg)
    _randomize(model)
    model.save_pretrained(tmp_path / "peft")
    adapter = read_adapter(tmp_path / "peft")
    assert adapter.source_format == "peft"
    _assert_deltas(adapter, _peft_deltas(model))
    # and back: our peft folder loads into peft with identical deltas
    write_adapter(adapter, tmp_path / "ours", "peft")
    from peft import PeftModel

    again = PeftModel.from_pretrained(_tiny_unet(), tmp_path / "ours")
    ref = _peft_deltas(model)
    for k, d in _peft_deltas(again).items():
        torch.testing.assert_close(d, ref[k], rtol=1e-5, atol=1e-6)


def test_reads_diffusers_save_lora_weights_and_kohya_conversion(tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = _tiny_unet()
    cfg = LoraConfig(r=4, lora_alpha=2, target_modules=TARGETS, alpha_pattern={"proj_in": 5})
    unet.add_adapter(cfg)
    _randomize(unet)
    deltas = _peft_deltas(unet)
    peft_sd = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "d", unet_lora_layers=peft_sd,
                                              unet_lora_adapter_metadata=cfg.to_dict())
    adapter = read_adapter(tmp_path / "d")  # folder holding pytorch_lora_weights.safetensors
    assert adapter.source_format == "diffusers"
    _assert_deltas(adapter, deltas)
    # diffusers' conversions without alphas (scale 1): ".lora.down.weight" and kohya names
    unit = {k: d / (2 / 4) if not k.endswith("proj_in") else d / (5 / 4) for k, d in deltas.items()}
    old = {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(peft_sd).items()}
    assert any(".lora.down.weight" in k for k in old)
    _assert_deltas(adapter_from_state_dict(old), unit)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    write_safetensors(tmp_path / "k.safetensors", kohya)
    got = read_adapter(tmp_path / "k.safetensors")
    assert got.source_format == "kohya"
    _assert_deltas(got, unit)


def test_reads_old_attention_processor_layout():
    g = torch.Generator().manual_seed(0)
    d, u = torch.randn(2, 320, generator=g), torch.randn(320, 2, generator=g)
    sd = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": d,
          "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": u,
          "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight": torch.randn(2, 768, generator=g),
          "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight": torch.randn(768, 2, generator=g)}
    a = adapter_from_state_dict(sd)
    assert set(a.modules) == {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                              "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"}


# ----------------------------------------------------------------- malformed adapters

K = "lora_unet_down_blocks_0_attentions_0_proj_in"


def _pair(r=4, o=320, i=320):
    return torch.randn(r, i, 1, 1), torch.randn(o, r, 1, 1)


def _bad(kind):
    d, u = _pair()
    base = {f"{K}.lora_down.weight": d, f"{K}.lora_up.weight": u, f"{K}.alpha": torch.tensor(4.0)}
    if kind == "missing up":
        del base[f"{K}.lora_up.weight"]
    elif kind == "missing down":
        del base[f"{K}.lora_down.weight"]
    elif kind == "rank mismatch":
        base[f"{K}.lora_up.weight"] = torch.randn(320, 3, 1, 1)
    elif kind == "zero rank":
        base[f"{K}.lora_down.weight"], base[f"{K}.lora_up.weight"] = torch.randn(0, 320, 1, 1), torch.randn(320, 0, 1, 1)
    elif kind == "NaN":
        base[f"{K}.lora_up.weight"][0, 0, 0, 0] = float("nan")
    elif kind == "Inf":
        base[f"{K}.lora_down.weight"][1, 2, 0, 0] = float("inf")
    elif kind == "alpha Inf":
        base[f"{K}.alpha"] = torch.tensor(float("inf"))
    elif kind == "alpha zero":
        base[f"{K}.alpha"] = torch.tensor(0.0)
    elif kind == "alpha not scalar":
        base[f"{K}.alpha"] = torch.ones(3)
    elif kind == "mixed formats":
        base["unet.down_blocks.0.attentions.0.proj_out.lora_A.weight"] = torch.randn(4, 320)
    elif kind == "unknown module":
        base["lora_unet_banana_7.lora_down.weight"] = torch.randn(4, 8)
        base["lora_unet_banana_7.lora_up.weight"] = torch.randn(8, 4)
    elif kind == "not a LoRA key":
        base["model.diffusion_model.out.2.weight"] = torch.randn(4, 320, 3, 3)
    elif kind == "duplicate module":
        base["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = d.clone()
        base["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = u.clone()
    elif kind == "DoRA":  # DoRA is supported (tests/test_lycoris_formats.py); a wrongly shaped magnitude is not
        base[f"{K}.dora_scale"] = torch.ones(7, 1)
    elif kind == "LoHa":
        base[f"{K}.hada_w1_a"] = torch.ones(320, 4)
    elif kind == "integer weights":
        base[f"{K}.lora_down.weight"] = torch.ones(4, 320, 1, 1, dtype=torch.int32)
    elif kind == "up kernel 3x3":
        base[f"{K}.lora_up.weight"] = torch.randn(320, 4, 3, 3)
    elif kind == "3-D tensor":
        base[f"{K}.lora_down.weight"] = torch.randn(4, 320, 1)
    elif kind == "dims differ":
        base[f"{K}.lora_up.weight"] = torch.randn(320, 4)
    return base


BAD = {
    "missing up": "no lora_up (missing up/down partner)",
    "missing down": "no lora_down (missing up/down partner)",
    "rank mismatch": "rank mismatch",
    "zero rank": "zero rank",
    "NaN": "contains NaN",
    "Inf": "contains Inf",
    "alpha Inf": "NaN/Inf",
    "alpha zero": "alpha is 0",
    "alpha not scalar": "must be a scalar",
    "mixed formats": "mixed LoRA key formats",
    "unknown module": "does not name a known",
    "not a LoRA key": "not a LoRA tensor name",
    "duplicate module": "both address unet.down_blocks.0.attentions.0.proj_in",
    "DoRA": "dora_scale: shape (7, 1) fits neither",
    "LoHa": "LoHa",
    "integer weights": "not floating point",
    "up kernel 3x3": "kernel must be 1×1",
    "3-D tensor": "neither 2-D",
    "dims differ": "4-D",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_adapter_errors_name_file_and_key(tmp_path, kind):
    p = tmp_path / "bad.safetensors"
    write_safetensors(p, _bad(kind))
    with pytest.raises(AdapterFileError) as info:
        read_adapter(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: ") and BAD[kind] in msg and "\n" not in msg, msg


def test_empty_and_directory_inputs(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(AdapterFileError, match="empty file"):
        read_adapter(tmp_path / "empty.safetensors")
    write_safetensors(tmp_path / "none.safetensors", {})
    with pytest.raises(AdapterFileError, match="no tensors"):
        read_adapter(tmp_path / "none.safetensors")
    (tmp_path / "dir").mkdir()
    with pytest.raises(AdapterFileError, match="is a directory"):
        read_adapter(tmp_path / "dir")


def test_peft_config_problems(tmp_path):
    src = LoraAdapter({"unet.conv_in": LoraModule(torch.randn(2, 4, 3, 3), torch.randn(320, 2, 1, 1), 2.0)})
    write_adapter(src, tmp_path / "p", "peft")
    cfg_path = tmp_path / "p" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = 8
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(AdapterFileError, match="rank mismatch: adapter config says r=8"):
        read_adapter(tmp_path / "p")
    cfg.update(r=2, use_dora=True)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(AdapterFileError, match="DoRA"):
        read_adapter(tmp_path / "p")
    cfg_path.write_text("{not json")
    with pytest.raises(AdapterFileError, match="adapter_config.json"):
        read_adapter(tmp_path / "p")


def test_architecture_checks_on_read(tmp_path):
    sd1 = random_adapter("sd1", every=15)
    write_adapter(sd1, tmp_path / "sd1.safetensors")
    with pytest.raises(ArchitectureMismatchError) as info:
        read_adapter(tmp_path / "sd1.safetensors", expected_arch="sdxl")
    assert "expected sdxl, found sd1" in str(info.value)
    assert read_adapter(tmp_path / "sd1.safetensors", expected_arch="sd1").architecture == "sd1"
    # a module that exists in no SDXL layout (4th down level) with SDXL expected: names the key
    g = torch.Generator().manual_seed(0)
    sd = {"lora_unet_down_blocks_3_resnets_0_conv1.lora_down.weight": torch.randn(2, 1280, 3, 3, generator=g),
          "lora_unet_down_blocks_3_resnets_0_conv1.lora_up.weight": torch.randn(1280, 2, 1, 1, generator=g)}
    write_safetensors(tmp_path / "other.safetensors", sd)
    with pytest.raises(AdapterFileError, match="lora_unet_down_blocks_3_resnets_0_conv1.*does not exist in sdxl"):
        read_adapter(tmp_path / "other.safetensors", expected_arch="sdxl")
    # right name, wrong width (SDXL-sized cross attention in an SD1 name): unknown arch, error if sd1 expected
    sd = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(2, 2048),
          "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(320, 2)}
    write_safetensors(tmp_path / "wide.safetensors", sd)
    assert read_adapter(tmp_path / "wide.safetensors").architecture is None
    with pytest.raises(AdapterFileError, match="does not match sd1 weight"):
        read_adapter(tmp_path / "wide.safetensors", expected_arch="sd1")


def test_alpha_semantics_match_closed_form():
    """ΔW = alpha/r · up·down (sd-scripts LoRAModule.forward: scale = alpha / lora_dim)."""
    g = torch.Generator().manual_seed(0)
    d, u = torch.randn(4, 10, generator=g), torch.randn(6, 4, generator=g)
    sd = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": d,
          "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": u,
          "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0, dtype=torch.float16)}
    m = adapter_from_state_dict(sd).modules["text_encoder.text_model.encoder.layers.0.mlp.fc1"]
    torch.testing.assert_close(m.delta_weight(), (u @ d) * 0.25)
    assert math.isclose(m.scale, 0.25)


def test_keys_of_two_architectures_in_one_file(tmp_path):
    sd1 = adapter_to_state_dict(random_adapter("sd1", every=60), "kohya", "sd1")
    sdxl = adapter_to_state_dict(random_adapter("sdxl", every=200), "kohya", "sdxl", unet_names="diffusers")
    sdxl = {k: v for k, v in sdxl.items() if k.startswith("lora_unet_") and "down_blocks_3" not in k}
    write_safetensors(tmp_path / "mix.safetensors", {**sd1, **sdxl})
    assert read_adapter(tmp_path / "mix.safetensors").architecture is None
    with pytest.raises(AdapterFileError, match="cannot determine the base architecture: no supported"):
        read_adapter(tmp_path / "mix.safetensors", require_known_arch=True)


def test_reads_peft_dora_save_pretrained_on_the_output_axis(tmp_path):
    """A peft DoRA adapter (use_dora=True) read from its save_pretrained folder — it was refused — applies as peft's
    merge_and_unload does. peft stores a Conv2d's magnitude as (1, out, 1, 1): it is per output channel (it was
    read as an input-axis scale: 77 % off where in == out, refused where in != out). ΔW is kept small so that
    ComfyUI's DoRA convention (the norm of the weight before the update, which ours follows) is within 1e-5 of peft's."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_unet(), LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "conv1", "conv2"],
                                                    use_dora=True, init_lora_weights=False))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(1e-5)
            elif "lora_magnitude_vector" in name:
                p.mul_(torch.linspace(0.5, 2.0, p.numel())[torch.randperm(p.numel(), generator=g)].reshape(p.shape))
    base = {n: m.weight.detach().clone() for n, m in _tiny_unet().named_modules() if hasattr(m, "weight") and m.weight is not None}
    model.save_pretrained(tmp_path / "dora")
    merged = dict(model.merge_and_unload().named_modules())
    adapter = read_adapter(tmp_path / "dora")
    shapes = {}
    for key, m in adapter.modules.items():
        path = key[len("unet."):]
        assert m.dora_scale is not None and m.dora_scale.shape[0] == base[path].shape[0]
        shapes[len(base[path].shape), base[path].shape[0] == base[path].shape[1]] = True
        torch.testing.assert_close(m.apply_to(base[path].clone(), 1.0), merged[path].weight.detach(), rtol=0, atol=1e-5)
    assert set(shapes) == {(2, True), (4, True), (4, False)}  # Linear, conv in == out, conv in != out


def test_a_one_dimensional_dora_scale_is_refused_by_name(tmp_path, capsys):
    """LyCORIS' dora_scale is (out, 1, …) or (1, in, …); a 1-D one was accepted, then crashed the fuse (or gave
    nonsense on a square weight). ComfyUI's weight_decompose fails on it too."""
    from lcm_lora.cli.main import main

    K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "dora1d.safetensors"
    write_safetensors(path, {f"{K}.lora_down.weight": torch.randn(4, 320), f"{K}.lora_up.weight": torch.randn(320, 4),
                             f"{K}.dora_scale": torch.rand(320)})
    with pytest.raises(AdapterFileError, match=r"dora_scale: shape \(320,\) fits neither the output"):
        read_adapter(path)
    assert main(["inspect", str(path)]) == 2 and "dora_scale" in capsys.readouterr().err


def test_comfy_names_of_an_adapter_that_fits_several_architectures(tmp_path, capsys):
    """An adapter fitting SD1 and SD2 (a few modules) was named with the SDXL block numbering, which ComfyUI skips
    silently (SD1's up_blocks.0 upsampler is output_blocks.2.1, SDXL's 2.2): it takes the candidates' common
    numbering; where they differ (only that upsampler: SD1/SD2/SDXL/SSD-1B) it asks for --arch."""
    from lcm_lora.cli.main import main
    from lcm_lora.lcm_core.lora.keys import canonical_to_ldm

    table = architecture_modules("sd1")
    g = torch.Generator().manual_seed(0)

    def lora_file(path, keys):
        sd = {}
        for k in keys:
            shape = table[k].shape
            name = "lora_unet_" + k[len("unet."):].replace(".", "_")
            sd[f"{name}.lora_down.weight"] = torch.randn(4, *shape[1:], generator=g)
            sd[f"{name}.lora_up.weight"] = torch.randn(shape[0], 4, *([1, 1] if len(shape) == 4 else []), generator=g)
        write_safetensors(path, sd)

    keys = ["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "unet.up_blocks.0.upsamplers.0.conv"]
    lora_file(tmp_path / "sd12.safetensors", keys)
    assert main(["convert", str(tmp_path / "sd12.safetensors"), "--to", "comfy", "-o", str(tmp_path / "c.safetensors")]) == 0
    written = {k.rsplit(".lora_", 1)[0] for k in read_safetensors(tmp_path / "c.safetensors")[0] if ".lora_" in k}
    assert written == {canonical_to_ldm(k, "sd1") for k in keys}
    assert "diffusion_model.output_blocks.2.1.conv" in written
    capsys.readouterr()
    lora_file(tmp_path / "any.safetensors", ["unet.up_blocks.0.upsamplers.0.conv"])
    assert main(["convert", str(tmp_path / "any.safetensors"), "--to", "comfy", "-o", str(tmp_path / "a.safetensors")]) == 2
    assert "names of its UNet modules differ: give the architecture" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "any.safetensors"), "--to", "comfy", "--arch", "sdxl",
                 "-o", str(tmp_path / "a.safetensors")]) == 0
    assert any("output_blocks.2.2.conv" in k for k in read_safetensors(tmp_path / "a.safetensors")[0])
    assert main(["convert", str(tmp_path / "sd12.safetensors"), "--to", "comfy", "--arch", "sdxl",
                 "-o", str(tmp_path / "x.safetensors")]) == 2  # --arch settles an ambiguity, never overrules
