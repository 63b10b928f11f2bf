"""Atomic, verified, resumable training checkpoints (keep the last K).

Layout: ``<output>/checkpoints/step-00000120/`` holding

* ``lora.safetensors`` — the trainable LoRA tensors (fp32, peft names) and the EMA copy (``ema.*``);
* ``optimizer.pt`` — ``optimizer.state_dict()`` (read back with ``torch.load(weights_only=True)``);
* ``rng.safetensors`` — torch CPU/CUDA generator states and numpy's MT19937 key;
* ``trainer_state.json`` — step, data position, LR-scheduler and grad-scaler state, python and
  numpy RNG state, config hash, the config itself, and ``files``: size and CRC-32 of the other three.

Crash safety (SIGKILL / power loss at any instant):

* a checkpoint is written into a hidden temporary folder ``.step-N.XXXX.tmp``; every file and the
  folder itself are fsynced, then the folder is renamed to ``step-N`` and the parent fsynced
  (the ``lcm_core.atomic_write`` recipe), so a ``step-N`` folder is always complete;
* replacing an existing ``step-N`` (a run resumed from an older checkpoint reaching N again) moves
  the old one to ``.step-N.replaced`` first; if the process dies between the two renames,
  :func:`list_checkpoints` still finds it there;
* older folders beyond ``keep`` are pruned only after the new one is in place (the reference
  deletes *before* saving), each renamed to ``.step-N.deleting`` before removal, so a half-deleted
  folder never carries a valid name;
* leftovers of an interrupted save or prune are removed by the next save;
* :func:`resolve_resume` verifies a checkpoint (every file present, sizes and CRC-32 as recorded,
  safetensors headers, the optimizer zip) before picking it: ``latest`` skips a damaged one with a
  :class:`CheckpointWarning` and falls back to the previous one; an explicit path raises
  :class:`CheckpointError` naming the problem;
* a failed write (disk full, I/O error) raises :class:`CheckpointError` naming the checkpoint, the
  cause ("no space left on device") and the previous checkpoint, which is kept; the temporary
  folder is removed. Non-finite weights are never saved.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..lcm_core.atomic_write import apply_umask_modes, make_temp_dir
from ..lcm_core.errors import LcmLoraError

_NAME = re.compile(r"^step-(\d+)$")
_REPLACED = re.compile(r"^\.(step-\d+)\.replaced$")
_LEFTOVER = re.compile(r"^\.step-\d+\.(.+\.tmp|deleting)$")
STATE_FILE = "trainer_state.json"
DATA_FILES = ("lora.safetensors", "optimizer.pt", "rng.safetensors")


class CheckpointError(LcmLoraError):
    """A checkpoint folder is missing, incomplete, damaged or from a different configuration,
    or a checkpoint could not be written."""


class CheckpointWarning(UserWarning):
    """About the run's checkpoints: a damaged one skipped for the newest usable one, later ones set aside on a
    resume from an earlier one, a resume that found none, a resume with changed settings."""


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
    """Published checkpoints, oldest first: ``step-N`` folders holding ``trainer_state.json``.

    Temporary folders of an interrupted save or prune are ignored; a ``.step-N.replaced`` folder
    counts (as step N) only while ``step-N`` itself is missing (killed between the two renames of
    a same-step overwrite). Whether the files are intact is checked by :func:`verify_checkpoint`."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = {}
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found[int(m.group(1))] = child
    for child in root.iterdir():
        m = _REPLACED.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            step = int(m.group(1)[len("step-"):])
            if step not in found and not (root / m.group(1)).exists():
                found[step] = child
    return sorted(found.items())


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "crc32": _crc32(path)}


def verify_checkpoint(path: str | os.PathLike) -> int:
    """Check that ``path`` is a complete, undamaged checkpoint; return its step.

    Every file must be present; ``trainer_state.json`` must parse and name the folder's step;
    sizes and CRC-32 must match what the save recorded (checkpoints written before the
    ``files`` record existed get structural checks only: safetensors headers, the optimizer's zip
    directory and member CRCs). Raises :class:`CheckpointError` naming the problem."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "not a checkpoint folder (missing)")
    missing = [name for name in (*DATA_FILES, STATE_FILE) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(path, f"incomplete checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        step = int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path / STATE_FILE, f"damaged trainer state ({type(e).__name__}: {e})") from None
    m = _NAME.match(path.name) or _REPLACED.match(path.name)
    if m and int(m.group(m.lastindex).rsplit("-", 1)[-1]) != step:
        raise CheckpointError(path / STATE_FILE, f"records step {step}, but the folder is {path.name}")
    records = state.get("files")
    for name in DATA_FILES:
        file = path / name
        try:
            if isinstance(records, dict) and name in records:
                want = records[name]
                size = file.stat().st_size
                if size != want["bytes"]:
                    raise CheckpointError(file, f"damaged: {size} bytes, the checkpoint recorded {want['bytes']}")
                if _crc32(file) != want["crc32"]:
                    raise CheckpointError(file, "damaged: contents differ from what was saved (CRC-32 mismatch)")
            elif name.endswith(".safetensors"):
                with safe_open(os.fspath(file), framework="pt") as f:
                    f.keys()
            else:
                with zipfile.ZipFile(file) as z:
                    bad = z.testzip()
                if bad is not None:
                    raise CheckpointError(file, f"damaged: member {bad} fails its CRC")
        except CheckpointError:
            raise
        except Exception as e:  # safetensors' SafetensorError, zipfile.BadZipFile, OSError
            raise CheckpointError(file, f"damaged or unreadable ({type(e).__name__}: {e})") from None
    return step


def _usable_latest(output_dir: str | os.PathLike) -> Path | None:
    """Newest checkpoint that passes :func:`verify_checkpoint`; damaged ones are skipped with a warning."""
    found = list_checkpoints(output_dir)
    problems = []
    for _, path in reversed(found):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"skipping damaged checkpoint {e}; falling back to the previous one", CheckpointWarning, stacklevel=3)
    if found:
        raise CheckpointError(checkpoints_dir(output_dir), f"none of the {len(found)} checkpoints is usable: " + "; ".join(problems))
    return None


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


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception chain (OSError) or in safetensors' Rust I/O message."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _write_error(target: Path, e: BaseException, kept: str) -> CheckpointError:
    cause = "no space left on device" if _is_disk_full(e) else f"cannot write ({type(e).__name__}: {e})"
    return CheckpointError(target, f"{cause} while writing checkpoint {target.name}; {kept}")


def _fsync(path: Path, directory: bool = False) -> None:
    if directory and os.name == "nt":  # Windows cannot open a folder for fsync; NTFS renames are journaled
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Undo what an interrupted save / prune left behind (only this run's trainer writes ``root``)."""
    for child in root.iterdir():
        m = _REPLACED.match(child.name)
        if m:
            named = root / m.group(1)
            if named.exists():
                shutil.rmtree(child, ignore_errors=True)
            else:  # killed between the two renames of a same-step overwrite: the old copy is complete
                os.replace(child, named)
        elif _LEFTOVER.match(child.name):
            shutil.rmtree(child, ignore_errors=True)


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer_state: dict,
    keep: int,
) -> Path:
    """Write ``step-<step>`` atomically (see the module docstring), then prune to the newest ``keep``.

    Raises :class:`CheckpointError` (previous checkpoints untouched, no temporary folder left) when
    the write fails or a tensor is NaN/Inf."""
    from safetensors.torch import save_file

    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    target = root / f"step-{step:08d}"
    previous = [p for s, p in list_checkpoints(output_dir) if s != step]
    kept = f"previous checkpoint {previous[-1].name} kept" if previous else "no previous checkpoint"
    bad = _non_finite(tensors)
    if bad is not None:
        raise CheckpointError(target, f"not saved: tensor {bad} holds NaN/Inf; {kept}")
    rng_tensors, rng_json = rng_states()
    try:
        tmp = make_temp_dir(root, prefix=f".{target.name}.")  # umask's mode, not mkdtemp's 0700
    except OSError as e:
        raise _write_error(target, e, kept) from e
    try:
        lora, opt, rng = (tmp / name for name in DATA_FILES)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.fspath(lora))
        with open(opt, "wb") as f:  # a file object: disk-full surfaces as OSError(ENOSPC), not a zip-writer assert
            torch.save(optimizer_state, f)
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, os.fspath(rng))
        apply_umask_modes(tmp)  # safetensors writes 0600 files
        files = {}
        for file in (lora, opt, rng):
            _fsync(file)
            files[file.name] = _file_record(file)
        state = dict(trainer_state, step=step, rng=rng_json, files=files)
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            f.write(json.dumps(state, indent=1, default=str))
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp, directory=True)
        if target.exists():
            replaced = root / f".{target.name}.replaced"
            os.replace(target, replaced)
            os.replace(tmp, target)
            _fsync(root, directory=True)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync(root, directory=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):  # KeyboardInterrupt / SystemExit: not a write problem
            raise
        raise _write_error(target, e, kept) from e
    for old_step, path in list_checkpoints(output_dir)[:-keep]:
        if old_step != step:
            doomed = root / f".step-{old_step:08d}.deleting"
            try:
                os.replace(path, doomed)  # atomic: never a half-deleted folder under a valid name
            except OSError as e:
                warnings.warn(f"could not prune old checkpoint {path}: {e}", CheckpointWarning, stacklevel=2)
                continue
            shutil.rmtree(doomed, ignore_errors=True)
    return target


def _verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def set_aside_newer(output_dir: str | os.PathLike, step: int) -> Path | None:
    """Resuming from step ``step`` abandons the run's usable checkpoints after it (a resume from an older checkpoint,
    e.g. after a divergence): they move to ``checkpoints/abandoned-<time>/`` — nothing is deleted — so that "latest"
    (``--resume``) and pruning follow the resumed run. Damaged ones stay: "latest" skips them, and the resumed run
    replaces each when it reaches its step (the same-step overwrite of :func:`save_checkpoint`). Returns that folder,
    or None when nothing was moved."""
    newer = [path for s, path in list_checkpoints(output_dir) if s > step and _verifies(path)]
    if not newer:
        return None
    root = checkpoints_dir(output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = next(root / name for name in [f"abandoned-{stamp}"] + [f"abandoned-{stamp}-{i}" for i in range(2, 1000)]
                if not (root / name).exists())
    dest.mkdir()
    for path in newer:
        name = path.name if _NAME.match(path.name) else _REPLACED.match(path.name).group(1)
        os.replace(path, dest / name)
    _fsync(root, directory=True)
    warnings.warn(f"resuming from step {step}: the {len(newer)} later checkpoint(s) of the run it continues "
                  f"({', '.join(p.name for p in newer)}) were moved to {dest}; --resume now follows this run",
                  CheckpointWarning, stacklevel=2)
    return dest


def resolve_resume(output_dir: str | os.PathLike, resume: str | os.PathLike | bool | None) -> Path | None:
    """``True``/``"latest"`` → newest *usable* checkpoint of ``output_dir`` (None if there is none;
    damaged ones are skipped with a :class:`CheckpointWarning`; :class:`CheckpointError` if all are
    damaged); a path → that folder, verified (:class:`CheckpointError` naming the problem)."""
    if resume is None or resume is False:
        return None
    if resume is True or str(resume) == "latest":
        return _usable_latest(output_dir)
    path = Path(resume)
    if not path.is_absolute() and not path.exists() and (checkpoints_dir(output_dir) / path).exists():
        path = checkpoints_dir(output_dir) / path
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(path, "not a complete checkpoint folder (no trainer_state.json)")
    verify_checkpoint(path)
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint folder was saved at."""
    return int(read_state(path)["step"])


def read_state(path: str | os.PathLike) -> dict:
    """A checkpoint's ``trainer_state.json`` alone (the resume check runs on it before the run's setup)."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(Path(path) / STATE_FILE, f"cannot read ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(os.fspath(path / "lora.safetensors"))
        rng = load_file(os.fspath(path / "rng.safetensors"))
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # OSError, SafetensorError, zip / unpickling errors, JSON, missing keys
        raise CheckpointError(path, f"cannot read checkpoint ({type(e).__name__}: {e})") from None
    return Checkpoint(path=path, step=int(state["step"]), tensors=tensors, optimizer=optimizer, state=state, rng=rng)
