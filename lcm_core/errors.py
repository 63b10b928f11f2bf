"""User-facing errors. Every message names the file (or object) and the problem.

The CLI prints ``error: <source>: <problem>`` and exits 2; nodes raise them so
ComfyUI shows them on the node; the trainer stops with them.
"""
from __future__ import annotations

import os


class LcmLoraError(Exception):
    """Base class: ``source`` is a path or name, ``problem`` a one-line explanation."""

    def __init__(self, source: str | os.PathLike | None, problem: str):
        self.source = os.fspath(source) if source is not None else None
        self.problem = problem
        super().__init__(f"{self.source}: {problem}" if self.source else problem)


class AdapterFileError(LcmLoraError):
    """An adapter file or folder is unreadable, corrupt, or not a LoRA we understand."""


class ArchitectureMismatchError(LcmLoraError):
    """Two things that must share a base architecture do not (names both)."""

    def __init__(self, source, expected: str, found: str, detail: str = ""):
        self.expected = expected
        self.found = found
        msg = f"architecture mismatch: expected {expected}, found {found}"
        super().__init__(source, msg + (f" ({detail})" if detail else ""))


class ConfigError(LcmLoraError):
    """A bad configuration value (trainer config, CLI argument, node input)."""


class OutputExistsError(LcmLoraError):
    """Refusing to overwrite an existing output without an explicit force/overwrite."""
