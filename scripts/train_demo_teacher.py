"""Train the demo's digit teacher and pack it as ``demo/assets/digits_teacher.safetensors``.

Reproduces the shipped file (``demo/assets/README.md`` has the exact command it was made with):

    python scripts/train_demo_teacher.py --device cuda --out demo/assets/digits_teacher.safetensors

Runs on a CPU too (``--device cpu``), the default 4000 steps take 30-60 minutes on one CPU core; the demo
itself only retrains a teacher when asked (``lcm-lora demo --retrain-teacher``), with a
CPU-sized step count. ``--eval N`` prints class accuracy / FD of DDIM samples afterwards.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    from lcm_lora.demo.teacher_training import TeacherSettings

    d = TeacherSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="packed teacher file (.safetensors)")
    p.add_argument("--folder", type=Path, default=None, help="also keep the diffusers teacher folder here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--text-encoder-lr", type=float, default=d.text_encoder_lr)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--snr-gamma", type=float, default=d.snr_gamma, help="0 disables Min-SNR weighting")
    p.add_argument("--channels", default=",".join(map(str, d.block_out_channels)), help="UNet block_out_channels")
    p.add_argument("--layers-per-block", type=int, default=d.layers_per_block)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--warmup", type=int, default=d.warmup_steps)
    p.add_argument("--snapshot-every", type=int, default=0, help="write EMA snapshots to <out>.snapshot/ every N steps")
    p.add_argument("--stop-after", type=int, default=None, help="stop at this step (LR schedule still spans --steps)")
    p.add_argument("--eval", type=int, default=0, metavar="N", help="evaluate N DDIM samples per step count afterwards")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    import torch

    from lcm_lora.demo.teacher_assets import pack_teacher
    from lcm_lora.demo.teacher_training import train_teacher

    if a.threads:
        torch.set_num_threads(a.threads)
    s = TeacherSettings(
        steps=a.steps, batch_size=a.batch_size, learning_rate=a.lr, text_encoder_lr=a.text_encoder_lr,
        ema_decay=a.ema_decay, warmup_steps=a.warmup, snr_gamma=a.snr_gamma or None, seed=a.seed, layers_per_block=a.layers_per_block,
        block_out_channels=[int(c) for c in a.channels.split(",")],
    )
    cmd = "python scripts/train_demo_teacher.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.folder or Path(tmp) / "teacher"
        start = time.time()
        train_teacher(folder, s, device=a.device, progress=not a.no_progress, overwrite=True,
                      snapshot_every=a.snapshot_every, snapshot_dir=a.out.with_suffix(".snapshot"), stop_after=a.stop_after)
        print(f"trained in {time.time() - start:.0f}s on {a.device}", flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        pack_teacher(folder, a.out, reproduce=cmd)
        print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.2f} MB)")
        if a.eval:
            print(json.dumps(quick_eval(folder, a.eval, a.device), indent=1))
    return 0


def quick_eval(folder, n, device, steps=(1, 2, 4, 8, 32), samplers=("ddim",), guidance=3.0):
    from lcm_lora.demo.evaluate import SamplePlan, build_instruments, load_teacher, sample_rows
    from lcm_lora.demo.teacher_samplers import sample_teacher

    inst = build_instruments(n_floor=n)
    teacher = load_teacher(folder)
    teacher.unet.to(device)
    plan = SamplePlan.make(n)
    cond, uncond = teacher.embed(plan.labels)
    rows = []
    for sampler in samplers:
        def fn(sl, k, sampler=sampler):
            return sample_teacher(teacher.unet, cond[sl].to(device), uncond[sl].to(device), plan.noise[sl].to(device),
                                  sampler, k, teacher.scheduler_config, guidance)
        r, _ = sample_rows("teacher", sampler, steps, fn, plan, inst, keep_images=False)
        rows += r
    return {"calibration": inst.calibration, "rows": rows}


if __name__ == "__main__":
    raise SystemExit(main())
