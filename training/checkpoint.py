"""Atomic, resumable training checkpoints (keep the last K).

Layout: ``<output>/checkpoints/step-00000120/`` holding

* ``lora.safetensors`` — the trainable LoRA tensors (fp32, peft names) and the EMA copy (``ema.*``);
* ``optimizer.pt`` — ``optimizer.state_dict()`` (read back with ``torch.load(weights_only=True)``);
* ``rng.safetensors`` — torch CPU/CUDA generator states and numpy's MT19937 key;
* ``trainer_state.json`` — step, data position, LR-scheduler and grad-scaler state, python and
  numpy RNG state, config hash, the config itself.

A checkpoint is written into a hidden temporary folder and renamed into place
(``lcm_core.atomic_write.atomic_dir``), so a run killed while saving leaves either the old set or
the new complete folder — never a partial one that ``--resume`` could pick. Older folders beyond
``keep`` are removed only after the new one is in place (the reference deletes *before* saving).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..lcm_core.atomic_write import atomic_dir
from ..lcm_core.errors import LcmLoraError

_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


class CheckpointError(LcmLoraError):
    """A checkpoint folder is missing, incomplete or from a different configuration."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    state: dict
    rng: dict[str, torch.Tensor]


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def rng_states() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [py_version, list(py_state), py_gauss]}


def restore_rng_states(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer_state: dict,
    keep: int,
) -> Path:
    """Write ``step-<step>`` atomically, then prune to the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:08d}"
    rng_tensors, rng_json = rng_states()
    with atomic_dir(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.fspath(tmp / "lora.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, os.fspath(tmp / "rng.safetensors"))
        state = dict(trainer_state, step=step, rng=rng_json)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
    for old_step, path in list_checkpoints(output_dir)[:-keep]:
        if old_step != step:
            doomed = path.with_name(f".{path.name}.deleting")
            os.replace(path, doomed)  # atomic: never a half-deleted folder under a valid name
            shutil.rmtree(doomed, ignore_errors=True)
    return target


def resolve_resume(output_dir: str | os.PathLike, resume: str | os.PathLike | bool | None) -> Path | None:
    """``True``/``"latest"`` → newest checkpoint of ``output_dir`` (None if there is none); a path → that folder."""
    if resume is None or resume is False:
        return None
    if resume is True or str(resume) == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_absolute() and not path.exists() and (checkpoints_dir(output_dir) / path).exists():
        path = checkpoints_dir(output_dir) / path
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(path, "not a complete checkpoint folder (no trainer_state.json)")
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint folder was saved at."""
    return int(json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))["step"])


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(os.fspath(path / "lora.safetensors"))
        rng = load_file(os.fspath(path / "rng.safetensors"))
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"cannot read checkpoint ({type(e).__name__}: {e})") from None
    return Checkpoint(path=path, step=int(state["step"]), tensors=tensors, optimizer=optimizer, state=state, rng=rng)
