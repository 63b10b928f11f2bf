"""The frozen teacher: UNet, text encoder(s), tokenizer(s), optional VAE and the noise schedule.

Loads a diffusers folder (``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
optional ``vae/``, ``text_encoder_2/`` + ``tokenizer_2/`` for SDXL/SSD-1B) with
``local_files_only=True``, or a single-file checkpoint through :mod:`.single_file`.
A folder without ``vae/`` is a pixel-space model (``training/tiny_models.py``).

Text conditioning follows the reference scripts' ``encode_prompt``:

* SD 1.x/2.x: last hidden state of the text encoder (``text_encoder(ids)[0]``);
* SDXL / SSD-1B: penultimate hidden states of both encoders concatenated, pooled output of
  ``text_encoder_2``, and the 6 size/crop ``time_ids`` (``train_lcm_distill_lora_sdxl.py``
  ``compute_embeddings``, ``StableDiffusionXLPipeline._get_add_time_ids``).

The unconditional branch of classifier-free guidance uses the encoded empty prompt for SD
(``train_lcm_distill_lora_sd_wds.py`` l. 1187) and all-zero embeddings for SDXL-type models
(``train_lcm_distill_lora_sdxl.py`` l. 1324-1327; ``force_zeros_for_empty_prompt``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..lcm_core.errors import ConfigError, LcmLoraError


class TeacherError(LcmLoraError):
    """The teacher checkpoint cannot be used (missing parts, unknown layout, wrong architecture)."""


@dataclass
class Teacher:
    unet: Any
    text_encoders: list
    tokenizers: list
    vae: Any | None
    noise_scheduler: Any
    prediction_type: str
    arch: str  # sd1 | sd2 | sdxl | ssd1b | custom
    source: str
    image_channels: int = 3
    scaling_factor: float = 1.0
    identity: str = field(default="")
    released: bool = field(default=False)  # text encoders / VAE encoder released after caching (training/offload.py)

    @property
    def pixel_space(self) -> bool:
        return self.vae is None

    @property
    def uses_pooled(self) -> bool:
        """SDXL-type conditioning (pooled text embeds + time ids)."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell (8 for SD VAEs, 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.noise_scheduler.alphas_cumprod.float()

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def encode_text(self, captions: list[str], device=None) -> dict[str, torch.Tensor]:
        """``{"hidden": (B, L, D)}`` plus ``"pooled": (B, P)`` for SDXL-type teachers."""
        if self.released:
            from .offload import EncodersReleased

            raise EncodersReleased("the text encoders were released after caching (train.offload_encoders); "
                                   f"caption {captions[:1]!r} is not in the text cache")
        device = device or self.text_encoders[0].device
        hidden_list, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            ids = tokenizer(
                list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(device)
            if self.uses_pooled:
                out = encoder(ids, output_hidden_states=True)
                hidden_list.append(out.hidden_states[-2])
                pooled = out[0]  # text_embeds of CLIPTextModelWithProjection (the last encoder wins, as the reference)
            else:
                hidden_list.append(encoder(ids)[0])
        result = {"hidden": torch.cat(hidden_list, dim=-1).float()}
        if self.uses_pooled:
            result["pooled"] = pooled.reshape(len(captions), -1).float()
        return result

    def uncond_text(self, mode: str, device=None) -> dict[str, torch.Tensor]:
        """Unconditional embedding for one sample (``mode``: auto | empty_prompt | zeros)."""
        if mode == "auto":
            mode = "zeros" if self.uses_pooled else "empty_prompt"
        emb = self.encode_text([""], device)
        if mode == "zeros":
            emb = {k: torch.zeros_like(v) for k, v in emb.items()}
        return emb

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] → (mean, std) of the scaled latent posterior (std = 0 in pixel space).

        A latent sample is ``mean + std * ε`` (``vae.encode(x).latent_dist.sample() * scaling_factor``).
        """
        if self.vae is None:
            return pixels.float(), torch.zeros_like(pixels, dtype=torch.float32)
        if self.released:
            from .offload import EncodersReleased

            raise EncodersReleased("the VAE encoder was released after caching (train.offload_encoders); an image is not in the latent cache")
        dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return (dist.mean.float() * self.scaling_factor, dist.std.float() * self.scaling_factor)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1] (B, C, H, W)."""
        if self.vae is None:
            images = latents.float()
        else:
            images = self.vae.decode((latents / self.scaling_factor).to(self.vae.device, self.vae.dtype)).sample.float()
        return ((images + 1) / 2).clamp(0, 1)

    def frozen_modules(self) -> list:
        return [m for m in [self.unet, self.vae, *self.text_encoders] if m is not None]


def sd_noise_scheduler():
    """SD's training noise schedule (``scheduler/scheduler_config.json`` of SD 1.5 / SDXL)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def build_cond(text: dict[str, torch.Tensor], time_ids: torch.Tensor | None = None) -> dict:
    """UNet keyword arguments for a batch of encoded text (and SDXL time ids)."""
    cond = {"encoder_hidden_states": text["hidden"]}
    if "pooled" in text:
        if time_ids is None:
            raise ValueError("SDXL-type conditioning needs time_ids")
        cond["added_cond_kwargs"] = {"text_embeds": text["pooled"], "time_ids": time_ids.to(text["pooled"].dtype)}
    return cond


def unet_forward(unet, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """``unet(x, t, **cond).sample`` with the text embeddings in the UNet's compute dtype."""
    return unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=cond.get("added_cond_kwargs")).sample


def _file_identity(path: Path) -> str:
    """Cheap identity of a file or folder (paths, sizes, mtimes) for cache keys."""
    items = []
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        st = p.stat()
        items.append(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha1((os.fspath(path.resolve()) + "|" + "|".join(items)).encode()).hexdigest()[:16]


def _detect_folder_arch(config) -> str:
    """Match a diffusers UNet config against the full-size configs of ``lcm_core.model_configs``."""
    from ..lcm_core.model_configs import ARCHITECTURES, unet_config

    def norm(key, value, length):
        if key == "transformer_layers_per_block" and value is None:
            value = 1
        if isinstance(value, (list, tuple)):
            return [list(v) if isinstance(v, (list, tuple)) else v for v in value]
        return [value] * length if key == "transformer_layers_per_block" else value

    keys = ("block_out_channels", "cross_attention_dim", "transformer_layers_per_block", "addition_embed_type", "in_channels")
    for arch in ARCHITECTURES:
        ref = unet_config(arch)
        n = len(ref["block_out_channels"])
        if all(norm(k, ref.get(k), n) == norm(k, unet_config_get(config, k), n) for k in keys):
            mid_plain = unet_config_get(config, "mid_block_type") == "UNetMidBlock2D"
            if mid_plain == (ref.get("mid_block_type") == "UNetMidBlock2D"):
                return arch
    return "custom"


def unet_config_get(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _check_arch(found: str, wanted: str, source) -> None:
    if wanted != "auto" and found != wanted:
        from ..lcm_core.errors import ArchitectureMismatchError

        raise ArchitectureMismatchError(source, expected=wanted, found=found, detail="set teacher.arch: auto or the matching architecture")


def load_teacher_folder(folder: Path, arch: str = "auto", prediction_type: str = "auto", dtype: torch.dtype | None = None) -> Teacher:
    """Load a diffusers-format teacher folder (local files only); the UNet is loaded directly in
    ``dtype`` (no float32 copy of it is ever held), text encoders and VAE as stored."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / part).is_dir():
            raise TeacherError(folder, f"not a diffusers teacher folder: missing '{part}/'")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        text_encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)]
        tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)]
        if (folder / "text_encoder_2").is_dir():
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", local_files_only=True))
            tok2 = folder / ("tokenizer_2" if (folder / "tokenizer_2").is_dir() else "tokenizer")
            tokenizers.append(CLIPTokenizer.from_pretrained(tok2, local_files_only=True))
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True) if (folder / "vae").is_dir() else None
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise TeacherError(folder, f"cannot load the diffusers folder: {e}") from None
    found = _detect_folder_arch(unet.config)
    _check_arch(found, arch, folder)
    pred = scheduler.config.prediction_type if prediction_type == "auto" else prediction_type
    image_channels = 3 if vae is not None else int(unet.config.in_channels)
    scaling = float(vae.config.scaling_factor) if vae is not None else 1.0
    return Teacher(
        unet=unet,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        vae=vae,
        noise_scheduler=scheduler,
        prediction_type=pred,
        arch=found,
        source=os.fspath(folder),
        image_channels=image_channels,
        scaling_factor=scaling,
        identity=_file_identity(folder),
    )


def load_teacher(cfg, dtype: torch.dtype | None = None) -> Teacher:
    """Load the teacher named by ``cfg.teacher`` (a :class:`~.config.TeacherSection`), frozen, in eval mode;
    UNet and text encoders in ``dtype`` (default: float32)."""
    path = Path(cfg.path)
    dtype = dtype or torch.float32
    if path.is_dir():
        teacher = load_teacher_folder(path, cfg.arch, cfg.prediction_type, dtype)
    elif path.is_file():
        from .single_file import load_teacher_single_file

        teacher = load_teacher_single_file(path, cfg, dtype)
    else:
        raise ConfigError(path, "teacher checkpoint not found")
    if cfg.vae:
        from .single_file import load_vae

        teacher.vae = load_vae(Path(cfg.vae), teacher.arch)
        teacher.scaling_factor = float(teacher.vae.config.scaling_factor)
        teacher.identity += _file_identity(Path(cfg.vae))
    if teacher.prediction_type not in ("epsilon", "v_prediction"):
        raise TeacherError(path, f"unsupported prediction type {teacher.prediction_type!r} (epsilon or v_prediction)")
    for module in teacher.frozen_modules():
        module.requires_grad_(False)
        module.eval()
    return teacher
