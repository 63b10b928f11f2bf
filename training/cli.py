"""``lcm-lora train`` — the command-line front end of :func:`lcm_lora.training.trainer.train`.

    lcm-lora train --config FILE [--output DIR] [--resume [CKPT]] [--nproc N] [--threads N] [--no-progress] [key=value ...]
    lcm-lora train --output DIR --resume [key=value ...]
    lcm-lora train --print-schema
    lcm-lora train --config FILE --estimate-memory [key=value ...]

``key=value`` overrides any config key: dotted (``lcd.w_min=3``), a unique leaf name
(``max_steps=300``) or a shorthand (``teacher=PATH``, ``data=FOLDER``, ``prompts=FILE``).
``--resume`` continues the run in ``--output`` with its own saved ``DIR/config.yaml``; ``--config``
may be left out, and a config given again is merged on top (keys edited in it since the run
started take effect; ``null`` keys keep the run's values); ``key=value`` overrides come last.
Multi-GPU / multi-node: launch this command with ``torchrun --nproc_per_node N [--nnodes M ...]
-m lcm_lora.training ...`` (README, "Multi-node training"); ``--nproc N`` starts N local processes
itself (CPU: gloo).

Exit status: 0 finished, 2 bad input (``error: <file>: <problem>``), 3 diverged (non-finite
loss; last good checkpoint kept), 130 interrupted by SIGINT/SIGTERM (checkpoint saved).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` sub-command on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="distil an LCM-LoRA from a teacher checkpoint (headless trainer)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_train)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML config (see configs/*.yaml and --print-schema); "
                        "optional with --resume (the run's own config.yaml is used)")
    parser.add_argument("--print-schema", action="store_true", help="print every config key with its default and exit")
    parser.add_argument("--output", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from the newest checkpoint in the run folder, or from CKPT")
    parser.add_argument("--nproc", type=int, default=1, help="start N local processes (DDP; gloo on CPU)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: 1 for the training loop of a small UNet on the CPU, else one per core; idle threads sleep, see BENCHMARKS.md 'CPU threads')")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks and library warnings")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (events.jsonl is still written)")
    parser.add_argument("--estimate-memory", action="store_true",
                        help="print the per-component peak memory estimate and exit (no weights loaded; "
                             "works from teacher.arch alone; train.device=cuda|cpu picks the device)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def take_late_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """``key=value`` words after options (``--output RUN max_steps=600``): argparse leaves them
    unparsed (a ``*`` positional is filled once); they are overrides too. Anything else is an error."""
    if not extra:
        return
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or not hasattr(args, "overrides"):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = list(args.overrides or []) + list(extra)


def _run_one(config, output, resume, overrides, progress) -> int:
    from ..lcm_core.errors import LcmLoraError
    from .trainer import NonFiniteLossError, train

    try:
        result = train(config, output, resume=resume, overrides=overrides, progress=progress)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except LcmLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if result.status == "interrupted":
        if int(os.environ.get("RANK", "0")) == 0:  # the process that wrote the checkpoint says where it is
            print(f"interrupted at step {result.final_step}; checkpoint {result.checkpoint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.adapter_path is not None:
        print(f"wrote {result.adapter_path} (step {result.final_step})")
    return EXIT_OK


def _spawned(config, output, resume, overrides, progress) -> None:
    """One process of ``--nproc N``. Its exit code is what one process would return; torch's spawn wrapper would
    turn a KeyboardInterrupt into 0 and keep a crash's traceback in a file, so both are handled here."""
    try:
        code = _run_one(config, output, resume, overrides, progress and int(os.environ.get("RANK", "0")) == 0)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped without waiting for the checkpoint
        code = EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 — a bug: its traceback, where the user sees it
        import traceback

        traceback.print_exc()
        code = 1
    if code != EXIT_OK:
        raise SystemExit(code)  # the parent combines the processes' codes (_combined_exit)


def _combined_exit(codes: list[int]) -> int:
    """One exit code for ``--nproc N``, as one process's: diverged (3) if any process diverged, interrupted (130) if
    every one that stopped early was interrupted, else an error (2)."""
    if all(code == EXIT_OK for code in codes):
        return EXIT_OK
    if EXIT_DIVERGED in codes:
        return EXIT_DIVERGED
    if all(code in (EXIT_OK, EXIT_INTERRUPTED) for code in codes):
        return EXIT_INTERRUPTED
    print(f"error: a training process failed (exit codes {', '.join(map(str, codes))}; its error is above)",
          file=sys.stderr)
    return EXIT_ERROR


def _estimate(config, overrides) -> int:
    """``--estimate-memory``: the estimate of ``training/memory_estimate.py``, without loading weights."""
    from ..lcm_core.errors import LcmLoraError
    from .config import load_config
    from .memory_estimate import check_fits, estimate_memory, free_device_memory

    try:
        cfg = load_config(config, overrides)
        est = estimate_memory(cfg)
    except LcmLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(est.format())
    import torch

    device = torch.device(est.device)
    if device.type == "cpu" or torch.cuda.is_available():
        free = free_device_memory(device)
        if free is not None:
            warning = check_fits(est, free)
            print(f"free on {est.device}: {free / 2**30:.2f} GiB" + (f"\nwarning: {warning}" if warning else " (fits)"))
    return EXIT_OK


def _config_problem(config, overrides, nproc: int) -> str | None:
    """What the config of a new multi-process run gets wrong (the checks every process would make), or None."""
    from ..lcm_core.errors import LcmLoraError
    from .config import load_config
    from .config_rules import check_process_count

    try:
        check_process_count(load_config(config, overrides), nproc)
    except LcmLoraError as e:
        return str(e)
    return None


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` sub-command; returns the exit status."""
    if getattr(args, "print_schema", False):
        from .config_schema import schema_text

        print(schema_text(), end="")
        return EXIT_OK
    if not args.config and not (args.resume and args.output):
        print("error: --config is required (or --output RUN --resume to continue a run, or --print-schema)", file=sys.stderr)
        return EXIT_ERROR
    if args.nproc < 1:
        print(f"error: --nproc: must be >= 1 (processes to start), got {args.nproc}", file=sys.stderr)
        return EXIT_ERROR
    if getattr(args, "estimate_memory", False):
        config = args.config or Path(args.output) / "config.yaml"  # --output RUN --resume: the run's own config
        if not args.config and not config.is_file():
            print(f"error: {config}: no config.yaml of a run here; give --config", file=sys.stderr)
            return EXIT_ERROR
        return _estimate(config, list(args.overrides))
    output = args.output or os.fspath(Path("runs") / Path(args.config).stem)
    from ..lcm_core.cpu_threads import apply_thread_default

    try:
        apply_thread_default(getattr(args, "threads", None))
    except ValueError as e:
        print(f"error: --threads: {e}", file=sys.stderr)
        return EXIT_ERROR
    overrides = list(args.overrides)
    if isinstance(args.resume, str) and "=" in args.resume and not os.path.exists(args.resume):
        # "--resume key=value ...": argparse took the first override as the optional CKPT
        overrides.insert(0, args.resume)
        args.resume = True
    progress = not args.no_progress
    if args.nproc > 1:
        from .distributed import spawn_local

        problem = _config_problem(args.config, overrides, args.nproc) if not args.resume else None
        if problem:  # said once here, not once per process
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_ERROR

        codes = spawn_local(args.nproc, _spawned, (args.config, output, args.resume, overrides, progress),
                            stopping_codes=(EXIT_OK, EXIT_INTERRUPTED))
        return _combined_exit(codes)
    return _run_one(args.config, output, args.resume, overrides, progress)


def main(argv=None) -> int:
    """Stand-alone entry: ``python -m lcm_lora.training --config ...`` (same flags as ``lcm-lora train``)."""
    parser = argparse.ArgumentParser(prog="lcm-lora train", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    take_late_overrides(parser, args, extra)
    return run_train(args)
