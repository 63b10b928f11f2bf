"""Training data: an image folder with captions, or a prompt list (prompts-only mode).

Caption sources (``data.captions: auto`` picks the first that exists):

* ``metadata.jsonl`` — one JSON object per line with ``file_name`` and ``text`` (the Hugging Face
  ``imagefolder`` convention the SDXL reference script reads; column names configurable); ``text``
  may be a list (one caption drawn per step, as the reference's ``random.choice``);
* ``metadata.csv`` — the same columns in a CSV file with a header;
* ``<image>.txt`` next to every image (kohya convention); several non-empty lines are alternatives.

Images are decoded with Pillow, converted to the teacher's channel count (RGB; L or RGBA for
pixel-space tiny models), resized to cover their bucket (bilinear, as the reference's default
``--interpolation_type``), cropped and scaled to [-1, 1].
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..lcm_core.errors import ConfigError
from .buckets import resize_and_crop_box

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


@dataclass
class Record:
    """One training item: an image file (or a pre-computed latent file) with its caption(s)."""

    captions: list[str]
    width: int
    height: int
    image: str | None = None
    latent_file: str | None = None
    extra: dict = field(default_factory=dict)


EXIF_ORIENTATION = 0x0112  # 5–8: stored rotated by 90° (phone photos); exif_transpose turns them upright


def _image_size(path: Path) -> tuple[int, int]:
    """The size the image is shown at: EXIF orientations 5–8 swap width and height (``load_image`` applies them)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8) else (w, h)
    except Exception as e:
        raise ConfigError(path, f"cannot read image ({type(e).__name__}: {e})") from None


def _read_text(path: Path) -> str:
    """A caption, metadata or prompt file as text: UTF-8, with or without the BOM that Excel and Notepad write."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None


def _hidden(path: Path, root: Path) -> bool:
    """Under a hidden folder or a macOS resource folder (.ipynb_checkpoints, .git, __MACOSX)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def _as_captions(value, source, key) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(source, f"caption field '{key}' must be a string or a list of strings, got {value!r}")


def _metadata_rows(path: Path, kind: str) -> list[tuple[int, dict]]:
    rows = []
    if kind == "jsonl":
        for n, line in enumerate(_read_text(path).splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(path, f"line {n}: invalid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise ConfigError(path, f"line {n}: must be a JSON object such as "
                                            f'{{"file_name": "a.png", "text": "a photo"}}, got {line.strip()[:60]}')
                rows.append((n, row))
    else:
        import io

        for n, row in enumerate(csv.DictReader(io.StringIO(_read_text(path), newline="")), 2):
            rows.append((n, row))
    return rows


def scan_image_folder(data_cfg) -> list[Record]:
    """List images and captions of ``data_cfg.path``; errors name the file and the problem."""
    root = Path(data_cfg.path)
    if not root.is_dir():
        raise ConfigError(root, "data folder not found")
    kind = data_cfg.captions
    if kind == "auto":
        kind = "jsonl" if (root / "metadata.jsonl").is_file() else "csv" if (root / "metadata.csv").is_file() else "txt"
    records: list[Record] = []
    if kind in ("jsonl", "csv"):
        meta = root / f"metadata.{kind}"
        if not meta.is_file():
            raise ConfigError(meta, "caption file not found")
        rows = _metadata_rows(meta, kind)
        if not rows:
            raise ConfigError(meta, "has no rows: one per image, e.g. "
                                    + ('{"file_name": "a.png", "text": "a photo"}' if kind == "jsonl" else "a.png,a photo"))
        for n, row in rows:
            if data_cfg.image_column not in row or data_cfg.caption_column not in row:
                raise ConfigError(meta, f"line {n}: needs the fields '{data_cfg.image_column}' and '{data_cfg.caption_column}'")
            name = str(row[data_cfg.image_column])
            image = root / name
            if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
                # as Hugging Face's imagefolder: file names are relative to the folder (and the ComfyUI trainer
                # panel confines a job's data to its input folder: a row must not reach files outside it)
                raise ConfigError(meta, f"line {n}: {data_cfg.image_column} {name!r} must be a path inside the data "
                                        "folder (relative, no '..' out of it)")
            if not image.is_file():
                raise ConfigError(meta, f"line {n}: image {image} not found")
            captions = _as_captions(row[data_cfg.caption_column], meta, data_cfg.caption_column)
            w, h = _image_size(image)
            records.append(Record(captions=captions, width=w, height=h, image=os.fspath(image)))
    else:
        images = sorted(p for p in root.rglob("*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _hidden(p, root))
        for image in images:
            txt = image.with_suffix(".txt")
            if not txt.is_file():
                raise ConfigError(image, f"no caption: expected {txt.name} next to it (or a metadata.jsonl/csv)")
            lines = [line.strip() for line in _read_text(txt).splitlines() if line.strip()]
            w, h = _image_size(image)
            records.append(Record(captions=lines or [""], width=w, height=h, image=os.fspath(image)))
    if not records:
        raise ConfigError(root, f"no images found ({', '.join(IMAGE_EXTENSIONS)})")
    return records


def read_prompts(path: str | os.PathLike, column: str = "text") -> list[str]:
    """Prompt list for prompts-only mode: ``.txt`` (one per line; blank lines and lines starting with ``#`` are
    skipped), ``.jsonl`` (``text`` field) or ``.csv``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "prompt file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":  # one JSON document would otherwise be read as lines of text
        raise ConfigError(path, "a .json file is not a prompt list: use .jsonl (one {\"text\": ...} object per line), "
                                ".csv or .txt (one prompt per line)")
    if suffix in (".jsonl", ".csv"):
        prompts = []
        for n, row in _metadata_rows(path, suffix[1:]):
            if column not in row or not isinstance(row[column], str):
                raise ConfigError(path, f"line {n}: needs a string field '{column}'")
            prompts.append(row[column])
    else:
        prompts = [line.strip() for line in _read_text(path).splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise ConfigError(path, "no prompts in the file")
    return prompts


def _upright_8bit(im):
    """``im`` turned as its EXIF orientation says, and 16-bit grey scaled to 8 bits (PIL's convert("RGB") clips
    16-bit values to 255: a white image)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), mode="L")
    return im


def load_image(
    record: Record, bucket: tuple[int, int], channels: int, crop: str, flip: bool, rng: random.Random
) -> tuple[torch.Tensor, tuple[int, int, int, int, int, int]]:
    """Decode, resize to cover ``bucket``, crop, optionally flip; → ((C, H, W) in [-1, 1], SDXL time ids).

    Time ids are ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` as the SDXL
    reference's ``compute_time_ids``.
    """
    from PIL import Image

    try:
        with Image.open(record.image) as im:
            im = _upright_8bit(im).convert(_PIL_MODES[channels])
            (rw, rh), (left, top) = resize_and_crop_box(im.width, im.height, bucket, crop, rng)
            im = im.resize((rw, rh), Image.BILINEAR).crop((left, top, left + bucket[0], top + bucket[1]))
            if flip and rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
                # The crop's left edge in the mirrored resized image (the SDXL micro-conditioning
                # "crop_left"). Departure: diffusers' SDXL scripts use ``resolution - x1`` here, which
                # is not the mirrored position (for a centre crop it should stay ``x1``; theirs does not).
                left = rw - left - bucket[0]
            array = np.asarray(im, dtype=np.float32)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(record.image, f"cannot read image ({type(e).__name__}: {e})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1.0
    return tensor, (record.height, record.width, top, left, bucket[1], bucket[0])
