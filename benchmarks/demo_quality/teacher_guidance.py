"""The digit teacher's own FD-vs-accuracy trade-off over its CFG scale g (DDIM 25 steps, the demo's prompts,
noise and metrics at 300 samples): what a student that reproduces the teacher exactly at guidance g would score.

FD is measured against *real* digits, so it rewards diversity: a CFG-2 teacher is itself far from the data
(FD ≈ 34) while a student that is less faithful to it can be closer. Reads a demo cache like ``tcd_recipes.py``
(same ``--cache`` / ``--work``; references cached there are reused).

``--intervals`` also applies the guidance only on the steps whose timestep lies in ``[lo, hi]`` and runs the
bare conditional model elsewhere (Kynkäänniemi et al. 2024, arXiv 2404.07724; what ``lcd.guidance_interval``
distils): e.g. ``--scales 2 --intervals 0-999,200-700``.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/teacher_guidance.py --cache DIR --work /tmp/q13work
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch


def _recipes():
    spec = importlib.util.spec_from_file_location("tcd_recipes", Path(__file__).with_name("tcd_recipes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interval_teacher(unet, cond, uncond, noise, steps, scheduler_config, g, lo, hi):
    """DDIM with CFG ``g`` on the steps whose timestep is in ``[lo, hi]`` and the conditional model elsewhere."""
    from lcm_lora.demo.teacher_samplers import make_scheduler, run_scheduler
    from lcm_lora.lcm_core.denoisers import unet_eps_fn

    guided = unet_eps_fn(unet, cond, negative_encoder_hidden_states=uncond, guidance_scale=g)
    plain = unet_eps_fn(unet, cond)

    def eps(x, t, **_):
        return guided(x, t) if lo <= int(t[0]) <= hi else plain(x, t)

    return run_scheduler(eps, make_scheduler("ddim", scheduler_config), steps, noise, evals_per_call=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/q13work"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--scales", default="1,1.25,1.5,2,3")
    ap.add_argument("--intervals", default="0-999", help="comma-separated LO-HI timestep ranges where guidance applies")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = _recipes()
    b = m.Bench(a.cache, a.work, a.n, 0, "fast")
    t, plan, sc = b.teacher, b.plan, b.teacher.scheduler_config
    intervals = [tuple(int(v) for v in iv.split("-")) for iv in a.intervals.split(",")]
    for g, (lo, hi) in ((float(x), iv) for x in a.scales.split(",") for iv in intervals):
        r, _ = m.sample_rows("teacher", "ddim", [a.steps], lambda sl, k: _interval_teacher(
            t.unet, b.cond[sl], b.uncond[sl], plan.noise[sl], k, sc, g, lo, hi), plan, b.inst, b.cfg.batch_size,
            keep_images=False)
        x = r[0]
        print(json.dumps({"guidance_scale": g, "interval": [lo, hi], "steps": a.steps, "n": a.n, "fd": round(x["fd"], 2),
                          "fd_se": round(x["fd_se"], 2), "accuracy": round(x["accuracy"], 4),
                          "fd_pixel": round(x["fd_pixel"], 3)}), flush=True)


if __name__ == "__main__":
    main()
