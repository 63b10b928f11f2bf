"""``lcm-lora demo [--out DIR] [--fast]``: the end-to-end demo and fidelity benchmark on a CPU.

The lead wires :func:`add_demo_parser` into ``cli/main.py``; :func:`run_demo` returns the exit
code (0 ok, 2 for a user-facing :class:`~lcm_core.errors.LcmLoraError`, printed as
``error: <source>: <problem>``).
"""
from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Run the whole LCM-LoRA method on a CPU in minutes, with no downloads: a small text-conditioned
teacher (SD's UNet2DConditionModel + CLIP text encoder + scheduler, trained on scikit-learn's
handwritten digits; weights ship with the package) is distilled into an LCM-LoRA, a TCD adapter
and (full preset) a PCM adapter with the project's trainer, a style LoRA is trained and merged with
each, and every sampler is measured (class accuracy, FD in a digit classifier's feature space, UNet
evaluations, wall time) against the issue-13 goals.
Writes DIR/report.md, report.html, results.json, image grids and plots. Models are cached
(--cache-dir), so a second run only evaluates."""


# the top-level modules of the demo extra and what it pulls in (pyproject.toml: demo = train + these)
DEMO_EXTRA_MODULES = {"sklearn", "matplotlib", "PIL", "threadpoolctl", "diffusers", "transformers", "peft",
                      "accelerate", "scipy", "safetensors", "yaml", "tqdm", "numpy"}


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("demo", help="end-to-end CPU demo: teacher → LCM-LoRA → steps-vs-quality report",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", metavar="DIR", help="report folder (default: ./demo_out)")
    p.add_argument("--fast", action="store_true", help="smaller preset (cold on an idle 2-core machine: 4.7 min, 6.8 on a slower one; full preset 13–21 min): "
                        "fewer samples, steps and samplers, no PCM adapter")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="model cache (default: $XDG_CACHE_HOME/lcm-lora/demo or ~/.cache/lcm-lora/demo)")
    p.add_argument("--samples", type=int, default=None, metavar="N", help="images per configuration (default: preset's)")
    p.add_argument("--retrain-teacher", action="store_true",
                   help="train the digit teacher here instead of using the shipped weights (CPU-sized, ~10+ min)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads, split between the two processes of --jobs 2 (default: one per process "
                        "with --jobs 2; with --jobs 1, 1 while training the small UNet and one per core while evaluating; "
                        "idle threads sleep, see BENCHMARKS.md 'CPU threads')")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the adapters' training and of every sample plan (default 0); the teacher, the style "
                        "LoRA and the fine-tune keep theirs")
    p.add_argument("--jobs", type=int, default=None, choices=(1, 2), metavar="N",
                   help="processes: 2 runs independent stages side by side, one torch thread each (default with 2+ "
                        "cores), 1 runs everything in this process; the results are the same")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="only write the tiny teacher (DIR/teacher) and training data (DIR/data) for "
                        "configs/tiny_cpu.yaml, then exit (seconds)")
    p.add_argument("--force", action="store_true", help="with --export: replace existing DIR/teacher, DIR/data")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks and library warnings")
    p.set_defaults(func=run_demo)
    return p


def run_demo(args) -> int:
    """Run the demo for parsed ``args``; returns the process exit code."""
    import dataclasses

    from ..lcm_core.errors import LcmLoraError

    try:
        from ..lcm_core.cpu_threads import apply_thread_default

        try:
            apply_thread_default(args.threads)
        except ValueError as e:
            raise LcmLoraError("--threads", str(e)) from None
        if getattr(args, "export", None) is not None:
            from .export_assets import export_tiny_assets

            if not args.export.strip():
                raise LcmLoraError("--export", "give the folder to write teacher/ and data/ into")
            paths = export_tiny_assets(args.export, force=getattr(args, "force", False))
            print(f"wrote {paths['teacher']} and {paths['data']}\n"
                  f"next: lcm-lora train --config configs/tiny_cpu.yaml teacher={paths['teacher']} data={paths['data']}")
            return 0
        from .run import PRESETS, run_demo_pipeline

        cfg = PRESETS["fast" if args.fast else "full"]
        changes = {}
        if args.samples is not None:
            if args.samples < 20:
                raise LcmLoraError("--samples", f"need at least 20 images per configuration for FD, got {args.samples}")
            changes["n_samples"] = args.samples
        if args.seed is not None:
            from .goal_d import REFERENCE_SEED_OFFSET  # the largest offset of a sample plan's seed

            top = 2 ** 64 - 1 - REFERENCE_SEED_OFFSET  # torch generators take seeds up to 2**64 - 1
            if not 0 <= args.seed <= top:
                raise LcmLoraError("--seed", f"must be between 0 and {top} (the demo's sample plans use the seed + "
                                             f"up to {REFERENCE_SEED_OFFSET}), got {args.seed}")
            changes["seed"] = args.seed
        if changes:
            cfg = dataclasses.replace(cfg, **changes)
        import os

        jobs = args.jobs if getattr(args, "jobs", None) else (2 if (os.cpu_count() or 1) >= 2 else 1)
        results = run_demo_pipeline(args.out, cfg, cache_dir=args.cache_dir, retrain_teacher=args.retrain_teacher,
                                    progress=not args.quiet, jobs=jobs)
    except LcmLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        if (e.name or "").split(".")[0] not in DEMO_EXTRA_MODULES:
            raise  # not a missing package: a bug, whose traceback is what a report needs
        print(f"error: the demo needs the 'demo' extra (pip install 'comfyui-lcm-lora[demo]'): {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path of --out / --cache-dir / --export that is a file, unwritable, …
        where = e.filename if e.filename is not None else "demo"
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"report: {args.out}/report.md")
    return 0 if results else 1
