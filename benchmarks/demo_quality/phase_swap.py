"""Where does a phased student (PCM) lose its teacher's class accuracy? Teacher and student swapped phase by phase.

A 4-phase PCM adapter maps a latent at a phase edge to the next edge with one DDIM jump of its own x̂0
(PCM, Wang et al. 2024, arXiv 2405.18407, Eq. 6: the edge-to-edge consistency map; ``sample_tcd`` at γ 0
on ``lcm_core.phased_timesteps``). The teacher covers the same phase with ``--substeps`` DDIM steps, guided
with CFG ``--cfg`` where the step's start timestep lies in ``--interval`` (the guidance the adapter was distilled
with, ``lcd.guidance_interval``). A variant is one letter per phase, ``s`` = student, ``t`` = teacher, from the
noise to the image: ``ssss`` is the student's 4-step sample, ``tttt`` the teacher's own, ``ttss`` the teacher on
the first two phases; ``d`` is the teacher with a single DDIM step over the phase (what a hybrid sampler would
spend). Same prompts and noise in every variant (the demo's sample plan), so the differences in
class accuracy tell which phases cost it.

``--on-finetune``: the same on goal (d)'s construction: the teacher is the demo's full fine-tune (bold digits,
unseen by the adapter) and the student that fine-tune with the adapter fused in; each variant then also reports
goal (d)'s metric, the FD to the fine-tune's own DDIM-25 samples (independent noise), as ``tcd_recipes.py``.

Reads a demo cache like ``tcd_recipes.py`` (same ``--cache`` / ``--work``; its references are reused).

    nice -n 5 .venv/bin/python benchmarks/demo_quality/phase_swap.py --cache /tmp/q13cache --work /tmp/q13work \
        --adapter /tmp/q13work/tcd-pcm4-600-gi200-700/tcd_lora.safetensors --interval 200,700 --n 1000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality


def _ddim_jump(x, eps, alpha_from, alpha_to):
    """DDIM (η 0) from ᾱ ``alpha_from`` to ``alpha_to`` with the ε prediction ``eps`` (Song et al. 2021, Eq. 12)."""
    x0 = (x.double() - (1 - alpha_from).sqrt() * eps.double()) / alpha_from.sqrt()
    return (alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps.double()).float()


@torch.no_grad()
def sample_swapped(variant: str, teacher_unet, student_unet, cond, uncond, noise, alphas_cumprod, edges,
                   g: float, interval: tuple[int, int], substeps: int):
    """One sample batch: phase i (edge ``edges[i]`` → ``edges[i+1]``; the last edge is timestep 0, where diffusers'
    DDIM and TCD schedulers end) by the student (``variant[i] == "s"``, one evaluation) or the teacher (``"t"``,
    ``substeps`` DDIM steps)."""
    from lcm_lora.demo.teacher_samplers import SampleResult
    from lcm_lora.lcm_core.denoisers import unet_eps_fn

    plain_t = unet_eps_fn(teacher_unet, cond)
    guided_t = unet_eps_fn(teacher_unet, cond, negative_encoder_hidden_states=uncond, guidance_scale=g)
    plain_s = unet_eps_fn(student_unet, cond)
    x, nfe = noise.clone(), 0
    for who, (start, end) in zip(variant, zip(edges[:-1], edges[1:])):
        if who == "s":
            x = _ddim_jump(x, plain_s(x, torch.full((x.shape[0],), start)), alphas_cumprod[start], alphas_cumprod[end])
            nfe += 1
            continue
        grid = torch.linspace(start, end, (1 if who == "d" else substeps) + 1).round().long().tolist()
        for u, v in zip(grid[:-1], grid[1:]):
            guided = g > 1.0 and interval[0] <= u <= interval[1]
            eps = (guided_t if guided else plain_t)(x, torch.full((x.shape[0],), u))
            nfe += 2 if guided else 1
            x = _ddim_jump(x, eps, alphas_cumprod[u], alphas_cumprod[v])
    return SampleResult(images=x, nfe=nfe, seconds=0.0)


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every diagnostic here shares: the demo cache, the work folder (references cached there), the
    samples per row."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/q13work"))
    p.add_argument("--n", type=int, default=1000)
    return p


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--adapter", type=Path, required=True, help="a PCM adapter (the student)")
    p.add_argument("--phases", type=int, default=4)
    p.add_argument("--cfg", type=float, default=2.0, help="the teacher's CFG scale g (the demo's: 2)")
    p.add_argument("--interval", default="0,999", help="LO,HI: timesteps where the teacher is guided")
    p.add_argument("--substeps", type=int, default=10, help="teacher DDIM steps per phase")
    p.add_argument("--on-finetune", action="store_true", help="teacher = the demo's fine-tune, student = it + adapter")
    p.add_argument("--variants", default="ssss,tttt,tsss,ttss,ttts,sttt,sstt,ssst")
    args = p.parse_args()
    torch.set_num_threads(1)
    import tcd_recipes as m
    from lcm_lora.demo.teacher_samplers import make_scheduler
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    bench = m.Bench(args.cache, args.work, args.n, 0, "fast")
    teacher, plan = bench.teacher, bench.plan
    alphas = make_scheduler("ddim", teacher.scheduler_config).alphas_cumprod.double()
    edges = phased_timesteps(args.phases, args.phases, "pcm") + [0]
    base = bench.ft if args.on_finetune else teacher.unet
    student = m.unet_with(base, [(read_adapter(args.adapter), 1.0)])
    lo, hi = (int(v) for v in args.interval.split(","))
    for variant in args.variants.split(","):
        if len(variant) != args.phases or set(variant) - {"s", "t", "d"}:
            raise SystemExit(f"--variants: {variant!r} must be {args.phases} letters s/t/d")

        def fn(sl, _steps, variant=variant):
            return sample_swapped(variant, base, student, bench.cond[sl], bench.uncond[sl], plan.noise[sl],
                                  alphas, edges, args.cfg, (lo, hi), args.substeps)

        rows, images = m.sample_rows(variant, "swap", [args.phases], fn, plan, bench.inst, bench.cfg.batch_size,
                                     keep_images=args.on_finetune)
        row, extra = rows[0], {}
        if args.on_finetune:  # goal (d)'s metric; the accel plan of n samples is the main plan (same seed)
            ref = bench.refs["accel"][args.n]["ref_stats"]
            accel = bench._accel_row(variant, "swap", "swap", args.phases, images[args.phases], plan.labels, ref, args.n)
            extra = {"fd_vs_finetune_ddim25": round(accel["fd_vs_reference"], 2),
                     "fd_vs_finetune_ddim25_se": round(accel["fd_vs_reference_se"], 2)}
        print(json.dumps({**extra, "variant": variant, "cfg": args.cfg, "interval": [lo, hi], "n": args.n,
                          "teacher": "fine-tune" if args.on_finetune else "base",
                          "fd": round(row["fd"], 2), "fd_se": round(row["fd_se"], 2), "accuracy": row["accuracy"],
                          "nfe": row["nfe"]}), flush=True)


if __name__ == "__main__":
    main()
