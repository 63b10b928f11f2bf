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

The :class:`Teacher` object itself, ``TeacherError`` and the checks both loaders share are in
:mod:`.teacher_common` (re-exported here).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..lcm_core.errors import ConfigError
# The teacher object and what both loaders (folders here, single files in .single_file) share live
# in .teacher_common, so that .single_file never imports this module (no import circle).
from .teacher_common import Teacher, TeacherError, check_arch, file_identity, sd_noise_scheduler  # noqa: F401


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


def detect_folder_arch(config) -> str:
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


def _needs_vae(folder: Path, arch: str) -> bool:
    """A Stable Diffusion layout, or a tiny teacher whose ``lcm_lora_tiny.json`` says it is not pixel-space."""
    if arch in ("sd1", "sd2", "sdxl", "ssd1b"):
        return True
    try:
        return json.loads((folder / "lcm_lora_tiny.json").read_text(encoding="utf-8")).get("pixel_space") is False
    except (OSError, ValueError, AttributeError):
        return False


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
    found = detect_folder_arch(unet.config)
    check_arch(found, arch, folder)
    if vae is None and _needs_vae(folder, found):
        raise TeacherError(folder, f"missing 'vae/': a {found} teacher works in the VAE's latent space (without it the "
                                   "run would train on raw pixels)")
    pred = scheduler.config.prediction_type if prediction_type == "auto" else prediction_type
    scheduler.register_to_config(prediction_type=pred)  # the solver and prompts-only sampling read the scheduler's
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
        identity=f"{file_identity(folder)}|{pred}",  # the prediction type may be overridden: prompts-only samples depend on it
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
        teacher.identity += file_identity(Path(cfg.vae))
    if teacher.prediction_type not in ("epsilon", "v_prediction"):
        raise TeacherError(path, f"unsupported prediction type {teacher.prediction_type!r} (epsilon or v_prediction)")
    for module in teacher.frozen_modules():
        module.requires_grad_(False)
        module.eval()
    return teacher
