"""lcm_core.fuse against peft ``merge_and_unload`` (weights), a peft-injected tiny diffusers UNet
(outputs), and the Tucker/LoCon operator applied to an input (closed form)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

from lcm_lora.lcm_core.errors import AdapterFileError, ConfigError  # noqa: E402
from lcm_lora.lcm_core.fuse import fuse_into_module, fuse_into_weights, match_adapter_keys  # noqa: E402
from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule  # noqa: E402


def _peft_adapters(model, prefix="base_model.model.", component="unet"):
    out: dict[str, dict[str, LoraModule]] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for ad in layer.lora_A:
            out.setdefault(ad, {})[f"{component}.{name[len(prefix):]}"] = LoraModule(
                down=layer.lora_A[ad].weight.detach().clone(),
                up=layer.lora_B[ad].weight.detach().clone(),
                alpha=float(layer.lora_alpha[ad]),
            )
    return {ad: LoraAdapter(modules=mods) for ad, mods in out.items()}


def test_fuse_into_weights_matches_peft_merge_and_unload(tiny_torch_model):
    torch.manual_seed(0)
    base = tiny_torch_model()
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["lin1", "lin2", "conv3", "conv1"], init_lora_weights=False),
        adapter_name="style",
    )
    model.add_adapter("lcm", LoraConfig(r=6, lora_alpha=3, target_modules=["lin1", "conv3"], init_lora_weights=False))
    adapters = _peft_adapters(model)
    strengths = {"style": 0.8, "lcm": -1.2}
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for ad, s in strengths.items():
                layer.set_scale(ad, s)  # scaling = s · alpha / r
    merged_model = model.merge_and_unload(adapter_names=["style", "lcm"])
    reference = merged_model.state_dict()

    weights = {k: v.clone() for k, v in base_sd.items()}
    before = {k: v.clone() for k, v in weights.items()}
    fused = fuse_into_weights(
        weights, [adapters["style"], adapters["lcm"]], [strengths["style"], strengths["lcm"]],
        key_map=lambda k: k[len("unet."):],
    )
    assert set(fused) == set(weights)
    for k in weights:
        assert torch.equal(weights[k], before[k])  # inputs untouched
        assert torch.allclose(fused[k], reference[k], rtol=1e-5, atol=1e-6), k
    assert fused["lin1.bias"] is weights["lin1.bias"]
    assert not torch.equal(fused["lin1.weight"], weights["lin1.weight"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fuse_low_precision_is_fp32_sum_cast_once(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 12, generator=g).to(dtype)
    mods = [LoraModule(torch.randn(r, 12, generator=g).to(dtype), torch.randn(16, r, generator=g).to(dtype), alpha=a)
            for r, a in [(4, 2.0), (3, None)]]
    adapters = [LoraAdapter(modules={"unet.x": m}) for m in mods]
    out = fuse_into_weights({"unet.x.weight": w}, adapters, [0.5, -0.25])
    expected = w.float() + 0.5 * 0.5 * (mods[0].up.float() @ mods[0].down.float()) - 0.25 * (mods[1].up.float() @ mods[1].down.float())
    assert out["unet.x.weight"].dtype == dtype
    assert torch.equal(out["unet.x.weight"], expected.to(dtype))


def test_fuse_tucker_and_locon_match_operator():
    """conv(x, W') == conv(x, W) + λ · up(mid(down(x))) for Tucker and LoCon 3×3."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    tucker = LoraModule(torch.randn(2, 4, 1, 1, generator=g, dtype=torch.float64),
                        torch.randn(6, 2, 1, 1, generator=g, dtype=torch.float64), alpha=1.0,
                        mid=torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64))
    locon = LoraModule(torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64),
                       torch.randn(6, 3, 1, 1, generator=g, dtype=torch.float64), alpha=6.0)
    x = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    for m, lam in [(tucker, 0.7), (locon, -1.5)]:
        out = fuse_into_weights({"unet.c": w}, [LoraAdapter(modules={"unet.c": m})], [lam])["unet.c"]
        if m.mid is not None:
            branch = F.conv2d(F.conv2d(F.conv2d(x, m.down), m.mid, padding=1), m.up)
        else:
            branch = F.conv2d(F.conv2d(x, m.down, padding=1), m.up)
        ref = F.conv2d(x, w, padding=1) + lam * m.scale * branch
        # the fused result is cast back to the weight dtype (float64 here) after a float32 sum
        assert torch.allclose(F.conv2d(x, out, padding=1), ref, rtol=1e-5, atol=1e-4)


def test_fuse_linear_lora_into_conv1x1_weight():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 6, 1, 1, generator=g)
    m = LoraModule(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g))
    out = fuse_into_weights({"unet.p": w}, [LoraAdapter(modules={"unet.p": m})], [1.0])["unet.p"]
    assert out.shape == w.shape
    assert torch.allclose(out[:, :, 0, 0], w[:, :, 0, 0] + m.up @ m.down, atol=1e-6)


def test_fuse_errors_and_unmatched():
    g = torch.Generator().manual_seed(4)
    w = {"unet.a.weight": torch.randn(5, 6, generator=g)}
    bad = LoraAdapter(modules={"unet.a": LoraModule(torch.randn(2, 7, generator=g), torch.randn(5, 2, generator=g))})
    with pytest.raises(AdapterFileError) as e:
        fuse_into_weights(w, [bad], [1.0], names=["style.safetensors"])
    assert "unet.a" in str(e.value) and "style.safetensors" in str(e.value) and "(5, 7)" in str(e.value)

    extra = LoraAdapter(modules={
        "unet.a": LoraModule(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)),
        "unet.missing": LoraModule(torch.randn(2, 6, generator=g), torch.randn(5, 2, generator=g)),
    })
    matched, unmatched = match_adapter_keys(w, [extra])
    assert matched == {"unet.a": "unet.a.weight"} and unmatched == ["unet.missing"]
    out = fuse_into_weights(w, [extra], [1.0])
    assert set(out) == set(w)
    with pytest.raises(AdapterFileError, match="unet.missing"):
        fuse_into_weights(w, [extra], [1.0], strict=True)
    with pytest.raises(ConfigError):
        fuse_into_weights(w, [extra], [1.0, 2.0])
    with pytest.raises(ConfigError):
        fuse_into_weights(w, [extra], [float("inf")])


def test_fuse_into_module_matches_peft_injected_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    cfg = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    )
    unet = diffusers.UNet2DConditionModel(**cfg).eval()
    plain = diffusers.UNet2DConditionModel(**cfg).eval()
    plain.load_state_dict(unet.state_dict())
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
               "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=targets, init_lora_weights=False))
    adapter = _peft_adapters(unet, prefix="")["default"]
    assert len(adapter) > 20
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([10])
    ctx = torch.randn(1, 3, 8)
    with torch.no_grad():
        ref = unet(x, t, ctx).sample
        assert not torch.allclose(plain(x, t, ctx).sample, ref, rtol=1e-3, atol=1e-4)  # the LoRA matters
        fused = fuse_into_module(plain, adapter, strength=1.0, component="unet", strict=True)
        got = plain(x, t, ctx).sample
    assert sorted(fused) == sorted(adapter.modules)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert fuse_into_module(plain, LoraAdapter(modules={"text_encoder.x": adapter.modules[fused[0]]})) == []


def test_fuse_into_module_finds_text_encoder_modules_of_any_transformers_layout():
    """Canonical text-encoder keys are ``text_encoder.text_model.…``; transformers ≥ 5's CLIPTextModel has no
    ``text_model`` level (``keys.module_name_in``): the fuse must still reach them, as peft's injection does."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPTextConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    for cls in (transformers.CLIPTextModel, transformers.CLIPTextModelWithProjection):
        model = cls(cfg).eval()
        reference = cls(cfg).eval()
        reference.load_state_dict(model.state_dict())
        reference = get_peft_model(reference, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "fc1"],
                                                        init_lora_weights=False))
        modules = {}
        for name, layer in reference.named_modules():
            if isinstance(layer, LoraLayer):
                path = name[len("base_model.model."):]
                path = path if path.startswith("text_model.") else "text_model." + path
                modules[f"text_encoder.{path}"] = LoraModule(down=layer.lora_A["default"].weight.detach().clone(),
                                                             up=layer.lora_B["default"].weight.detach().clone(), alpha=4.0)
        assert len(modules) == 4
        ids = torch.tensor([[1, 5, 7, 2]])
        fused = fuse_into_module(model, LoraAdapter(modules=modules), component="text_encoder", strict=True)
        assert sorted(fused) == sorted(modules)
        with torch.no_grad():
            torch.testing.assert_close(model(ids).last_hidden_state, reference(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
