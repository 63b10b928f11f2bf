"""The demo's real image data: scikit-learn's handwritten digits, upsampled, with captions.

Why this set: it ships *inside* the scikit-learn wheel (``sklearn/datasets/data/digits.csv.gz``,
1797 real scans of handwritten digits from the UCI "Optical Recognition of Handwritten Digits"
set, 8×8 at 17 grey levels), so the demo needs no download and no extra install. The loaders
of larger real sets (MNIST, EMNIST, Fashion-MNIST) that we know of download them at run
time, and a 28×28 set would not fit the demo's 15-minute / 2-core budget anyway.

Images are bilinearly upsampled 8×8 → ``resolution`` and scaled to [-1, 1] (ink = +1,
paper = -1): the pixel-space "latents" of a diffusers folder without ``vae/``.

Splits (stratified, seeded, disjoint) keep generation and measurement apart:

* ``train`` (½): the only images the teacher, the LCM-LoRA and the style LoRA learn from;
* ``classifier`` (¼): trains the measuring classifiers (digit class, style);
* ``reference`` (¼): held-out real images; the Fréchet distance is measured against them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PROMPT_TEMPLATE = "a handwritten digit {label}"
NUM_CLASSES = 10
DEFAULT_RESOLUTION = 16
SPLIT_FRACTIONS = (0.5, 0.25, 0.25)
STYLES = ("bold", "inverted", "plain")


def prompt_for(label: int) -> str:
    """Caption of a digit image, e.g. ``"a handwritten digit 7"``."""
    return PROMPT_TEMPLATE.format(label=int(label))


def load_digit_images(resolution: int = DEFAULT_RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as ``(images, labels)``: float32 ``N×1×R×R`` in [-1, 1], int64 ``N``.

    Uses ``sklearn.datasets.load_digits`` (local file, no network).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32))[:, None] / 16.0
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, labels


@dataclass(frozen=True)
class DigitSplits:
    """Index arrays into :func:`load_digit_images`' output; pairwise disjoint."""

    train: np.ndarray
    classifier: np.ndarray
    reference: np.ndarray


def split_indices(labels, seed: int = 0, fractions=SPLIT_FRACTIONS) -> DigitSplits:
    """Stratified, seeded three-way split (per class: shuffle, then cut by ``fractions``)."""
    labels = np.asarray(labels)
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(fractions[0] * len(idx)))
        b = a + int(round(fractions[1] * len(idx)))
        for k, piece in enumerate((idx[:a], idx[a:b], idx[b:])):
            parts[k].append(piece)
    train, clf, ref = (np.sort(np.concatenate(p)) for p in parts)
    return DigitSplits(train=train, classifier=clf, reference=ref)


def apply_style(images: torch.Tensor, style: str = "bold") -> torch.Tensor:
    """The style-LoRA's target look, applied to real images in [-1, 1].

    * ``bold``: thick strokes, a grey-scale dilation with a plus-shaped 3×3 element
      (each ink pixel spreads one pixel up/down/left/right; max filter);
    * ``inverted``: dark ink on white paper (``-x``);
    * ``plain``: the images unchanged (a fine-tune on the teacher's own data: a change of weights, not of look).
    """
    if style == "plain":
        return images
    if style == "inverted":
        return -images
    if style == "bold":
        p = F.pad(images, (1, 1, 1, 1), value=-1.0)
        shifted = (p[..., 1:-1, 1:-1], p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:])
        return torch.stack(shifted).amax(0)
    raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")


def balanced_labels(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` class labels, as equal per class as possible, in a seeded shuffled order."""
    labels = torch.arange(n) % NUM_CLASSES
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(n, generator=g)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float ``N×1×H×W`` → uint8 ``N×H×W`` (ink white)."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x[:, 0].cpu().numpy()
