"""Turns planned batches of items into model inputs: latents, text conditioning, unconditioning.

All per-sample randomness (crop offsets, flips, caption choice, caption dropout) comes from a
``random.Random`` seeded by (seed, step, micro-step, row of the *global* batch), and the VAE
posterior noise is drawn for the whole global batch from the step's generator, so a resumed
run and an N-process run build exactly the rows a single uninterrupted process would.
"""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .buckets import make_buckets, nearest_bucket
from .cache import LatentCache, TextCache, load_tensors
from .data import Record, load_image
from .teacher import Teacher, build_cond


class TrainingData:
    def __init__(self, records: list[Record], teacher: Teacher, data_cfg, cache_dir: Path, device, seed: int, num_workers: int = 0):
        self.records = records
        self.teacher = teacher
        self.cfg = data_cfg
        self.device = device
        self.seed = seed
        self.crop = "center" if data_cfg.cache_latents else data_cfg.crop
        if data_cfg.buckets:
            buckets = make_buckets(data_cfg.resolution, data_cfg.bucket_step, data_cfg.max_aspect)
            self.bucket_of = [nearest_bucket(r.width, r.height, buckets) if r.image else (r.width, r.height) for r in records]
        else:
            square = (data_cfg.resolution, data_cfg.resolution)
            self.bucket_of = [square if r.image else (r.width, r.height) for r in records]
        self.latent_cache = LatentCache(cache_dir, teacher.identity) if data_cfg.cache_latents else None
        self.text_cache = TextCache(cache_dir, teacher.identity) if data_cfg.cache_text else None
        self._pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None

    # ------------------------------------------------------------------ caches
    def prepare(self, rank: int = 0, world: int = 1, barrier=lambda: None, progress_factory=None) -> None:
        """Fill the latent / text caches (each process its share), then wait for all processes."""
        if self.latent_cache is not None:
            items = [(i, r.image, self.bucket_of[i]) for i, r in enumerate(self.records) if r.image]
            todo = [i for i in self.latent_cache.missing(items, self.crop) if i % world == rank]
            bar = progress_factory(len(todo), "caching latents") if progress_factory and todo else None
            by_bucket: dict = {}
            for i in todo:
                by_bucket.setdefault(self.bucket_of[i], []).append(i)
            for bucket, idxs in by_bucket.items():
                for start in range(0, len(idxs), 8):
                    chunk = idxs[start : start + 8]
                    pixels, time_ids = self._load_pixels(chunk, [random.Random(0)] * len(chunk), flip=False)
                    mean, std = self.teacher.encode_pixels(pixels.to(self.device))
                    for j, i in enumerate(chunk):
                        self.latent_cache.store(self.records[i].image, bucket, self.crop, mean[j], std[j], time_ids[j])
                    if bar:
                        bar.update(len(chunk))
            if bar:
                bar.close()
        if self.text_cache is not None:
            captions = sorted({c for r in self.records for c in r.captions} | {""})
            mine = [c for k, c in enumerate(captions) if k % world == rank]
            bar = progress_factory(len(mine), "caching text") if progress_factory and mine else None
            self.text_cache.build(mine, lambda chunk: self.teacher.encode_text(chunk, self.device), progress=bar.update if bar else None)
            if bar:
                bar.close()
        barrier()

    # ------------------------------------------------------------------ batches
    def _load_pixels(self, items: list[int], rngs: list[random.Random], flip: bool):
        def one(pair):
            i, rng = pair
            return load_image(self.records[i], self.bucket_of[i], self.teacher.image_channels, self.crop, flip, rng)

        pairs = list(zip(items, rngs))
        loaded = list(self._pool.map(one, pairs)) if self._pool else [one(p) for p in pairs]
        return torch.stack([p for p, _ in loaded]), [t for _, t in loaded]

    def _posterior(self, items: list[int], rngs: list[random.Random]):
        """(mean, std, time_ids) of the scaled latent posterior for each item."""
        first = self.records[items[0]]
        if first.latent_file is not None:  # prompts-only: teacher samples, a point mass
            means, tids = [], []
            for i in items:
                tensors, _ = load_tensors(Path(self.records[i].latent_file))
                means.append(tensors["latent"].float())
                w, h = self.records[i].width, self.records[i].height
                tids.append((h, w, 0, 0, h, w))
            mean = torch.stack(means)
            return mean, torch.zeros_like(mean), tids
        if self.latent_cache is not None:
            loaded = [self.latent_cache.load(self.records[i].image, self.bucket_of[i], self.crop) for i in items]
            return torch.stack([m for m, _, _ in loaded]), torch.stack([s for _, s, _ in loaded]), [t for _, _, t in loaded]
        pixels, tids = self._load_pixels(items, rngs, flip=self.cfg.random_flip)
        mean, std = self.teacher.encode_pixels(pixels.to(self.device))
        return mean, std, tids

    def _captions(self, items: list[int], rngs: list[random.Random]) -> list[str]:
        out = []
        for i, rng in zip(items, rngs):
            caption = rng.choice(self.records[i].captions)
            if self.cfg.caption_dropout > 0 and rng.random() < self.cfg.caption_dropout:
                caption = ""
            out.append(caption)
        return out

    def _text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.text_cache is not None:
            rows = [self.text_cache.load(c) for c in captions]
            return {k: torch.stack([r[k] for r in rows]).to(self.device) for k in rows[0]}
        return self.teacher.encode_text(captions, self.device)

    def latent_shape(self, item: int) -> tuple[int, int, int]:
        bw, bh = self.bucket_of[item]
        ds = self.teacher.downsample
        return (self.teacher.latent_channels, bh // ds, bw // ds)

    def build(self, global_items: list[int], rows: slice, key: str, generator: torch.Generator):
        """Latents (B_local, C, h, w) on the device and the UNet conditioning for ``global_items[rows]``.

        ``generator`` draws the posterior noise of the full global batch (then sliced), so the
        caller's later draws from it do not depend on how the batch is split.
        """
        shape = (len(global_items), *self.latent_shape(global_items[0]))
        posterior_noise = torch.randn(shape, generator=generator, dtype=torch.float32)[rows]
        items = global_items[rows]
        first_row = rows.start or 0
        rngs = [random.Random(f"{key}-{first_row + j}") for j in range(len(items))]
        mean, std, tids = self._posterior(items, rngs)
        latents = mean.to(self.device) + std.to(self.device) * posterior_noise.to(self.device)
        text = self._text(self._captions(items, rngs))
        time_ids = torch.tensor(tids, dtype=torch.float32, device=self.device) if self.teacher.uses_pooled else None
        return latents, build_cond(text, time_ids), time_ids

    def uncond(self, mode: str, batch: int, time_ids: torch.Tensor | None) -> dict:
        """Unconditional conditioning for ``batch`` rows (same time ids as the conditional rows, as the reference)."""
        if not hasattr(self, "_uncond"):
            self._uncond = self.teacher.uncond_text(mode, self.device)
        text = {k: v.expand(batch, *v.shape[1:]) for k, v in self._uncond.items()}
        return build_cond(text, time_ids)
