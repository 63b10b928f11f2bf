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
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from .errors import ConfigError

MAX_NAME_BYTES = 255
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
    | {f"COM{c}" for c in "¹²³"} | {f"LPT{c}" for c in "¹²³"}
)
_FORBIDDEN = re.compile(r'[/\\:<>"|?*]')
_EDGES = re.compile(r"^[\s.]+|[\s.]+$")  # leading dots/space (hidden, '..'); trailing dots/space


def _drop_invisible(text: str) -> str:
    # Cc: control (NUL, \n, \x7f…); Cf: format (bidi overrides, zero-width joiners, BOM); Zl/Zp: line/para separators
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs"))


def _truncate(name: str, max_bytes: int) -> str:
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
    name = _EDGES.sub("", _truncate(name, max_bytes))
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        name = _EDGES.sub("", _truncate(replacement + name, max_bytes))
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
        last = _truncate(last, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix
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
