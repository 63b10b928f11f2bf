"""Tiny SD-like teachers with random weights, built entirely in code (tests, demo, CPU benchmark).

Folder format (a diffusers pipeline folder; everything local, nothing from a hub)::

    <folder>/
      unet/           UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
      text_encoder/   transformers CLIPTextModel (tiny)
      tokenizer/      CLIPTokenizer: vocab.json + merges.txt generated here (byte-level CLIP BPE
                      alphabet, i.e. every ASCII letter/digit/punctuation, plus whole-word merges for
                      a small English word list), tokenizer_config.json
      scheduler/      DDPMScheduler config: SD's scaled_linear betas 0.00085 -> 0.012, 1000 steps, epsilon
      vae/            optional tiny AutoencoderKL (3 image channels -> ``latent_channels``; 2x downsampling)
      text_encoder_2/ tokenizer_2/   only for ``variant="sdxl"`` (CLIPTextModelWithProjection, pad "!")
      model_index.json               only with ``vae/`` (so ``StableDiffusion[XL]Pipeline.from_pretrained`` loads it)
      lcm_lora_tiny.json             {"variant", "pixel_space", "image_channels", "image_size", "latent_size"}

A folder **without** ``vae/`` is a pixel-space model: the "latents" the UNet sees are the images
scaled to [-1, 1] (``x = 2 * pixel - 1``), with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels, and
the UNet's ``in_channels`` equals the image channel count. The trainer (``training/teacher.py``)
and the demo read this convention from the absence of ``vae/`` alone; ``lcm_lora_tiny.json`` is
informational.

Use :func:`build_tiny_teacher` to write such a folder; any diffusers-format folder with the same
layout (e.g. a teacher the demo trained and saved with ``save_pretrained``) loads the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# A few words get whole-word tokens; anything else is spelled out in byte-level characters,
# so every ASCII caption tokenizes.
TINY_WORDS = (
    "a an the of and with on in at to photo image picture drawing digit number "
    "zero one two three four five six seven eight nine ten "
    "red green blue yellow black white gray grey orange purple pink brown dark light bright "
    "small large big tiny left right top bottom center middle "
    "circle square triangle cross ring line dot blob star shape stripe stripes checker noise "
    "cat dog house tree car face flower sky sea mountain"
).split()

TINY_MAX_LENGTH = 16
TINY_TEXT_DIM = 32
TINY_POOLED_DIM = 32  # text_encoder_2 projection (sdxl variant)
TINY_TIME_EMBED_DIM = 8  # sdxl variant: addition_time_embed_dim (6 time ids)


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2 / CLIP byte-level BPE (Radford et al. 2019)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def tiny_clip_vocab(words=TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) in CLIP's layout: 256 byte chars, the same with ``</w>``, merges, specials."""
    alphabet = [_bytes_to_unicode()[b] for b in range(256)]
    tokens = alphabet + [c + "</w>" for c in alphabet]
    known = set(tokens)
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in known:
                merges.append(f"{current} {piece}")
                tokens.append(merged)
                known.add(merged)
            current = merged
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tiny_tokenizer(folder: str | os.PathLike, model_max_length: int = TINY_MAX_LENGTH, pad_token: str = "<|endoftext|>"):
    """Write vocab.json / merges.txt / tokenizer_config.json and return the loaded ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2), encoding="utf-8"
    )
    return CLIPTokenizer.from_pretrained(folder)


def tiny_unet_config(channels: int = 4, sample_size: int = 8, variant: str = "sd", block_out_channels=(32, 64)) -> dict:
    """``UNet2DConditionModel`` kwargs of an SD-shaped UNet (cross-attention, resnets, up/down samplers)."""
    config = dict(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    if variant == "sdxl":
        # SDXL conditioning: two text encoders concatenated, pooled text + 6 size/crop ids.
        config.update(
            cross_attention_dim=2 * TINY_TEXT_DIM,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TINY_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=TINY_POOLED_DIM + 6 * TINY_TIME_EMBED_DIM,
        )
    return config


def _tiny_text_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int, max_length: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=2 * TINY_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        projection_dim=TINY_POOLED_DIM,
        hidden_act="quick_gelu",
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def build_tiny_teacher(
    folder: str | os.PathLike,
    *,
    image_channels: int = 3,
    image_size: int = 16,
    with_vae: bool = True,
    latent_channels: int = 4,
    variant: str = "sd",
    block_out_channels=(32, 64),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a random-weight tiny teacher folder (format in the module docstring) and return its path.

    ``with_vae=False`` gives a pixel-space model whose UNet works directly on ``image_channels``
    channels at ``image_size``; with a VAE the UNet works on ``latent_channels`` at ``image_size // 2``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ..lcm_core.errors import ConfigError, OutputExistsError
    from .teacher_common import sd_noise_scheduler

    if image_channels not in (1, 3, 4):
        raise ConfigError("build_tiny_teacher", f"image_channels must be 1, 3 or 4, got {image_channels}")
    if variant not in ("sd", "sdxl"):
        raise ConfigError("build_tiny_teacher", f"variant must be 'sd' or 'sdxl', got {variant!r}")
    if with_vae and image_channels != 3:
        raise ConfigError("build_tiny_teacher", "a VAE teacher takes RGB images (image_channels=3)")
    if image_size % 4:
        raise ConfigError("build_tiny_teacher", f"image_size must be a multiple of 4, got {image_size}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(folder, "already exists and is not empty; pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(folder / "tokenizer")
    ids = dict(pad_id=tokenizer.pad_token_id, bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id)
    text_config = _tiny_text_config(len(tokenizer), max_length=TINY_MAX_LENGTH, **ids)
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    if variant == "sdxl":
        tokenizer_2 = write_tiny_tokenizer(folder / "tokenizer_2", pad_token="!")
        ids2 = dict(pad_id=tokenizer_2.pad_token_id, bos_id=tokenizer_2.bos_token_id, eos_id=tokenizer_2.eos_token_id)
        CLIPTextModelWithProjection(_tiny_text_config(len(tokenizer_2), max_length=TINY_MAX_LENGTH, **ids2)).save_pretrained(
            folder / "text_encoder_2"
        )

    latent_size = image_size // 2 if with_vae else image_size
    unet_channels = latent_channels if with_vae else image_channels
    unet = UNet2DConditionModel(**tiny_unet_config(unet_channels, latent_size, variant, block_out_channels))
    unet.save_pretrained(folder / "unet")
    sd_noise_scheduler().save_pretrained(folder / "scheduler")

    if with_vae:
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=image_size,
        )
        vae.save_pretrained(folder / "vae")
        write_model_index(folder, variant)

    info = dict(
        variant=variant,
        pixel_space=not with_vae,
        image_channels=image_channels,
        image_size=image_size,
        latent_size=latent_size,
        latent_channels=unet_channels,
    )
    (folder / "lcm_lora_tiny.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    from ..lcm_core.atomic_write import apply_umask_modes

    apply_umask_modes(folder)  # safetensors writes 0600 files whatever the umask
    return folder


def write_model_index(folder: str | os.PathLike, variant: str = "sd") -> None:
    """``model_index.json`` so ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline.from_pretrained`` load the folder."""
    import diffusers

    none = [None, None]
    common = {
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if variant == "sdxl":
        index = {
            "_class_name": "StableDiffusionXLPipeline",
            **common,
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
            "image_encoder": none,
            "feature_extractor": none,
        }
    else:
        index = {
            "_class_name": "StableDiffusionPipeline",
            **common,
            "safety_checker": none,
            "feature_extractor": none,
            "image_encoder": none,
            "requires_safety_checker": False,
        }
    Path(folder, "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


_COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "white": (240, 240, 240), "black": (15, 15, 15)}
_SHAPES = ("circle", "square", "cross", "ring")


def write_tiny_dataset(folder: str | os.PathLike, n: int = 32, size: int = 16, channels: int = 3, seed: int = 0,
                       captions: str = "txt") -> Path:
    """Write ``n`` synthetic images (a coloured shape on a dark or light background) with captions
    like "a red circle"; ``captions``: ``txt`` (one .txt per image) or ``jsonl`` (``metadata.jsonl``)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    rows = []
    for i in range(n):
        color_name = list(_COLORS)[rng.integers(len(_COLORS))]
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        cx, cy = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.18, size * 0.3)
        if shape == "circle":
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif shape == "ring":
            d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            mask = (d <= r) & (d >= r * 0.55)
        elif shape == "square":
            mask = (abs(xx - cx) <= r * 0.85) & (abs(yy - cy) <= r * 0.85)
        else:
            mask = ((abs(xx - cx) <= r * 0.3) & (abs(yy - cy) <= r)) | ((abs(yy - cy) <= r * 0.3) & (abs(xx - cx) <= r))
        background = 235 if color_name == "black" else 25
        image = np.full((size, size, 3), background, dtype=np.float64)
        image[mask] = _COLORS[color_name]
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        if channels == 1:
            pil = Image.fromarray(image).convert("L")
        elif channels == 4:
            pil = Image.fromarray(image).convert("RGBA")
        else:
            pil = Image.fromarray(image)
        name = f"img_{i:04d}.png"
        pil.save(folder / name)
        caption = f"a {color_name} {shape}"
        if captions == "jsonl":
            rows.append(json.dumps({"file_name": name, "text": caption}))
        else:
            (folder / f"img_{i:04d}.txt").write_text(caption + "\n", encoding="utf-8")
    if captions == "jsonl":
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
