"""On-disk caches so repeated epochs skip the VAE and the text encoders.

* latents: one safetensors file per (image, bucket, crop) holding the scaled VAE posterior
  ``mean`` and ``std`` (a training sample is ``mean + std * ε``, exactly
  ``vae.encode(x).latent_dist.sample() * scaling_factor`` of the reference, with ε drawn by the
  trainer's seeded generator) and the SDXL time ids;
* text: one file per caption with ``hidden`` (and ``pooled`` for SDXL-type teachers).

File names are hashes of the inputs and of the teacher identity (paths, sizes, mtimes), so a
changed image, crop setting or teacher never reuses a stale entry. Files are written atomically;
a killed run leaves no partial entries, and a resumed run reuses what exists. In multi-process
runs every process fills its share, then all wait at a barrier.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..lcm_core.atomic_write import atomic_file


PREPROCESSING = "torchvision-resize"  # how an image becomes the bucket's pixels (buckets.resize_and_crop_box); a change
# of that rule changes this, so latents cached with the old one are not reused


def _digest(*parts) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:24]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_file(path, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.fspath(tmp), metadata=metadata)


def readable(path: Path) -> bool:
    """Whether ``path`` is a cache entry safetensors can open (its header only). A damaged entry (a disk full,
    a copy cut short) counts as missing, so it is rebuilt instead of failing every later run."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            f.keys()
        return True
    except Exception:
        return False


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


class LatentCache:
    def __init__(self, folder: Path, teacher_identity: str):
        self.folder = Path(folder) / "latents"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.teacher_identity = teacher_identity

    def path(self, image: str, bucket, crop: str) -> Path:
        st = os.stat(image)
        # st_mtime_ns: an edit that keeps the size within the same second is a new entry too
        return self.folder / f"{_digest(os.path.abspath(image), st.st_size, st.st_mtime_ns, bucket, crop, PREPROCESSING, self.teacher_identity)}.safetensors"

    def missing(self, items: Iterable[tuple[int, str, tuple]], crop: str) -> list[int]:
        return [i for i, image, bucket in items if not readable(self.path(image, bucket, crop))]

    def store(self, image: str, bucket, crop: str, mean: torch.Tensor, std: torch.Tensor, time_ids) -> None:
        save_tensors(
            self.path(image, bucket, crop),
            {"mean": mean.float(), "std": std.float()},
            {"time_ids": json.dumps(list(time_ids)), "image": os.fspath(image)},
        )

    def load(self, image: str, bucket, crop: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        tensors, meta = load_tensors(self.path(image, bucket, crop))
        return tensors["mean"], tensors["std"], tuple(json.loads(meta["time_ids"]))


class TextCache:
    def __init__(self, folder: Path, teacher_identity: str):
        self.folder = Path(folder) / "text"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.teacher_identity = teacher_identity
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    def path(self, caption: str) -> Path:
        return self.folder / f"{_digest(caption, self.teacher_identity)}.safetensors"

    def build(self, captions: list[str], encode: Callable[[list[str]], dict], batch_size: int = 32, progress=None) -> None:
        todo = sorted({c for c in captions if not readable(self.path(c))})
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            encoded = encode(chunk)
            for j, caption in enumerate(chunk):
                save_tensors(self.path(caption), {k: v[j] for k, v in encoded.items()}, {"caption": caption[:1000]})
            if progress is not None:
                progress(len(chunk))

    def load(self, caption: str) -> dict[str, torch.Tensor]:
        if caption not in self._memory:
            self._memory[caption] = load_tensors(self.path(caption))[0]
            if len(self._memory) > 4096:
                self._memory.pop(next(iter(self._memory)))
        return self._memory[caption]
