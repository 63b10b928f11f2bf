"""Crash-safe output: write to a temporary sibling, fsync, then rename over the target.

A reader never sees a half-written file; an existing file is never replaced
unless ``overwrite=True``. ``mkstemp``/``mkdtemp`` create private temporaries (0600 / 0700);
the published file or folder gets the modes an ordinary ``open``/``mkdir`` would give
(0666 / 0777 less the process umask, i.e. 0644 / 0755 under umask 022), so outputs on a shared
ComfyUI install stay readable by other users (:func:`make_temp_file`, :func:`make_temp_dir`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LcmLoraError, OutputExistsError


def current_umask() -> int:
    """The process umask (read from /proc where possible: ``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_file(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """``mkstemp`` in ``folder`` with the umask's file mode (0644 under umask 022), closed."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


def make_temp_dir(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """``mkdtemp`` in ``folder`` with the umask's folder mode (0755 under umask 022)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=folder))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def apply_umask_modes(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the umask's modes: writers such as
    safetensors >= 0.8 create their files 0600 whatever the umask. Symlinks are left alone."""
    mask = current_umask()
    path = Path(path)
    items = [path] + (list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else [])
    for item in items:
        if item.is_symlink():
            continue
        if item.is_dir():
            os.chmod(item, 0o777 & ~mask)
        elif item.is_file():
            executable = os.stat(item).st_mode & 0o100
            os.chmod(item, (0o777 if executable else 0o666) & ~mask)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "already exists; pass --force / overwrite=True to replace it")
    if not path.parent.is_dir():
        raise LcmLoraError(path, f"output folder {path.parent} does not exist")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish_without_clobbering(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist, atomically: ``link`` fails with
    EEXIST instead of replacing, so a writer that appeared meanwhile is never overwritten.
    Filesystems without hard links fall back to check-then-rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(path, "appeared while writing; not overwritten") from None
    except OSError:
        if path.exists():
            raise OutputExistsError(path, "appeared while writing; not overwritten") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to ``path``."""
    path = Path(path)
    _check_target(path, overwrite)
    tmp = make_temp_file(path.parent, prefix=f".{path.name}.")
    try:
        yield tmp
        apply_umask_modes(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_without_clobbering(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_file` for a folder (e.g. a peft adapter folder)."""
    path = Path(path)
    _check_target(path, overwrite)
    tmp = make_temp_dir(path.parent, prefix=f".{path.name}.")
    try:
        yield tmp
        apply_umask_modes(tmp)
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb+") as f:
                    os.fsync(f.fileno())
        if path.exists():
            if not overwrite:
                raise OutputExistsError(path, "appeared while writing; not overwritten")
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
