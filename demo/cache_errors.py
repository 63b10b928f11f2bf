"""Reading a model back from the demo's cache: an unreadable entry becomes an error that says what to do.

The demo writes every cache entry atomically (a finished file or folder, or none), so a damaged entry was damaged
afterwards (disk, a copy, a hand edit). The reader's own error (which file, what is wrong) is kept and told how to
recover: delete that entry, or point ``--cache-dir`` elsewhere, and the next run builds it again.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def reading_cache_entry(entry: str | Path, what: str):
    """Inside the block, a :class:`~lcm_core.errors.LcmLoraError` (or a state-dict mismatch, ``RuntimeError``) is
    raised again as an ``LcmLoraError`` naming the same file plus the cache ``entry`` to delete; ``what`` names the
    model ("LCM-LoRA", "style LoRA", …)."""
    from ..lcm_core.errors import LcmLoraError

    try:
        yield
    except LcmLoraError as e:
        raise LcmLoraError(e.source, f"{e.problem} — {_advice(entry, what)}") from None
    except RuntimeError as e:  # torch's load_state_dict: missing / unexpected keys, shape mismatch
        raise LcmLoraError(entry, f"does not fit the demo's model ({str(e).splitlines()[0]}) — "
                                  f"{_advice(entry, what)}") from None


def _advice(entry, what: str) -> str:
    return (f"the demo's cached {what}: delete {entry} (or pass another --cache-dir) and the next run "
            f"builds it again")
