"""Multi-process training on torch.distributed (DDP): launched by ``torchrun``, ``accelerate launch``
or :func:`spawn_local`; one process per GPU (NCCL) or several CPU processes (gloo).

Each process draws the same global batch and its randomness, works on its rows
(``rank * B/W .. (rank+1) * B/W``), and DDP averages the LoRA gradients, so W processes with
B/W rows each take the same steps as one process with B rows (up to float summation order).
The frozen base weights are identical on every rank (same files, same seed), so DDP's initial
parameter broadcast is skipped where torch supports it.
"""
from __future__ import annotations

import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..lcm_core.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduce mean of a tensor over processes (identity for one process)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (e.g. a stop request seen by one rank)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def shutdown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError("train.device", f"key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", f"key 'train.device' is {name!r} but this torch sees no CUDA device "
                          f"(torch {torch.__version__}): use auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError("train.device", f"key 'train.device' is {name!r} but MPS is not available here: use auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("train.device", f"key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return device


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group described by the launcher's environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_name, local_rank)
    if world <= 1:
        return DistContext(device=device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device, owns_group=owns)


def wrap_ddp(module: torch.nn.Module, ctx: DistContext):
    """DDP over the trainable (LoRA) parameters; identity for one process."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    import inspect

    accepted = inspect.signature(DDP.__init__).parameters
    kwargs = dict(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, gradient_as_bucket_view=True)
    if "init_sync" in accepted:  # identical frozen weights on every rank: no start-up broadcast of the UNet
        kwargs["init_sync"] = False
    # the UNet's buffers are constants: no per-forward buffer broadcast
    if "forward_sync_buffers" in accepted:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    return DDP(module, **kwargs)


def no_sync(module, sync: bool):
    """DDP's ``no_sync`` on gradient-accumulation micro-steps that do not end an optimizer step."""
    if sync or not hasattr(module, "no_sync"):
        return nullcontext()
    return module.no_sync()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(local_rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world)
    )
    fn(*args)


def spawn_local(nprocs: int, fn, args: tuple = (), start_method: str = "spawn", stopping_codes: tuple = (0,),
                grace_period: float = 30.0) -> list[int]:
    """Run ``fn(*args)`` in ``nprocs`` local processes forming one process group (CPU or one GPU each); returns
    their exit codes.

    Unlike ``torch.multiprocessing``'s own join, a process that exits with one of ``stopping_codes`` (finished, or
    interrupted after its checkpoint) lets the others stop on their own, so every exit code is known; after any
    other exit the rest get ``grace_period`` seconds, then SIGTERM (a dead peer would leave them waiting in a
    collective). A SIGINT / SIGTERM to this process is passed on to them as SIGTERM (they checkpoint and stop; a
    terminal's Ctrl-C reaches them already, and SIGTERM after it does not count as a second Ctrl-C).
    """
    import multiprocessing.connection
    import signal
    import threading
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(_spawn_entry, args=(nprocs, _free_port(), fn, args), nprocs=nprocs, join=False,
                                 start_method=start_method)
    processes = context.processes

    def terminate_alive(*_):
        for process in processes:
            if process.is_alive():
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, terminate_alive) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        pending = {process.sentinel: process for process in processes}
        deadline = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait(list(pending), timeout=timeout)
            if not ready:  # the grace period is over
                terminate_alive()
                for process in pending.values():
                    process.join(grace_period)
                    if process.is_alive():
                        process.kill()
                        process.join()
                break
            for sentinel in ready:
                process = pending.pop(sentinel)
                process.join()
                if process.exitcode not in stopping_codes and deadline is None:
                    deadline = time.monotonic() + grace_period
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [process.exitcode for process in processes]
