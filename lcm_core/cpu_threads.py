"""CPU thread defaults for the command-line tools (``lcm-lora train`` / ``demo``).

PyTorch's CPU kernels run on an OpenMP pool of one thread per core. With libgomp's default
wait policy the pool's threads spin for a while after each parallel region; on a machine that
is busy with other work (ComfyUI sampling, other jobs) the spinning threads compete with the
work of others and with each other, and a 2-thread run becomes many times slower than a fair
share (measured: 4–30× slower than with passive waiting on a busy 2-core machine).
``OMP_WAIT_POLICY=PASSIVE`` makes idle pool threads sleep instead. It must be set before torch
(and its OpenMP runtime) is loaded, so the CLI entry points call :func:`configure_before_torch`
first; a value set by the user is kept.

Thread count, per workload, unless ``--threads N`` (or ``OMP_NUM_THREADS``) says otherwise:

* batched evaluation (the demo's samplers, larger models): torch's default, one thread per core;
* CPU training of a small UNet (below :data:`SMALL_UNET_PARAMS`, e.g. the digit teacher of the demo
  and ``configs/tiny_cpu.yaml``): **one thread** while the optimizer loop runs
  (:func:`training_threads`). Its many small kernels gain nothing from a second thread and pay a
  sleep/wake-up per parallel region with passive waiting: 2 threads were 2.9× slower than spinning on
  an idle machine; 1 thread was the fastest idle and within 2–9 % of the ideal fair share next to two busy
  processes (2 spinning threads: 4.9×).

Measured on a 2-core machine, idle and next to two busy processes (BENCHMARKS.md, "CPU threads";
``benchmarks/threads/bench_threads.py``). A "one thread per idle core" rule was tried and dropped
(it lost up to 2× when other processes were busy).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

SMALL_UNET_PARAMS = 50_000_000  # below this, CPU training runs on one thread (the digit UNet: ~2M; SD1.5: 860M)
_explicit_threads = False

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def configure_before_torch() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (no effect once torch is imported)."""
    os.environ.setdefault(WAIT_POLICY_ENV, DEFAULT_WAIT_POLICY)


def apply_thread_default(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` if given (must be >= 1); otherwise torch's default (one per
    core). Returns the thread count in effect."""
    import torch

    global _explicit_threads
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
        _explicit_threads = True
    return torch.get_num_threads()


def threads_chosen_by_user() -> bool:
    """True after ``--threads N`` or when ``OMP_NUM_THREADS`` is set: then no per-workload default applies."""
    return _explicit_threads or bool(os.environ.get("OMP_NUM_THREADS"))


@contextmanager
def training_threads(model, device):
    """One torch thread for the optimizer loop of a small model on the CPU (see the module docstring);
    the previous count is restored afterwards (the demo evaluates with one thread per core next)."""
    import torch

    small = sum(p.numel() for p in model.parameters()) < SMALL_UNET_PARAMS
    if getattr(device, "type", str(device)) != "cpu" or not small or threads_chosen_by_user():
        yield torch.get_num_threads()
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)
