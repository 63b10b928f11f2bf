"""Ship a trained demo teacher as one small safetensors file, and unpack it into a teacher folder.

``demo/assets/digits_teacher.safetensors`` holds the UNet and text-encoder weights (fp16, keys
``unet.<param>`` / ``text_encoder.<param>``) and, in its metadata, everything else a diffusers
folder needs: the UNet / CLIP configs, the tokenizer files, the scheduler config, the training
settings and the command that reproduces the file. Storing the tokenizer files (instead of
regenerating them) keeps the shipped embedding table valid even if the generated tiny vocabulary
changes later.

:func:`materialize_teacher` writes the folder layout of ``training/tiny_models.py`` (pixel space,
no ``vae/``), loadable by ``lcm-lora train teacher=<folder>`` and ``from_pretrained``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FORMAT = "lcm-lora-demo-teacher/1"
ASSET_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_ASSET = ASSET_DIR / "digits_teacher.safetensors"
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def pack_teacher(folder: str | os.PathLike, path: str | os.PathLike, reproduce: str = "",
                 dtype: torch.dtype = torch.float16, overwrite: bool = True) -> Path:
    """Pack a trained teacher folder into one safetensors file (atomic write)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..lcm_core.safetensors_io import write_safetensors

    folder, path = Path(folder), Path(path)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    tensors = {f"unet.{k}": v.to(dtype).contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous()
                    for k, v in te.state_dict().items()})
    meta = {
        "format": FORMAT,
        "unet_config": (folder / "unet" / "config.json").read_text(encoding="utf-8"),
        "text_encoder_config": te.config.to_json_string(use_diff=False),
        "scheduler_config": (folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"),
        "reproduce": reproduce,
    }
    for name in _TOKENIZER_FILES:
        if (folder / "tokenizer" / name).is_file():
            meta[f"tokenizer/{name}"] = (folder / "tokenizer" / name).read_text(encoding="utf-8")
    for name in ("demo_teacher.json", "lcm_lora_tiny.json"):
        if (folder / name).is_file():
            meta[name] = (folder / name).read_text(encoding="utf-8")
    write_safetensors(path, tensors, meta, overwrite=overwrite)
    os.chmod(path, 0o644)  # shipped as package data: world-readable
    return path


def asset_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of the asset file: part of every cache key built on it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def read_teacher_asset(path: str | os.PathLike = DEFAULT_ASSET) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a packed teacher, validated (``lcm_core.safetensors_io``)."""
    from ..lcm_core.errors import LcmLoraError
    from ..lcm_core.safetensors_io import read_safetensors

    path = Path(path)
    if not path.is_file():
        raise LcmLoraError(path, "demo teacher weights not found (reinstall the package, or train one with "
                                 "scripts/train_demo_teacher.py)")
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise LcmLoraError(path, f"not a packed demo teacher (format {meta.get('format')!r}, expected {FORMAT!r})")
    return tensors, meta


def materialize_teacher(folder: str | os.PathLike, path: str | os.PathLike = DEFAULT_ASSET, overwrite: bool = False) -> Path:
    """Unpack a packed teacher into a diffusers teacher folder (float32 weights, atomic)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..lcm_core.atomic_write import atomic_dir
    from ..lcm_core.errors import LcmLoraError

    tensors, meta = read_teacher_asset(path)
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        try:
            unet = UNet2DConditionModel.from_config(json.loads(meta["unet_config"]))
            unet.load_state_dict({k[5:]: v.float() for k, v in tensors.items() if k.startswith("unet.")}, strict=True)
            te = CLIPTextModel(CLIPTextConfig.from_dict(json.loads(meta["text_encoder_config"])))
            te_state = {k[13:]: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()
                        if k.startswith("text_encoder.")}
            te.load_state_dict(te_state, strict=True)
        except (KeyError, RuntimeError, ValueError) as e:
            raise LcmLoraError(path, f"packed teacher does not match its configs ({e})") from e
        unet.save_pretrained(tmp / "unet")
        te.save_pretrained(tmp / "text_encoder")
        DDPMScheduler.from_config(json.loads(meta["scheduler_config"])).save_pretrained(tmp / "scheduler")
        (tmp / "tokenizer").mkdir()
        for name in _TOKENIZER_FILES:
            if f"tokenizer/{name}" in meta:
                (tmp / "tokenizer" / name).write_text(meta[f"tokenizer/{name}"], encoding="utf-8")
        for name in ("demo_teacher.json", "lcm_lora_tiny.json"):
            if name in meta:
                (tmp / name).write_text(meta[name], encoding="utf-8")
    return folder
