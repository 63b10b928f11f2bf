"""``--estimate-memory`` against the measured peak of real training steps (issue: within 15 %).

    python benchmarks/trainer/memory_check.py --model tiny --resolutions 32,64 --batches 1,4      # CPU, seconds
    python benchmarks/trainer/memory_check.py --model mid  --resolutions 64,128 --batches 1,2     # CPU, < 1 min
    python benchmarks/trainer/memory_check.py --model sd15 --resolutions 64,128 --batches 1,2 --workdir /tmp/benchfs
    python benchmarks/trainer/memory_check.py --model sdxl --resolutions 64,128 --batches 1,2 --workdir /tmp/benchfs \\
        --mixed-precision bf16 --gradient-checkpointing                                          # CPU, ~10 GiB
    python benchmarks/trainer/memory_check.py --model sdxl --resolutions 512,1024 --batches 1,2 --device cuda \\
        --mixed-precision fp16 --gradient-checkpointing --workdir /tmp/bench                     # GPU

    python benchmarks/trainer/memory_check.py --model tiny --points 32:2 --set lcd.objective=pcm \
        --set lcd.adversarial_weight=0.1                               # PCM's adversarial loss (discriminator)

Each (resolution, batch) runs in its own fresh process (``--points 32:1,64:4`` picks points instead of the grid): ``TrainingSession.setup()`` (latent + text caches
on, so the encoders are released), then the peak over ``--steps`` optimizer steps is measured — on CPU the
peak RSS (VmHWM, reset after setup) minus the RSS after all imports (as ``bench_trainer.py``; glibc set to
return freed memory at once), on CUDA ``max_memory_allocated`` — and compared with
``estimate_memory(cfg)`` for the same config. Models: ``tiny`` (``tiny_models`` SD-like, 32/64 channels),
``mid`` (SD-like, 128/256 channels), ``sd15`` / ``sdxl``
(random-weight full-size folders of ``bench_trainer.build_full_size_teacher``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MID_CHANNELS = (128, 256)


def build_model(model: str, folder: Path) -> Path:
    if (folder / "unet").is_dir():
        return folder
    if model in ("tiny", "mid", "tiny-sdxl"):
        from lcm_lora.training.tiny_models import build_tiny_teacher

        channels = MID_CHANNELS if model == "mid" else (32, 64)
        return build_tiny_teacher(folder, image_size=32, block_out_channels=channels,
                                  variant="sdxl" if model == "tiny-sdxl" else "sd")
    sys.path.insert(0, str(HERE))
    from bench_trainer import build_full_size_teacher

    return build_full_size_teacher({"sd15": "sd1", "sdxl": "sdxl"}[model], folder)


def overrides(a, resolution: int, batch: int) -> list[str]:
    return [f"teacher={a.teacher}", f"data={a.data_root}/data_{resolution}", f"batch_size={batch}",
            f"lora.rank={a.rank}", f"lora.alpha={a.rank}", f"data.resolution={resolution}", "data.buckets=false",
            "data.bucket_step=8", f"train.mixed_precision={a.mixed_precision}",
            f"train.gradient_checkpointing={str(a.gradient_checkpointing).lower()}",
            "data.cache_latents=true", "data.cache_text=true", f"data.cache_dir={a.data_root}/cache_{resolution}",
            f"max_steps={a.steps + 1}", "validation.every=0", "checkpoint.every=0", "logging.progress=false",
            "logging.memory_estimate=false", f"train.device={a.device}", "optim.learning_rate=1e-4", *a.set]


def _imports(a) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_trainer import _preimport

    torch.set_num_threads(a.threads)
    _preimport()
    import lcm_lora.training.memory_estimate  # noqa: F401


def worker(a) -> dict:
    """Measure one (resolution, batch): in a process whose only prior work is the imports."""
    import torch

    from bench_trainer import _peak_rss_mib, _reset_peak_rss, _rss_mib

    from lcm_lora.training.config import load_config
    from lcm_lora.training.distributed import init_distributed
    from lcm_lora.training.memory_estimate import estimate_memory
    from lcm_lora.training.trainer import TrainingSession

    base = _rss_mib()
    base_cuda = torch.cuda.memory_allocated() / 2**20 if a.device.startswith("cuda") else 0.0
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", overrides(a, a.resolution, a.batch))
    ctx = init_distributed(cfg.train.device)
    with tempfile.TemporaryDirectory() as out:
        session = TrainingSession(cfg, Path(out), ctx, progress=False).setup()
        captions = len({c for r in session.data.records for c in r.captions})
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        for _ in range(a.steps):
            session.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
            measured = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
        else:
            measured = _peak_rss_mib() - base
    est = estimate_memory(cfg, str(ctx.device), text_cache_entries=captions + 1, both_modes=False)
    return {"resolution": a.resolution, "batch": a.batch, "measured_mib": measured, "estimate_mib": est.total / 2**20,
            "components_mib": {c.name: c.bytes / 2**20 for c in est.components}, "device": str(ctx.device)}


def run(a) -> list[dict]:
    from lcm_lora.training.tiny_models import write_tiny_dataset

    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lcm_memcheck_"))
    a.teacher = build_model(a.model, work / f"teacher_{a.model}")
    a.data_root = work / f"memdata_{a.model}"
    for resolution in sorted({r for r, _ in a.points}):
        data = a.data_root / f"data_{resolution}"
        if not data.is_dir():
            write_tiny_dataset(data, n=2 * max(b for _, b in a.points), size=resolution)
    rows = []
    for resolution, batch in a.points:
        cmd = [sys.executable, __file__, "--worker", "--model", a.model, "--teacher", str(a.teacher),
               "--data-root", str(a.data_root), "--points", f"{resolution}:{batch}", "--rank", str(a.rank),
               "--mixed-precision", a.mixed_precision, "--steps", str(a.steps), "--device", a.device, "--threads", str(a.threads)]
        if a.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        for item in a.set:
            cmd += ["--set", item]
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"worker failed:\n{proc.stderr[-4000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["error"] = row["estimate_mib"] / row["measured_mib"] - 1
        rows.append(row)
        print(f"{a.model} {row['resolution']:5d} px batch {row['batch']}: measured {row['measured_mib']:9.1f} MiB, "
              f"estimate {row['estimate_mib']:9.1f} MiB, error {100 * row['error']:+6.1f} %", flush=True)
    return rows


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=("tiny", "tiny-sdxl", "mid", "sd15", "sdxl"))
    p.add_argument("--resolutions", default="32,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--batches", default="1,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 8 tiny, 32 mid, 64 full size)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps measured (2: both steps of the adversarial alternation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more trainer overrides, e.g. --set lcd.solver_guidance=false --set lcd.objective=pcm "
                   "--set lcd.adversarial_weight=0.1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--dry-run", action="store_true", help="check the arguments, print the plan, exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--data-root", help=argparse.SUPPRESS)
    p.add_argument("--points", default=None, help="RES:BATCH,... instead of the --resolutions x --batches grid")
    a = p.parse_args(argv)
    a.points = ([tuple(int(v) for v in x.split(":")) for x in a.points.split(",")] if a.points
                else [(r, b) for r in a.resolutions for b in a.batches])
    a.rank = a.rank or {"tiny": 8, "tiny-sdxl": 8, "mid": 32}.get(a.model, 64)
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.worker:  # one (resolution, batch) per fresh process
        _imports(a)
        (a.resolution, a.batch), = a.points
        print(json.dumps(worker(a)), flush=True)
        return 0
    if a.dry_run:
        print(f"dry run: model={a.model} points={a.points} rank={a.rank} "
              f"mixed_precision={a.mixed_precision} checkpointing={a.gradient_checkpointing} device={a.device}")
        return 0
    rows = run(a)
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst |error| {100 * worst:.1f} % (goal <= 15 %)")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
