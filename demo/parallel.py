"""A second process for the demo's independent stages, so both cores of a 2-core machine work.

The demo's work is many small-tensor kernels (a 1 M-parameter UNet at 16×16): a second torch thread
inside one process gains little for training and ~1.6× for batched evaluation (BENCHMARKS.md, "CPU
threads"), while two *independent* stages in two single-thread processes (LCM-LoRA and TCD distillation;
style LoRA and fine-tune; the main evaluation rows and the universal-acceleration + negative-prompt
studies) run side by side. :class:`SideProcess` runs jobs in one spawned worker; with ``jobs=1`` a job runs
inline when its result is asked for, so the order of the work — and every number — is the same either way:
each job does exactly the computation it does in a serial run (same code, same seeds, one torch thread),
only in another process.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def _init_worker(threads: int, quiet: bool) -> None:
    import torch

    if quiet:  # the parent's CLI silenced library noise; a spawned process starts without that
        from ..lcm_core.quiet_libraries import quiet_libraries

        quiet_libraries()
    torch.set_num_threads(threads)
    one_blas_thread()  # for the worker's lifetime


def one_blas_thread():
    """Limit numpy's BLAS (OpenBLAS) to one thread; returns the limiter (a context manager that restores
    the previous limit on exit).

    The demo's numpy work is many small matrices (64×64 covariances: ``eigh`` and products in every FD
    and 100 per bootstrap s.e.). OpenBLAS's pthreads spin between calls: with its default of one thread
    per core a bootstrap s.e. took 2.7 s on the shared 2-core machine, with one thread 0.19 s, the same
    value to the last bit. (threadpoolctl is a scikit-learn dependency, which the demo needs anyway.)"""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _timed(fn, args, kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _timed_in_worker(fn, args, kwargs):
    """:func:`_timed` in the worker; a user-facing error comes back as ``(source, problem)`` (its class
    does not survive pickling) and is raised again here."""
    from ..lcm_core.errors import LcmLoraError

    try:
        return _timed(fn, args, kwargs)
    except LcmLoraError as e:
        return _WorkerError(e.source, e.problem)
    except KeyboardInterrupt:  # a Ctrl-C reached the worker too (one process group): the caller stops as well
        return _WorkerError(None, None, interrupted=True)


class _WorkerError:
    def __init__(self, source, problem, interrupted: bool = False):
        self.source, self.problem, self.interrupted = source, problem, interrupted


class _Inline:
    """A job run in this process when its result is first asked for (``jobs=1``)."""

    def __init__(self, fn, args, kwargs):
        self._call, self._done, self._value = (fn, args, kwargs), False, None

    def result(self):
        if not self._done:
            fn, args, kwargs = self._call
            self._value, self._done = _timed(fn, args, kwargs), True
        return self._value


class SideProcess:
    """One worker process (spawned: a clean torch/OpenMP state) for jobs that need nothing from the
    jobs running here. ``submit(fn, *args)`` returns an object whose ``result()`` is ``(value, seconds)``
    (``seconds``: the job's own wall time in the worker). ``fn`` and its arguments must pickle."""

    def __init__(self, jobs: int = 2, threads: int = 1):
        self.parallel = jobs > 1
        self._pool = None
        self.threads = threads
        if self.parallel:
            import multiprocessing

            from ..lcm_core.quiet_libraries import quiet_libraries_active

            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(threads, quiet_libraries_active()))

    def submit(self, fn, *args, **kwargs):
        if self._pool is None:
            return _Inline(fn, args, kwargs)
        return _Future(self._pool.submit(_timed_in_worker, fn, args, kwargs))

    def close(self, abort: bool = False) -> None:
        """Wait for the running job, or with ``abort`` (an error or Ctrl-C in this process) stop the worker now:
        a side job of minutes (a distillation, the fine-tune) would otherwise run on to its end."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not abort:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor has no public handle
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(abort=exc_type is not None)


class _Future:
    def __init__(self, fut):
        self._fut = fut

    def result(self):
        out = self._fut.result()
        if isinstance(out, _WorkerError):
            if out.interrupted:
                raise KeyboardInterrupt
            from ..lcm_core.errors import LcmLoraError

            raise LcmLoraError(out.source, out.problem)
        return out


@contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (``None``: unchanged); the previous count afterwards."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
