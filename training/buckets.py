"""Aspect-ratio buckets: every image is resized to cover a bucket of ~resolution² pixels and cropped.

Bucket list as in kohya sd-scripts / NovelAI's aspect-ratio bucketing: sides are multiples of
``step``, the area stays ≤ resolution², the aspect ratio ≤ ``max_aspect``; an image goes to the
bucket with the nearest log aspect ratio. Without buckets every image uses the square
``resolution × resolution`` bucket, which is the reference scripts' ``Resize(resolution)`` +
``CenterCrop``/``RandomCrop`` (``train_lcm_distill_lora_sdxl.py`` l. 1023-1047).
"""
from __future__ import annotations

import math
import random


def make_buckets(resolution: int, step: int = 64, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """Sorted list of (width, height) buckets, always including the square one; every wide bucket has its tall
    transpose (kohya's ``make_bucket_resolutions`` adds both). A resolution below ``step`` gets only its square
    (a ``step``-sized one would break the resolution² budget)."""
    if resolution < step:
        return [(resolution, resolution)]
    max_area = resolution * resolution
    side = resolution - resolution % step
    buckets = {(side, side)}
    width = step
    while width <= resolution * max_aspect:
        height = (max_area // width) // step * step
        if height >= step and max(width / height, height / width) <= max_aspect + 1e-9:
            buckets.update({(width, height), (height, width)})
        width += step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """Bucket whose aspect ratio is closest (in log space) to the image's; ties → larger area."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def resize_and_crop_box(
    width: int, height: int, bucket: tuple[int, int], crop: str = "center", rng: random.Random | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ``((resized_w, resized_h), (left, top))``: scale to cover the bucket, then crop it out.

    A square bucket is torchvision's ``Resize(side)`` + ``CenterCrop(side)`` / ``RandomCrop`` exactly, as the
    reference scripts preprocess: the short side becomes ``side``, the long one ``int(side · long / short)``
    (truncated), the centre offset ``int(round(excess / 2))``. Other buckets scale to cover (rounded) and centre
    with the same offset rule."""
    bw, bh = bucket
    if bw == bh:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(bw * long / short)
        rw, rh = (bw, new_long) if width <= height else (new_long, bw)
    else:
        scale = max(bw / width, bh / height)
        rw, rh = round(width * scale), round(height * scale)
    rw, rh = max(bw, rw), max(bh, rh)
    if crop == "random":
        rng = rng or random.Random(0)
        left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    else:
        left, top = int(round((rw - bw) / 2.0)), int(round((rh - bh) / 2.0))
    return (rw, rh), (left, top)
