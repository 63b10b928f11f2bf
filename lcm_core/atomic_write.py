"""Crash-safe output: write to a temporary sibling, fsync, then rename over the target.

A reader never sees a half-written file; an existing file is never replaced
unless ``overwrite=True``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LcmLoraError, OutputExistsError


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
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
