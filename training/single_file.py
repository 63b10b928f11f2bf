"""Teachers from single-file checkpoints (original SD / SGM key layout, what ComfyUI users have).

The checkpoint is read once (safetensors, or ``torch.load(weights_only=True)``), its
architecture detected from tensor shapes (``lcm_core.lora.architecture.detect_checkpoint_architecture``),
and each part converted with diffusers' single-file utilities — ``from_single_file`` on the
in-memory state dict and ``create_diffusers_clip_model_from_ldm`` — given **local** configs
written from ``lcm_core.model_configs`` into a temporary folder (never fetched from a hub).

Tokenizers are not stored in checkpoints. They come from ``teacher.tokenizer`` (a folder
with CLIP's ``vocab.json`` + ``merges.txt``), else ComfyUI's bundled ``comfy/sd1_tokenizer``
when ``COMFYUI_PATH`` is set; SDXL's second tokenizer is the same vocabulary padded with "!".
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..lcm_core.errors import ConfigError
from .teacher_common import Teacher, TeacherError, check_arch, file_identity, sd_noise_scheduler

# diffusers AutoencoderKL config of the SD / SDXL VAE (vae/config.json of
# runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0).
_SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
)
_VAE_SAMPLE_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024, "ssd1b": 1024}


def vae_config(arch: str) -> dict:
    from ..lcm_core.model_configs import VAE_SCALING_FACTOR

    cfg = dict(_SD_VAE, sample_size=_VAE_SAMPLE_SIZE[arch], scaling_factor=VAE_SCALING_FACTOR[arch])
    if arch in ("sdxl", "ssd1b"):
        cfg["force_upcast"] = True
    return cfg


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint (safetensors or a weights-only torch pickle)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(os.fspath(path))
        if suffix in (".ckpt", ".pt", ".pth", ".bin"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise TeacherError(path, "the pickle does not hold a state dict")
            return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    except TeacherError:
        raise
    except Exception as e:
        advice = ("the file is damaged or cut short: download or copy it again" if suffix == ".safetensors"
                  else "convert it to .safetensors")
        raise TeacherError(path, f"cannot read checkpoint ({type(e).__name__}: {e}); {advice}") from None
    raise TeacherError(path, f"unknown checkpoint extension {suffix!r} (expected .safetensors or .ckpt)")


def _write_skeleton(folder: Path, arch: str) -> None:
    """Local diffusers configs for ``from_single_file(config=folder, subfolder=...)``."""
    from transformers import CLIPTextConfig

    from ..lcm_core.model_configs import text_encoder_configs, unet_config

    (folder / "unet").mkdir()
    unet_cfg = {"_class_name": "UNet2DConditionModel", **unet_config(arch)}
    (folder / "unet" / "config.json").write_text(json.dumps(unet_cfg), encoding="utf-8")
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae_config(arch)}), encoding="utf-8")
    for name, cfg in text_encoder_configs(arch).items():
        arch_name = "CLIPTextModelWithProjection" if name == "text_encoder_2" else "CLIPTextModel"
        CLIPTextConfig(**cfg, architectures=[arch_name]).save_pretrained(folder / name)


def _comfy_tokenizer_dir() -> Path | None:
    root = os.environ.get("COMFYUI_PATH")
    if root:
        candidate = Path(root) / "comfy" / "sd1_tokenizer"
        if (candidate / "vocab.json").is_file():
            return candidate
    return None


def tokenizer_folders(arch: str, tokenizer_dir: str | None, tokenizer_2_dir: str | None, source) -> list[Path]:
    """The tokenizer folder(s) a single-file teacher uses: ``teacher.tokenizer`` (``_2`` for SDXL's second), else ComfyUI's."""
    first = Path(tokenizer_dir) if tokenizer_dir else _comfy_tokenizer_dir()
    if first is None or not (first / "vocab.json").is_file() or not (first / "merges.txt").is_file():
        raise ConfigError(
            source,
            "a single-file checkpoint has no tokenizer: set teacher.tokenizer to a folder with CLIP's vocab.json and "
            "merges.txt (e.g. the tokenizer/ folder of any SD 1.5 diffusers model, or ComfyUI's comfy/sd1_tokenizer), "
            "or set COMFYUI_PATH",
        )
    if arch in ("sdxl", "ssd1b"):
        return [first, Path(tokenizer_2_dir) if tokenizer_2_dir else first]
    return [first]


def load_tokenizers(arch: str, tokenizer_dir: str | None, tokenizer_2_dir: str | None, source) -> list:
    return _tokenizers_from(tokenizer_folders(arch, tokenizer_dir, tokenizer_2_dir, source))


def _tokenizers_from(folders: list[Path]) -> list:
    from transformers import CLIPTokenizer

    tokenizers = [CLIPTokenizer(vocab=os.fspath(folders[0] / "vocab.json"), merges=os.fspath(folders[0] / "merges.txt"), model_max_length=77)]
    if len(folders) == 2:
        # SDXL tokenizer_2 (OpenCLIP bigG) pads with "!" (id 0) instead of <|endoftext|>.
        tokenizers.append(
            CLIPTokenizer(vocab=os.fspath(folders[1] / "vocab.json"), merges=os.fspath(folders[1] / "merges.txt"), pad_token="!", model_max_length=77)
        )
    return tokenizers


def single_file_identity(path: Path, arch: str, prediction: str, tokenizers: list[Path]) -> str:
    """Cache identity of a single-file teacher: the file, and what the file does not hold (tokenizers, a forced arch,
    the prediction type), so changing ``teacher.tokenizer`` or ``teacher.prediction_type`` rebuilds the text and
    prompts-only caches instead of reusing entries made with the old setting."""
    return "|".join([file_identity(path), arch, prediction, *(file_identity(folder) for folder in tokenizers)])


def detect_arch(state: dict[str, torch.Tensor], wanted: str, source) -> str:
    from ..lcm_core.lora.architecture import detect_checkpoint_architecture

    found = detect_checkpoint_architecture({k: tuple(v.shape) for k, v in state.items()}).arch
    if wanted != "auto":
        if found in ("sd1", "sd2", "sdxl", "ssd1b"):  # recognised: it must be the configured one
            check_arch(found, wanted, source)
        return wanted  # not recognised: teacher.arch forces it
    if found not in ("sd1", "sd2", "sdxl", "ssd1b"):
        raise TeacherError(source, "not a recognised SD 1.x / SD 2.x / SDXL / SSD-1B checkpoint (set teacher.arch to force one)")
    return found


def load_teacher_single_file(path: Path, cfg, dtype: torch.dtype = torch.float32) -> Teacher:
    """Convert a single-file checkpoint into a :class:`Teacher` (``cfg``: the config's teacher section)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection


    state = read_checkpoint(path)
    arch = detect_arch(state, cfg.arch, path)  # a configured arch is checked against the file (or forces it)
    folders = tokenizer_folders(arch, cfg.tokenizer, cfg.tokenizer_2, path)
    tokenizers = _tokenizers_from(folders)
    with tempfile.TemporaryDirectory(prefix="lcm_lora_teacher_") as tmp:
        skeleton = Path(tmp)
        _write_skeleton(skeleton, arch)
        try:
            unet = UNet2DConditionModel.from_single_file(state, config=os.fspath(skeleton), subfolder="unet", local_files_only=True,
                                                         torch_dtype=dtype)
            text_encoders = [
                create_diffusers_clip_model_from_ldm(
                    CLIPTextModel, state, subfolder="text_encoder", config=os.fspath(skeleton), local_files_only=True,
                    torch_dtype=dtype,
                )
            ]
            if arch in ("sdxl", "ssd1b"):
                text_encoders.append(
                    create_diffusers_clip_model_from_ldm(
                        CLIPTextModelWithProjection, state, subfolder="text_encoder_2", config=os.fspath(skeleton),
                        local_files_only=True, torch_dtype=dtype,
                    )
                )
            vae = None
            if not cfg.vae:
                vae = AutoencoderKL.from_single_file(state, config=os.fspath(skeleton), subfolder="vae", local_files_only=True,
                                                     torch_dtype=torch.float32)
        except (ValueError, KeyError, RuntimeError) as e:
            raise TeacherError(path, f"cannot convert the {arch} checkpoint: {e}") from None
    del state
    if cfg.prediction_type == "auto" and arch == "sd2":
        raise ConfigError(path, "SD 2.x checkpoints may be epsilon or v-prediction: set teacher.prediction_type")
    prediction = "epsilon" if cfg.prediction_type == "auto" else cfg.prediction_type
    scheduler = sd_noise_scheduler()
    scheduler.register_to_config(prediction_type=prediction)
    return Teacher(
        unet=unet,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        vae=vae,
        noise_scheduler=scheduler,
        prediction_type=prediction,
        arch=arch,
        source=os.fspath(path),
        image_channels=3,
        scaling_factor=float(vae.config.scaling_factor) if vae is not None else 1.0,
        identity=single_file_identity(path, arch, prediction, folders),
    )


def load_vae(path: Path, arch: str):
    """A separate VAE: a diffusers folder (``config.json`` + weights) or a single file."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        sub = "vae" if (path / "vae").is_dir() else None
        return AutoencoderKL.from_pretrained(path, subfolder=sub, local_files_only=True)
    if arch not in _VAE_SAMPLE_SIZE:
        raise ConfigError(path, f"a single-file VAE needs a known teacher architecture, got {arch!r}")
    state = read_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="lcm_lora_vae_") as tmp:
        (Path(tmp) / "vae").mkdir()
        Path(tmp, "vae", "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae_config(arch)}), encoding="utf-8")
        try:
            return AutoencoderKL.from_single_file(state, config=tmp, subfolder="vae", local_files_only=True)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ConfigError(path, f"cannot convert the VAE: {e}") from None
