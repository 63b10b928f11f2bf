"""Diagnostic: goal (c) for the demo's TCD adapter with one γ per step — can re-noising on some steps only keep the
γ-0 merge's style (inside the band) and the γ-0.5 merge's accuracy?

Goal (c) asks the style LoRA merged with the adapter (concat, λ1 0.8, λ2 1.0) at 4 steps for a style score within
±0.05 of the 25-step reference (teacher + style LoRA, DDIM 25, CFG) and accuracy ≥ the reference's − 1 point. With
one γ for every step the TCD merge moves along one curve (BENCHMARKS.md: γ 0 / 0.3 / 0.5 → style 0.844 / 0.905 /
0.914 at accuracy 0.970 / 0.980 / 0.990 on the full preset). This script samples the merge, and the adapter alone,
on the demo's TCD schedule with each ``--gammas`` entry (one γ, or one per step, ``seed_spread.parse_gammas``;
``seed_spread.sample_phased_per_step_gamma`` on ``tcd_timesteps``: equal γs reproduce the demo's sampler exactly),
on the demo's prompts and noise (``--n`` samples, the preset's seed) with the demo's metrics, one JSON line per row.

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
    nice -n 5 .venv/bin/python benchmarks/demo_quality/tcd_merge_gammas.py --cache /tmp/fullcache --preset full \\
        --work /tmp/q13work-full --n 300 --gammas "0.3;0;0.5;0,0,0.5,0;0.5,0,0,0;1,0,0,0"
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality
from phase_swap import bench_arguments  # noqa: E402
from seed_spread import parse_gammas, sample_phased_per_step_gamma  # noqa: E402


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", help="the demo preset whose cache --cache is")
    p.add_argument("--gammas", default="0.3;0;0.5", help="';'-separated γ entries: one value, or one per step")
    args = p.parse_args()
    torch.set_num_threads(1)
    import tcd_recipes as m
    from lcm_lora.demo.fused_unet import unet_with
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.lcm_core.merge import merge_adapters
    from lcm_lora.lcm_core.timesteps import tcd_timesteps

    bench = m.Bench(args.cache, args.work, args.n, 0, args.preset)
    cfg = bench.cfg
    tcd = read_adapter(m._one(args.cache, "tcd-*") / "tcd_lora.safetensors")
    merged, _ = merge_adapters([bench.style, tcd], [cfg.lambda1, cfg.lambda2], method="concat", progress=False,
                               names=["style", "tcd"])
    models = {"style + TCD merged (concat)": unet_with(bench.teacher.unet, [(merged, 1.0)]),
              "TCD adapter alone": unet_with(bench.teacher.unet, [(tcd, 1.0)])}
    ref = bench.refs["style_ref"]
    print(json.dumps({"reference": ref["label"], "style": round(ref["style_score"], 3), "accuracy": ref["accuracy"]}),
          flush=True)
    for gammas in parse_gammas(args.gammas, cfg.style_steps):
        for name, unet in models.items():
            def fn(sl, k, unet=unet, gammas=gammas):
                return sample_phased_per_step_gamma(unet, bench.cond[sl], bench.plan.noise[sl], gammas,
                                                    sampler_seed(cfg.seed + sl.start), timesteps=tcd_timesteps(k))

            row = m.sample_rows(name, "tcd", [cfg.style_steps], fn, bench.plan, bench.inst, cfg.batch_size,
                                keep_images=False)[0][0]
            print(json.dumps({"gammas": ",".join(f"{g:g}" for g in gammas), "model": name, "n": args.n,
                              "style": round(row["style_score"], 3), "accuracy": round(row["accuracy"], 4),
                              "fd": round(row["fd"], 1)}), flush=True)


if __name__ == "__main__":
    main()
