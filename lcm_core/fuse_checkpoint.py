"""Bake adapters into a single-file checkpoint (original SD key layout, what ComfyUI loads):
θ' = θ_pre + Σ_i λ_i ΔW_i (LCM-LoRA paper §3.3), written atomically as a new ``.safetensors``.

Canonical module keys are located in the checkpoint with :func:`lora.keys.canonical_to_ldm_weight`
(fused OpenCLIP q/k/v rows and the transposed ``text_projection`` included); the arithmetic is
:func:`fuse.fuse_into_weights`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .lora.architecture import detect_adapter_architecture, detect_checkpoint_architecture, require_architecture
from .errors import AdapterFileError, ConfigError, OutputExistsError
from .fuse import fuse_into_weights
from .lora.adapter import LoraAdapter
from .lora.keys import canonical_to_ldm_weight
from .lora.validate import has_nonfinite
from .safetensors_io import read_safetensors, read_shapes, write_safetensors

FUSED_METADATA_KEY = "lcm_lora.fused_adapters"


def checkpoint_architecture(path: str | os.PathLike) -> str:
    """Architecture of a single-file checkpoint, from its header only; error if unknown."""
    if Path(path).is_dir():
        raise AdapterFileError(path, "is a directory; fuse needs a single-file .safetensors checkpoint")
    detection = detect_checkpoint_architecture(read_shapes(path))
    if not detection.known:
        raise AdapterFileError(path, "cannot tell the base architecture: " + "; ".join(detection.evidence[:3]))
    return detection.arch


def fuse_checkpoint(
    checkpoint: str | os.PathLike,
    adapters: list[LoraAdapter],
    strengths: list[float],
    names: list[str],
    output: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    arch: str | None = None,
) -> dict:
    """Write ``output`` = ``checkpoint`` with every adapter baked in; returns a summary dict.

    Every adapter must match the checkpoint's architecture (:class:`ArchitectureMismatchError`
    names both) and every adapter module must exist in the checkpoint (else
    :class:`AdapterFileError` listing them): nothing is silently dropped. ``arch`` skips
    detection (for partial or unusual checkpoints).
    """
    if Path(checkpoint).is_dir():
        raise AdapterFileError(checkpoint, "is a directory; fuse needs a single-file .safetensors checkpoint")
    if not overwrite and Path(output).exists():  # before the work, not after (the write checks again)
        raise OutputExistsError(output, "already exists; pass --force / overwrite=True to replace it")
    arch = arch or checkpoint_architecture(checkpoint)
    for name, adapter in zip(names, adapters):
        # unknown adapters still carry candidates (e.g. sdxl or ssd1b): those must include ``arch``
        found = adapter.architecture or detect_adapter_architecture(adapter)
        require_architecture(found, arch, name)

    tensors, metadata = read_safetensors(checkpoint)
    refs, views = {}, {}
    for name, adapter in zip(names, adapters):
        missing = []
        for key in adapter.modules:
            ref = refs.get(key) or canonical_to_ldm_weight(key, arch, style="checkpoint")
            if ref is None or ref.key not in tensors:
                missing.append(key)
                continue
            if key not in views:
                weight = tensors[ref.key]
                if ref.rows is not None:
                    weight = weight[ref.rows[0]: ref.rows[1]]
                views[key] = weight.t() if ref.transposed else weight
                refs[key] = ref
        if missing:  # name the adapter (several may be fused) and the checkpoint
            raise AdapterFileError(
                name, f"{len(missing)} module(s) have no weight in the {arch} checkpoint {checkpoint} "
                      f"(adapter for another base model, or a pruned checkpoint?), e.g. {', '.join(missing[:3])}"
            )

    fused = fuse_into_weights(views, adapters, strengths, names=names, strict=True, progress=progress)
    changed = 0
    for key, new in fused.items():
        if new is views[key]:
            continue
        ref = refs[key]
        value = new.t() if ref.transposed else new
        if ref.rows is None:
            tensors[ref.key] = value.contiguous()
        else:
            whole = tensors[ref.key].clone()
            whole[ref.rows[0]: ref.rows[1]] = value
            tensors[ref.key] = whole
        changed += 1

    changed += _fuse_bias_diffs(tensors, refs, adapters, strengths, names, arch, checkpoint)

    recipe = [{"adapter": str(n), "strength": float(s)} for n, s in zip(names, strengths)]
    metadata = dict(metadata)
    metadata[FUSED_METADATA_KEY] = json.dumps(recipe)
    write_safetensors(output, tensors, metadata, overwrite=overwrite)
    return {"architecture": arch, "fused_weights": changed, "output": str(output), "recipe": recipe}


def _fuse_bias_diffs(tensors, refs, adapters, strengths, names, arch, checkpoint) -> int:
    """LyCORIS full modules' ``diff_b``: b' = b + λ · diff_b (ComfyUI ``load_lora`` patches ``<module>.bias``)."""
    import torch

    changed = 0
    for name, adapter, strength in zip(names, adapters, strengths):
        for key, m in adapter.modules.items():
            diff_b = getattr(m, "diff_b", None)
            if diff_b is None:
                continue
            ref = refs[key]
            if ref.transposed or ref.rows is not None or not ref.key.endswith(".weight"):
                raise AdapterFileError(name, f"module {key}: its bias diff has no single bias in the {arch} "
                                             f"checkpoint {checkpoint} (fused q/k/v)")
            bkey = ref.key[: -len(".weight")] + ".bias"
            if bkey not in tensors:
                raise AdapterFileError(name, f"module {key}: diff_b but {bkey} is not in the checkpoint {checkpoint}")
            b = tensors[bkey]
            fused = (b.to(torch.float32) + float(strength) * diff_b.to(torch.float32)).to(b.dtype)
            if has_nonfinite(fused) and not has_nonfinite(b):  # as the weights (fuse._fused)
                raise ConfigError(bkey, f"fusing the bias diff of {name} at {strength:g} gives values beyond "
                                        f"{str(b.dtype).replace('torch.', '')}'s range (Inf): lower the strength; "
                                        "nothing was written")
            tensors[bkey] = fused
            changed += 1
    return changed


def base_weights(checkpoint: str | os.PathLike, keys, arch: str | None = None):
    """``(arch, {canonical key: base weight})`` from a single-file checkpoint (canonical orientation:
    fused OpenCLIP q/k/v rows sliced, ``text_projection`` transposed), for converting or merging
    multiplicative adapters (DoRA, OFT) whose update depends on the base weights."""
    if Path(checkpoint).is_dir():
        raise AdapterFileError(checkpoint, "is a directory; --base needs a single-file .safetensors checkpoint")
    arch = arch or checkpoint_architecture(checkpoint)
    tensors, _ = read_safetensors(checkpoint)
    out, missing = {}, []
    for key in keys:
        ref = canonical_to_ldm_weight(key, arch, style="checkpoint")
        if ref is None or ref.key not in tensors:
            missing.append(key)
            continue
        w = tensors[ref.key]
        if ref.rows is not None:
            w = w[ref.rows[0]: ref.rows[1]]
        out[key] = w.t() if ref.transposed else w
    if missing:
        raise AdapterFileError(checkpoint, f"has no weight for {len(missing)} adapter module(s) in the {arch} "
                                           f"layout, e.g. {', '.join(missing[:3])}")
    return arch, out
