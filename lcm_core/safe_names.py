"""Safe output file names from untrusted text (a node widget, a CLI argument, adapter metadata).

:func:`sanitize_filename` turns any string into one harmless file-name component, or raises
:class:`ConfigError` when nothing usable is left. It removes what could move the file elsewhere
or hide what it is: path separators (``/``, ``\\``), drive/stream colons, ``..`` and leading
dots, control and invisible format characters (NUL, newlines, bidi overrides such as U+202E
that fake an extension), the characters Windows forbids (``<>:"|?*``), trailing dots/spaces
(dropped by Windows), and device names Windows reserves (``CON``, ``NUL``, ``COM1`` … even with
an extension: ``nul.safetensors``); names longer than 255 UTF-8 bytes (the usual file-system
limit) are shortened, keeping the extension. Rules follow Microsoft's "Naming Files, Paths, and
Namespaces" and POSIX ``NAME_MAX``.

:func:`safe_output_path` resolves a possibly nested name (``styles/my lora``) inside a root folder:
absolute paths and ``..`` components are refused (not silently rewritten: that is an attack or a
mistake worth an error), every component is sanitised, and the resolved path — symlinks followed —
must stay inside the root.

Reading what a client names (the trainer panel's teacher, data folder, validation image):
:func:`check_relative_name` *refuses* (never rewrites) absolute paths, ``..``, control characters
and over-long names; :func:`resolve_in_roots` finds the name in the first of several root folders
and refuses a symlink whose real target leaves its root (:func:`is_inside`); :func:`check_folder_links`
refuses a folder holding such a link. Unsafe names raise :class:`UnsafeNameError`, names no root
holds :class:`NameNotFoundError` (both :class:`ConfigError`).

This module is the project's one place for path confinement: the save node, the trainer panel and
the trainer's output file name all go through it.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ConfigError

FS_NAME_BYTES = 255  # one path component on ext4, XFS, APFS, NTFS
TEMP_NAME_BYTES = 14  # atomic_write's temporary sibling ".<name>.XXXXXXXX.tmp" adds 1 + 1 + 8 + 4 bytes
MAX_NAME_BYTES = FS_NAME_BYTES - TEMP_NAME_BYTES  # a name whose temporary sibling fits the file system too
MAX_NAME_CHARS = 1024  # a client-supplied relative name (several components)
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
    | {f"COM{c}" for c in "¹²³"} | {f"LPT{c}" for c in "¹²³"}
)
_FORBIDDEN = re.compile(r'[/\\:<>"|?*]')
_EDGES = re.compile(r"^[\s.]+|[\s.]+$")  # leading dots/space (hidden, '..'); trailing dots/space


class UnsafeNameError(ConfigError):
    """A name that would leave its folder or hide what it is (absolute, ``..``, control character, link out)."""


class NameNotFoundError(ConfigError):
    """A safe name that none of the root folders holds."""


def _drop_invisible(text: str) -> str:
    # Cc: control (NUL, \n, \x7f…); Cf: format (bidi overrides, zero-width joiners, BOM); Zl/Zp: line/para separators
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs"))


def shorten_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` UTF-8 bytes at a character boundary, its extension kept."""
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 32:
        stem, ext = name, ""
    budget = max_bytes - (len(ext.encode("utf-8")) + 1 if ext else 0)
    out = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .")
    return f"{out}.{ext}" if ext else out


def sanitize_filename(name: str, *, max_bytes: int = MAX_NAME_BYTES, replacement: str = "_") -> str:
    """One safe file-name component made from ``name`` (see the module docstring).

    Benign names come back unchanged; the result never contains a separator, never is ``.`` /
    ``..``, never starts with a dot, never is a Windows device name, and fits in ``max_bytes``.
    Raises :class:`ConfigError` if ``name`` is not a string or nothing usable remains.
    """
    if not isinstance(name, str):
        raise ConfigError("file name", f"must be text, got {type(name).__name__}")
    original = name
    name = unicodedata.normalize("NFC", _drop_invisible(name))
    name = _FORBIDDEN.sub(replacement, name)
    name = _EDGES.sub("", name)  # no hidden files, no '..', no tail Windows would drop
    name = _EDGES.sub("", shorten_name(name, max_bytes))
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        name = _EDGES.sub("", shorten_name(replacement + name, max_bytes))
    if not name:
        raise ConfigError(repr(original)[:80], "file name is empty after removing unsafe characters")
    return name


def safe_relative_path(name: str, *, suffix: str | None = None, allow_subfolders: bool = True) -> str:
    """``/``-joined, sanitised relative path for ``name`` (``\\`` counts as ``/``).

    Refuses absolute paths (``/x``, ``C:\\x``, ``\\\\server\\share``) and ``..`` components with
    :class:`ConfigError`; ``suffix`` (e.g. ``.safetensors``) is appended unless already there.
    """
    if not isinstance(name, str):
        raise ConfigError("file name", f"must be text, got {type(name).__name__}")
    text = _drop_invisible(name).strip()
    unified = text.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise ConfigError(repr(name)[:80], "must be a relative name, not an absolute path")
    parts = [p for p in unified.split("/") if p.strip() not in ("", ".")]
    if any(p.strip() == ".." for p in parts):
        raise ConfigError(repr(name)[:80], "must not contain '..' (it would leave the output folder)")
    if not parts:
        raise ConfigError(repr(name)[:80], "file name is empty")
    if len(parts) > 1 and not allow_subfolders:
        raise ConfigError(repr(name)[:80], "must be a plain file name, without folders")
    if suffix and not parts[-1].lower().endswith(suffix.lower()):
        parts[-1] = parts[-1] + suffix
    clean = [sanitize_filename(p) for p in parts[:-1]]
    last = sanitize_filename(parts[-1], max_bytes=MAX_NAME_BYTES)
    if suffix and not last.lower().endswith(suffix.lower()):  # shortened or cleaned away: put it back
        last = shorten_name(last, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix
    return "/".join([*clean, last])


def safe_output_path(root: str | os.PathLike, name: str, *, suffix: str | None = None,
                     allow_subfolders: bool = True) -> Path:
    """Absolute path for ``name`` inside ``root`` (sanitised as :func:`safe_relative_path`).

    The result is resolved (symlinks followed) and must lie inside the resolved ``root``;
    otherwise :class:`ConfigError`. Nothing is created.
    """
    root_real = Path(os.path.realpath(root))
    rel = safe_relative_path(name, suffix=suffix, allow_subfolders=allow_subfolders)
    full = Path(os.path.realpath(root_real / rel))
    if full == root_real or root_real not in full.parents:
        raise ConfigError(rel, f"resolves outside the output folder {root_real} (symbolic link?)")
    return full


# ------------------------------------------------------------------ names that must already exist
_INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs")


def check_relative_name(name: Any, what: str, *, max_chars: int = MAX_NAME_CHARS) -> str:
    """Validate a client-supplied relative name; return it with ``/`` separators.

    Refused with :class:`UnsafeNameError` (``str(e)`` starts with ``what``): non-strings, empty
    names, NUL / control / invisible format characters, absolute paths (``/x``, ``C:\\x``,
    ``\\\\server``), ``..`` components, names over ``max_chars`` characters.
    """
    if not isinstance(name, str):
        raise UnsafeNameError(what, f"must be a string, got {type(name).__name__}")
    if not name.strip():
        raise UnsafeNameError(what, "must not be empty")
    if len(name) > max_chars:
        raise UnsafeNameError(what, f"is longer than {max_chars} characters")
    bad = [c for c in name if unicodedata.category(c) in _INVISIBLE]
    if bad:
        raise UnsafeNameError(what, f"contains a control character ({ascii(bad[0])}); refused")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified) or os.path.isabs(name):
        raise UnsafeNameError(what, f"{name!r} is an absolute path; give a name relative to its folder")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if any(p.strip() == ".." for p in parts):
        raise UnsafeNameError(what, f"{name!r} contains '..'; names must stay inside their folder")
    if not parts:
        raise UnsafeNameError(what, f"{name!r} names no file")
    return "/".join(parts)


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True if the real location of ``path`` (symlinks followed) is ``root``'s real location or below it."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([real, real_root]) == real_root
    except ValueError:  # different drives (Windows)
        return False


def resolve_in_roots(roots: Iterable[str | os.PathLike], name: Any, what: str, kind: str = "file") -> Path:
    """Real path of ``name`` found in the first of ``roots`` that has it (``kind``: ``file`` | ``dir``).

    :class:`UnsafeNameError` for an unsafe name or a symlink whose target leaves its root folder;
    :class:`NameNotFoundError` when no root holds it.
    """
    roots = [os.fspath(r) for r in roots]
    rel = check_relative_name(name, what)
    for root in roots:
        candidate = Path(root, *rel.split("/"))
        if not os.path.lexists(candidate):
            continue
        if not is_inside(candidate, root):
            raise UnsafeNameError(what, f"{rel!r} is a symbolic link that leaves {root}; refused")
        real = Path(os.path.realpath(candidate))
        if kind == "file" and real.is_file() or kind == "dir" and real.is_dir():
            return real
    raise NameNotFoundError(what, f"{rel!r} is not a {'file' if kind == 'file' else 'folder'} in "
                                  f"{', '.join(roots) or '(no folder configured)'}")


def check_folder_links(folder: str | os.PathLike, root: str | os.PathLike, what: str, max_entries: int = 200_000) -> None:
    """Refuse (:class:`UnsafeNameError`) a folder holding a symbolic link whose target leaves ``root``
    (a reader of every file of a data or model folder would follow it out), or more than ``max_entries`` entries."""
    folder = Path(folder)
    count = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            count += 1
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not is_inside(path, root):
                rel = os.path.relpath(path, folder).replace(os.sep, "/")
                raise UnsafeNameError(what, f"{rel!r} inside {folder.name!r} is a symbolic link that leaves {root}; refused")
        if count > max_entries:
            raise UnsafeNameError(what, f"{folder.name!r} holds more than {max_entries} entries")


def walk_confined(root: str | os.PathLike, max_depth: int) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` below ``root`` without following symlinked folders, skipping hidden entries, at most
    ``max_depth`` folders deep; yields (dirpath, sorted dirnames, sorted filenames)."""
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = os.path.relpath(dirpath, root).count(os.sep) + (0 if dirpath == root else 1)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
        yield dirpath, dirnames, sorted(f for f in filenames if not f.startswith("."))


def name_in_root(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path``'s ``/``-separated name relative to ``root`` (both resolved), as ComfyUI's file lists show it."""
    return os.path.relpath(os.path.realpath(path), os.path.realpath(root)).replace(os.sep, "/")
