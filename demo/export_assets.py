"""``lcm-lora demo --export DIR``: the demo's tiny teacher and training data, for ``configs/tiny_cpu.yaml``.

Writes, in seconds and with no download,

* ``DIR/teacher/``: the shipped digit teacher (``demo/assets/digits_teacher.safetensors``) unpacked
  into a diffusers folder (:func:`.teacher_assets.materialize_teacher`; 16×16 px, pixel space);
* ``DIR/data/``: the demo's training split as PNG + ``metadata.jsonl`` captions
  (:func:`.run.export_training_data`, the folder the demo itself trains from);

so that ``lcm-lora train --config configs/tiny_cpu.yaml teacher=DIR/teacher data=DIR/data`` runs
as written. Both are written atomically and never replace an existing folder unless ``force``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def export_tiny_assets(out_dir: str | os.PathLike, force: bool = False) -> dict[str, Path]:
    """Write ``out_dir/teacher`` and ``out_dir/data``; returns both paths."""
    from ..lcm_core.errors import OutputExistsError
    from .run import PRESETS, export_training_data
    from .teacher_assets import DEFAULT_ASSET, materialize_teacher

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(out, "is a file, not a folder: give --export a folder")
    teacher, data = out / "teacher", out / "data"
    for path in (teacher, data):
        if path.is_symlink() or (path.exists() and not path.is_dir()):  # --force replaces folders an export wrote
            raise OutputExistsError(path, "is a file or a link, not a folder an export wrote: remove or rename it")
        if path.exists() and not force:
            raise OutputExistsError(path, "already exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".export-data.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        # both are built before either target is touched: a failure leaves the folder as it was
        folder = export_training_data(staging, PRESETS["full"])  # the demo's own data export (atomic)
        materialize_teacher(teacher, DEFAULT_ASSET, overwrite=force)
        if data.exists():
            shutil.rmtree(data)
        os.replace(folder, data)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"teacher": teacher, "data": data}
