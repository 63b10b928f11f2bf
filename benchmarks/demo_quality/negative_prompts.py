"""Issue 13 item 5 for one adapter: the share of a negated class at few steps (the demo's
``negative_prompt_study``, full preset's samples, seeds and configurations) for an adapter the demo
does not train, e.g. one distilled without solver guidance (``lcd.solver_guidance=false``), whose every
step is guided anyway.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/negative_prompts.py --cache /tmp/q13cache \
        --adapter /tmp/q13work/tcd-pcm4-600-ncfg/tcd_lora.safetensors --schedule pcm --phases 4 --gamma 0

Prints one JSON line: the teacher's reduction, and the adapter's share / share without / reduction per
``(cfg, cfg_steps)`` configuration with its UNet evaluations.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from lcm_lora.demo.config import PRESETS
from lcm_lora.demo.evaluate import build_instruments, load_teacher
from lcm_lora.demo.fused_unet import unet_with
from lcm_lora.demo.negative_prompts import negative_prompt_study
from lcm_lora.demo.student_sampling import sample_tcd_student
from lcm_lora.lcm_core.lora import read_adapter


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="a demo cache (teacher, classifiers)")
    ap.add_argument("--preset", default="full", help="whose negative-prompt settings (samples, configurations)")
    ap.add_argument("--adapter", type=Path, required=True)
    ap.add_argument("--schedule", choices=("tcd", "pcm", "tscd"), default="tcd")
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--gamma", type=float, default=0.3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = PRESETS[a.preset]
    teacher = load_teacher(sorted(a.cache.glob("teacher-*"))[0])
    inst = build_instruments(cfg.resolution, cfg.split_seed, cfg.style.style, a.cache / "classifiers", cfg.neg_samples)
    adapter = read_adapter(a.adapter)
    timesteps = None
    if a.schedule != "tcd":
        from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
        from lcm_lora.lcm_core.sampling_recipe import read_recipe

        recipe = read_recipe(adapter.metadata)  # a pcm adapter's moved edges (lcm_lora.phase_starts), if it has any
        starts = recipe.phase_starts if recipe is not None and recipe.objective == a.schedule else None
        timesteps = phased_timesteps(cfg.neg_student_steps, a.phases, a.schedule, starts=starts)
    sample = functools.partial(sample_tcd_student, gamma=a.gamma, timesteps=timesteps)
    students = {"adapter": (unet_with(teacher.unet, [(adapter, 1.0)]), sample, "tcd")}
    t0 = time.perf_counter()
    out = negative_prompt_study(teacher, students, inst, cfg.neg_samples, cfg.resolution, cfg.seed + 4,
                                cfg.neg_teacher_steps, cfg.guidance_scale, cfg.neg_student_steps, cfg.neg_configs)
    print(json.dumps({"adapter": str(a.adapter), "schedule": a.schedule, "gamma": a.gamma, "preset": a.preset,
                      "seconds": round(time.perf_counter() - t0, 1), **out}, default=str))


if __name__ == "__main__":
    main()
