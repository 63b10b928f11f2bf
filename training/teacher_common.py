"""What the two teacher loaders share (folders: :mod:`.teacher`, single files: :mod:`.single_file`):
the frozen :class:`Teacher` object, :class:`TeacherError`, SD's training noise schedule, the
architecture check and the cheap file identity used in cache keys. Imports neither loader.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..lcm_core.errors import ArchitectureMismatchError, LcmLoraError


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
        """Unconditional embedding for one sample (``mode``: auto | empty_prompt | zeros); after
        ``offload.release_encoders`` the one it encoded before the release."""
        released = getattr(self, "released_uncond", None)
        if released is not None and released[0] == mode:
            return {k: v.to(device) if device is not None else v for k, v in released[1].items()}
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
        mean, std = dist.mean.float() * self.scaling_factor, dist.std.float() * self.scaling_factor
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):  # before any cache or loss sees them
            raise TeacherError(self.source, f"its VAE encodes these images to NaN/Inf latents (VAE in {self.vae.dtype}): "
                                            "its weights hold NaN/Inf, or it overflows in this precision (SDXL's VAE does in "
                                            "float16: use an fp16-fix VAE, or train.mixed_precision bf16 / no)")
        return mean, std

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


def file_identity(path: Path) -> str:
    """Cheap identity of a file or folder (paths, sizes, mtimes) for cache keys."""
    items = []
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        st = p.stat()
        items.append(f"{p.relative_to(path) if path.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1((os.fspath(path.resolve()) + "|" + "|".join(items)).encode()).hexdigest()[:16]


def check_arch(found: str, wanted: str, source) -> None:
    """Refuse a teacher whose detected architecture is not the configured one (``auto`` accepts any)."""
    if wanted != "auto" and found != wanted:
        raise ArchitectureMismatchError(source, expected=wanted, found=found, detail="set teacher.arch: auto or the matching architecture")
