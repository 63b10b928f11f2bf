"""Diagnostic: goal (d) ("universal acceleration") on other noise seeds — is its verdict decided inside the noise?

Goal (d) applies each adapter to the demo's bold full fine-tune (never seen in distillation) at 4 steps and asks
for a lower FD to the fine-tune's own 25-step DDIM samples than the fine-tune's DDIM at 8 steps. The demo draws
the reference from seed + 3 and everything else from its seed (``demo.run.universal_acceleration``; the same in
``tcd_recipes.Bench._accel_refs``). This script does that for each ``--seeds`` value and measures, against that
seed's reference:

* the fine-tune's DDIM 8 at the demo's CFG 2 (the bar);
* the LCM-LoRA ``--lcm`` on the fine-tune, 4 LCM steps;
* each 4-phase adapter ``--adapter`` (repeatable) on the fine-tune at 4 steps on its phase edges (those its
  metadata records, ``adapter_edges``; PCM's even split for an adapter without a phased recipe), TCD γ 0, with
  real CFG ``--adapter-cfg`` on every step for a normal-CFG adapter (1 = none; one value per ``--adapter``, as the
  demo samples its normal-CFG PCM adapter at its recipe's cfg 2).

One JSON line per (seed, model) with goal (d)'s verdict, then the FDs averaged over the seeds.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/universal_seed_spread.py --cache /tmp/q13cache \\
        --work /tmp/q13work --n 1000 --seeds 0,1,2 --lcm /tmp/q13work/lcm-steps600/lcm_lora.safetensors \\
        --adapter /tmp/q13work/tcd-pcm4-600-ncfg/tcd_lora.safetensors --adapter-cfg 2 \\
        --adapter /tmp/q13work/tcd-pcm4-600/tcd_lora.safetensors --adapter-cfg 1
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality
from adapter_edges import adapter_edges  # noqa: E402
from phase_regression import load_bench  # noqa: E402
from phase_swap import bench_arguments  # noqa: E402
from seed_spread import with_seed  # noqa: E402


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lcm", type=Path, required=True)
    p.add_argument("--adapter", type=Path, action="append", default=[])
    p.add_argument("--adapter-cfg", type=float, action="append", default=[])
    args = p.parse_args()
    if len(args.adapter_cfg) != len(args.adapter):
        raise SystemExit("give one --adapter-cfg per --adapter")
    from lcm_lora.demo import metrics
    from lcm_lora.demo.fused_unet import unet_with
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.demo.student_sampling import sample_lcm_student, sample_tcd_student
    from lcm_lora.demo.teacher_samplers import sample_teacher
    from lcm_lora.lcm_core.lora import read_adapter

    _, bench, _ = load_bench(args)
    cfg, teacher, ft = bench.cfg, bench.teacher, bench.ft
    g, sc, steps = cfg.guidance_scale, teacher.scheduler_config, cfg.accel_steps

    models = [("LCM-LoRA", unet_with(ft, [(read_adapter(args.lcm), 1.0)]), None, None)]
    for a, c in zip(args.adapter, args.adapter_cfg):
        adapter = read_adapter(a)
        models.append((f"{a.parent.name} cfg {c:g}", unet_with(ft, [(adapter, 1.0)]), c,
                       adapter_edges(adapter.metadata, steps)))
    table: dict[str, list[float]] = {}

    def fd_to(ref_stats, images):
        _, feats = bench.inst.features(images)
        return round(metrics.frechet_distance(*metrics.feature_statistics(feats), *ref_stats), 2)

    for seed in (int(s) for s in args.seeds.split(",")):
        with_seed(bench, seed)
        ref_plan, plan = bench._accel_plans(args.n)  # reference from seed + 3, the rest from seed (as the demo)
        rc, ru = teacher.embed(ref_plan.labels)
        cond, uncond = teacher.embed(plan.labels)
        _, ref_feats = bench.inst.features(sample_teacher(ft, rc, ru, ref_plan.noise, "ddim",
                                                          cfg.accel_reference_steps, sc, g).images)
        ref = metrics.feature_statistics(ref_feats)
        ddim8 = fd_to(ref, sample_teacher(ft, cond, uncond, plan.noise, "ddim", 8, sc, g).images)
        table.setdefault("fine-tune DDIM 8", []).append(ddim8)
        print(json.dumps({"seed": seed, "model": "fine-tune DDIM 8", "fd_vs_ft_ddim25": ddim8}), flush=True)
        for name, unet, c, timesteps in models:
            if c is None:
                images = sample_lcm_student(unet, cond, plan.noise, steps, seed=sampler_seed(seed)).images
            else:
                images = sample_tcd_student(unet, cond, plan.noise, steps, gamma=0.0, seed=sampler_seed(seed),
                                            timesteps=timesteps, guidance_scale=c,
                                            uncond=uncond if c != 1 else None).images
            fd = fd_to(ref, images)
            table.setdefault(name, []).append(fd)
            print(json.dumps({"seed": seed, "model": name, "fd_vs_ft_ddim25": fd, "goal_d": fd < ddim8}), flush=True)
    for name, fds in table.items():
        print(json.dumps({"mean_over_seeds": name, "fd_vs_ft_ddim25": round(sum(fds) / len(fds), 2),
                          "seeds": len(fds)}), flush=True)


if __name__ == "__main__":
    main()
