"""Packing a teacher into one safetensors file and unpacking it into a diffusers folder."""
import json

import pytest
import torch

from lcm_lora.demo import teacher_assets as A
from lcm_lora.lcm_core.errors import LcmLoraError
from lcm_lora.lcm_core.safetensors_io import write_safetensors
from lcm_lora.training.tiny_models import build_tiny_teacher


def _outputs(folder):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    te = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok(["a handwritten digit 7", ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    with torch.no_grad():
        emb = te(ids)[0]
        return emb, unet(x, torch.tensor([10, 900]), encoder_hidden_states=emb).sample


def test_pack_and_materialize_round_trip(tmp_path):
    src = build_tiny_teacher(tmp_path / "src", image_channels=1, image_size=16, with_vae=False, seed=3)
    asset = A.pack_teacher(src, tmp_path / "t.safetensors", reproduce="python make.py", dtype=torch.float32)
    out = A.materialize_teacher(tmp_path / "out", asset)
    for a, b in zip(_outputs(src), _outputs(out)):
        torch.testing.assert_close(a, b)  # fp32 packing is lossless
    assert not (out / "vae").exists()
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["beta_schedule"] == "scaled_linear"
    _, meta = A.read_teacher_asset(asset)
    assert meta["reproduce"] == "python make.py"
    with pytest.raises(LcmLoraError, match="exists"):
        A.materialize_teacher(tmp_path / "out", asset)  # never overwrites unasked


def test_fp16_packing_is_close(tmp_path):
    src = build_tiny_teacher(tmp_path / "src", image_channels=1, image_size=16, with_vae=False, seed=4)
    out = A.materialize_teacher(tmp_path / "out", A.pack_teacher(src, tmp_path / "t.safetensors"))
    for a, b in zip(_outputs(src), _outputs(out)):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


def test_bad_assets_are_rejected(tmp_path):
    with pytest.raises(LcmLoraError, match="not found"):
        A.read_teacher_asset(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"x": torch.zeros(2)}, {"format": "something else"})
    with pytest.raises(LcmLoraError, match="not a packed demo teacher"):
        A.read_teacher_asset(other)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(b"\xff" * 12)
    with pytest.raises(LcmLoraError, match="trunc.safetensors"):
        A.read_teacher_asset(trunc)


def test_shipped_teacher_is_present_small_and_reproducible():
    assert A.DEFAULT_ASSET.is_file(), "demo/assets/digits_teacher.safetensors must ship with the package"
    assert A.DEFAULT_ASSET.stat().st_size < 8_000_000
    _, meta = A.read_teacher_asset(A.DEFAULT_ASSET)
    assert meta["reproduce"].startswith("python scripts/train_demo_teacher.py")
    cfg = json.loads(meta["unet_config"])
    assert cfg["in_channels"] == 1 and cfg["_class_name"] == "UNet2DConditionModel"
