"""CPU thread defaults for the command-line tools (``lcm-lora train`` / ``demo``).

PyTorch's CPU kernels run on an OpenMP pool of one thread per core. With libgomp's default
wait policy the pool's threads spin for a while after each parallel region; on a machine that
is busy with other work (ComfyUI sampling, other jobs) the spinning threads compete with the
work of others and with each other, and a 2-thread run can become many times slower than a
fair share. ``OMP_WAIT_POLICY=PASSIVE`` makes idle pool threads sleep instead. It must be set
before torch (and its OpenMP runtime) is loaded, so the CLI entry points call
:func:`configure_before_torch` first; a value set by the user is kept.

Without ``--threads`` the thread count is one per core that is idle when the run starts
(:func:`default_threads`, at most torch's default), so a run started next to busy work does not
fight it for cores. Measurements behind the defaults: ``benchmarks/threads/bench_threads.py`` and BENCHMARKS.md
("CPU threads").
"""
from __future__ import annotations

import os

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = "PASSIVE"


def configure_before_torch() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it (no effect once torch is imported)."""
    os.environ.setdefault(WAIT_POLICY_ENV, DEFAULT_WAIT_POLICY)


def busy_cores(window: float = 0.25) -> float | None:
    """CPU cores busy with other work right now: /proc/stat sampled over ``window`` seconds
    (the load average lags by a minute); None where /proc/stat is unavailable."""
    import time

    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def default_threads(max_threads: int) -> int:
    """Threads for a run that gets no ``--threads``: one per core that is idle now (at least 1, at
    most torch's default). Measured (BENCHMARKS.md, "CPU threads"): on a busy 2-core machine a
    2-thread run is slower than a 1-thread run even with passive waiting, and several times slower
    with spinning threads; on an idle one 2 threads are faster."""
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            return max_threads
    cores = os.cpu_count() or max_threads
    return max(1, min(max_threads, int(cores - busy + 0.5)))


def apply_thread_default(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` if given (must be >= 1); otherwise :func:`default_threads`.
    Returns the thread count in effect."""
    import torch

    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    else:
        torch.set_num_threads(default_threads(torch.get_num_threads()))
    return torch.get_num_threads()
