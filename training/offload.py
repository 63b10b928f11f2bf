"""Text encoders and VAE leave the accelerator once the caches hold everything they would compute.

As kohya's sd-scripts do with ``--cache_latents`` / ``--cache_text_encoder_outputs`` (text encoders
and VAE moved off the GPU after caching): when ``data.cache_text`` is on and every training latent
comes from a cache (``data.cache_latents``, or the teacher samples of prompts-only mode), the
training step never runs the text encoders or the VAE encoder. After the caches are filled,
:func:`release_encoders`

* encodes what is still needed later — the unconditional embedding and the validation prompts —
  and keeps those embeddings;
* releases the text encoders and the VAE encoder (their memory is freed, on the device and in
  host RAM: nothing calls them again);
* keeps the VAE decoder on the CPU when training on an accelerator; :func:`decoder_on` moves it to
  the device only while validation decodes, then back (on CPU training it stays where it is).

Peak training memory falls by the size of the text encoders and the VAE (SDXL: 817 M + 84 M
parameters, 1.7 GiB in fp16). ``train.offload_encoders: false`` keeps the old behaviour.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager

import torch


class EncodersReleased(RuntimeError):
    """A released text encoder / VAE encoder was called (a bug: every input should be cached)."""


def encoders_idle(cfg, records) -> bool:
    """True when the training step will not need the text encoders or the VAE encoder."""
    if not (cfg.train.offload_encoders and cfg.data.cache_text):
        return False
    return bool(cfg.data.cache_latents) or all(r.latent_file is not None for r in records)


def _empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def release_encoders(teacher, device: torch.device, validation_prompts: list[str] | None, uncond_mode: str):
    """Encode the remaining prompts, then release the text encoders and the VAE encoder (see module doc).

    Returns ``(uncond_text, validation_text)`` (``validation_text`` is None without prompts)."""
    uncond = teacher.uncond_text(uncond_mode, device)
    validation = teacher.encode_text(list(validation_prompts), device) if validation_prompts else None
    teacher.released_uncond = (uncond_mode, uncond)  # for guided validation (a normal-CFG run) after the release
    teacher.text_encoders = []
    teacher.released = True
    if teacher.vae is not None:
        teacher.vae.encoder = None
        teacher.vae.quant_conv = None
        if device.type != "cpu":
            teacher.vae.to("cpu")
    _empty_cache(device)
    return uncond, validation


@contextmanager
def decoder_on(teacher, device: torch.device):
    """The VAE (decoder) on ``device`` for the duration of the block, back on the CPU afterwards."""
    vae = teacher.vae
    if vae is None or not getattr(teacher, "released", False) or device.type == "cpu":
        yield
        return
    vae.to(device)
    try:
        yield
    finally:
        vae.to("cpu")
        _empty_cache(device)
