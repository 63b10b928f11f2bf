"""Full-size model configs of the supported base architectures, written in code (no hub).

UNet configs are ``diffusers.UNet2DConditionModel`` keyword arguments, text encoder
configs are ``transformers.CLIPTextConfig`` keyword arguments, copied from the
published ``config.json`` files of runwayml/stable-diffusion-v1-5,
stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0 and
segmind/SSD-1B (SSD-1B's block depths cross-checked against ComfyUI's
``model_detection.py``: transformer depth [0,0,2,2,4,4], output [0,0,0,1,1,2,10,4,4],
mid block without attention).

Architectures: ``sd1`` (SD 1.x), ``sd2`` (SD 2.x, 768-v and 512), ``sdxl`` (SDXL base),
``ssd1b`` (Segmind SSD-1B, a distilled SDXL).
"""
from __future__ import annotations

import copy

ARCHITECTURES = ("sd1", "sd2", "sdxl", "ssd1b")

_SD1_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    use_linear_projection=False,
)

_SD2_UNET = dict(
    _SD1_UNET,
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    upcast_attention=True,
)

_SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

_SSD1B_UNET = dict(
    _SDXL_UNET,
    transformer_layers_per_block=(1, 2, 4),
    reverse_transformer_layers_per_block=((4, 4, 10), (2, 1, 1), (1, 1, 1)),
    mid_block_type="UNetMidBlock2D",
)

_CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower (SD1.x, SDXL text_encoder)
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

_OPENCLIP_H = dict(  # SD 2.x text encoder (OpenCLIP ViT-H/14, penultimate layer kept: 23 layers)
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)

_OPENCLIP_BIGG = dict(  # SDXL text_encoder_2 (OpenCLIP ViT-bigG/14, CLIPTextModelWithProjection)
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)

_UNETS = {"sd1": _SD1_UNET, "sd2": _SD2_UNET, "sdxl": _SDXL_UNET, "ssd1b": _SSD1B_UNET}
_TEXT_ENCODERS = {
    "sd1": {"text_encoder": _CLIP_L},
    "sd2": {"text_encoder": _OPENCLIP_H},
    "sdxl": {"text_encoder": _CLIP_L, "text_encoder_2": _OPENCLIP_BIGG},
    "ssd1b": {"text_encoder": _CLIP_L, "text_encoder_2": _OPENCLIP_BIGG},
}
# SD VAE latent scaling factors (latents = vae.encode(x) * scaling_factor).
VAE_SCALING_FACTOR = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "ssd1b": 0.13025}
# Native training resolution (pixels).
NATIVE_RESOLUTION = {"sd1": 512, "sd2": 768, "sdxl": 1024, "ssd1b": 1024}


def _check(arch: str) -> None:
    if arch not in _UNETS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def unet_config(arch: str) -> dict:
    """``UNet2DConditionModel(**unet_config(arch))`` builds the full-size UNet."""
    _check(arch)
    return copy.deepcopy(_UNETS[arch])


def text_encoder_configs(arch: str) -> dict[str, dict]:
    """Component name → ``CLIPTextConfig`` kwargs (``text_encoder_2`` is a ``CLIPTextModelWithProjection``)."""
    _check(arch)
    return copy.deepcopy(_TEXT_ENCODERS[arch])


def build_unet(arch: str, device: str = "meta"):
    """Instantiate the full-size diffusers UNet (on the meta device by default: no memory)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**unet_config(arch))


def build_text_encoders(arch: str, device: str = "meta") -> dict:
    """Instantiate the full-size transformers text encoders (meta device by default)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    models = {}
    with torch.device(device):
        for name, cfg in text_encoder_configs(arch).items():
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            models[name] = cls(CLIPTextConfig(**cfg))
    return models
