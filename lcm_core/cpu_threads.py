"""CPU thread defaults for the command-line tools (``lcm-lora train`` / ``demo``).

PyTorch's CPU kernels run on an OpenMP pool of one thread per core. With libgomp's default
wait policy the pool's threads spin for a while after each parallel region; on a machine that
is busy with other work (ComfyUI sampling, other jobs) the spinning threads compete with the
work of others and with each other, and a 2-thread run becomes many times slower than a fair
share (measured: 4–30× slower than with passive waiting on a busy 2-core machine).
``OMP_WAIT_POLICY=PASSIVE`` makes idle pool threads sleep instead. It must be set before torch
(and its OpenMP runtime) is loaded, so the CLI entry points call :func:`configure_before_torch`
first; a value set by the user is kept.

Thread count: torch's default (one per core) unless ``--threads N``. With passive waiting,
2 threads were as fast as or faster than 1 thread on the busy 2-core machine in 2 of 3
comparisons, and at most 1.2× slower in the third; a "one thread per idle core" rule was tried and
lost up to 2× when other processes were busy (BENCHMARKS.md, "CPU threads";
``benchmarks/threads/bench_threads.py``).
"""
from __future__ import annotations

import os

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def configure_before_torch() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (no effect once torch is imported)."""
    os.environ.setdefault(WAIT_POLICY_ENV, DEFAULT_WAIT_POLICY)


def apply_thread_default(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` if given (must be >= 1); otherwise torch's default (one per
    core). Returns the thread count in effect."""
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
