"""Hand over what the demo made: ``OUT/models/`` with the teacher folder, the training data, every
adapter and the fine-tune, so ``configs/tiny_cpu.yaml`` runs as written::

    lcm-lora train --config configs/tiny_cpu.yaml --output RUN teacher=OUT/models/teacher data=OUT/models/data

Copies, not links (the cache may be cleared; everything here is a few MB). Written atomically as
one folder (a previous ``models/`` is replaced), files readable by others (0644 / 0755).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def _readable(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o644)


def export_models(out_dir: Path, teacher_folder: Path, data_folder: Path, adapter_files: dict, adapters: dict,
                  finetuned_unet=None) -> list[dict]:
    """Write ``out_dir/models``; return ``[{"path": relative path, "what": description}]`` for the report.

    ``adapter_files``: ``{file name: (existing .safetensors path, description)}`` copied as they are
    (they carry the trainer's metadata); ``adapters``: ``{file name: (LoraAdapter, description)}`` written
    in kohya format; ``finetuned_unet``: a UNet saved as ``finetune/unet`` inside a copy of the teacher folder.
    """
    from ..lcm_core.atomic_write import atomic_dir
    from ..lcm_core.lora import write_adapter

    out_dir = Path(out_dir)
    listing = []
    with atomic_dir(out_dir / "models", overwrite=True) as tmp:
        shutil.copytree(teacher_folder, tmp / "teacher")
        listing.append({"path": "models/teacher", "what": "the teacher (diffusers folder: unet, text_encoder, "
                                                          "tokenizer, scheduler; pixel space, no vae)"})
        shutil.copytree(data_folder, tmp / "data")
        listing.append({"path": "models/data", "what": "the training data (PNG + metadata.jsonl, train split)"})
        for name, (src, what) in adapter_files.items():
            shutil.copy2(src, tmp / name)
            listing.append({"path": f"models/{name}", "what": what})
        for name, (adapter, what) in adapters.items():
            write_adapter(adapter, tmp / name, format="kohya", overwrite=True)
            listing.append({"path": f"models/{name}", "what": what})
        if finetuned_unet is not None:
            shutil.copytree(teacher_folder, tmp / "finetune")
            shutil.rmtree(tmp / "finetune" / "unet")
            finetuned_unet.save_pretrained(tmp / "finetune" / "unet")
            listing.append({"path": "models/finetune", "what": "the teacher fully fine-tuned on bold digits after "
                                                               "distillation (universal-acceleration test)"})
        _readable(tmp)
    return listing
