"""LCM vs TCD vs TCD+TDD vs PCM vs TSCD on a tiny pixel-space teacher fitted here: W2 of few-step samples to the
teacher's 50-step DDIM, at 1/2/4/8/16 steps, same distillation budget for every objective.

Setting of ``tests/test_train_tiny_sample_quality.py`` (1-channel 8x8 synthetic shapes, ω = 1 in
distillation and in the teacher's sampling, W2 between per-pixel Gaussian fits of 1024 samples,
reference from other noise than the candidates; finite-sample floor ≈ 0.21). Students are sampled
with the sampler their adapter's metadata recommends (LCM: ``sample_lcm`` with the LCM boundary;
TCD: ``sample_tcd`` on plain ε, γ from the recipe; PCM (4 phases) / TSCD (stages 8, 4): ``sample_tcd`` at
γ 0 on the recipe's phased timesteps), plus TCD at γ = 0 and 0.5.

    .venv/bin/python benchmarks/trainer/objective_quality.py [--steps 400] [--teacher-steps 800] [--seed 0] [--objectives lcm,pcm]

Prints one table (rows: sampler, columns: step counts) and the wall time of each distillation.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OMEGA = 1.0
STEPS = (1, 2, 4, 8, 16)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="distillation steps per objective")
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--objectives", default="lcm,tcd,tcd+tdd,pcm,tscd", help="comma-separated runs (lcm, tcd, tcd+tdd, pcm, tscd)")
    p.add_argument("--workdir", help="keep the fitted teacher and the adapters here and reuse them on a rerun")
    args = p.parse_args(argv)

    from lcm_lora.lcm_core.denoisers import EpsDenoiser
    from lcm_lora.lcm_core.fuse import fuse_into_module
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.lcm_core.sampling import sample_lcm, sample_tcd
    from lcm_lora.lcm_core.sampling_recipe import read_recipe, recipe_timesteps
    from lcm_lora.lcm_core.timesteps import lcm_sigmas, tcd_sigmas, timesteps_to_sigmas
    from lcm_lora.training.teacher import build_cond, load_teacher_folder, unet_forward
    from lcm_lora.training.tiny_models import build_tiny_teacher, write_tiny_dataset
    from lcm_lora.training.tiny_teacher_quality import fit_tiny_teacher, guided_ddim, per_pixel_w2
    from lcm_lora.training.trainer import train

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="objective_quality_"))
    folder, data = tmp / "teacher", tmp / "data"
    if not (folder / "FITTED").is_file():
        build_tiny_teacher(folder, with_vae=False, image_channels=1, image_size=8, block_out_channels=(32, 64))
        write_tiny_dataset(data, n=64, size=8, channels=1)
        t0 = time.perf_counter()
        fit_tiny_teacher(folder, data, args.teacher_steps)
        (folder / "FITTED").write_text(f"{args.teacher_steps}\n")
        print(f"teacher fit: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    base = [f"teacher={folder}", f"data={data}", "data.resolution=8", "data.buckets=false", f"max_steps={args.steps}",
            "batch_size=16", "lora.rank=16", "lora.alpha=16", f"lcd.w_min={OMEGA}", f"lcd.w_max={OMEGA}",
            "optim.learning_rate=1e-3", "validation.every=0", "checkpoint.every=0", "logging.progress=false",
            "output.dtype=fp32", f"seed={args.seed}"]
    runs = {"lcm": [], "tcd": ["lcd.objective=tcd"], "tcd+tdd": ["lcd.objective=tcd", "lcd.tcd_s_sampling=tdd"],
            "pcm": ["lcd.objective=pcm"], "tscd": ["lcd.objective=tscd", "lcd.tscd_segments=[8, 4]"]}
    wanted = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(runs))
    if unknown:
        print(f"error: --objectives: unknown {', '.join(unknown)} (choose from {', '.join(runs)})", file=sys.stderr)
        return 2
    runs = {k: v for k, v in runs.items() if k in wanted}
    teacher = load_teacher_folder(folder)
    n = args.samples
    prompts = ["a white circle", "a white square", "a white cross", "a white ring"] * (n // 4)
    cond = build_cond(teacher.encode_text(prompts))
    uncond = build_cond({k: v.expand(len(prompts), *v.shape[1:]) for k, v in teacher.uncond_text("auto").items()})
    ref_noise = torch.randn(len(prompts), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(len(prompts), 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def teacher_ddim(steps, x):
        return guided_ddim(teacher, cond, uncond, x, steps, OMEGA)

    reference = teacher_ddim(50, ref_noise)
    rows = {"teacher ddim": [per_pixel_w2(teacher_ddim(k, noise), reference) for k in STEPS]}
    times = {}
    for name, extra in runs.items():
        adapter_path = tmp / name / "lcm_lora.safetensors"
        if not adapter_path.is_file():
            t0 = time.perf_counter()
            adapter_path = train(ROOT / "configs" / "tiny_cpu.yaml", tmp / name, overrides=base + extra, progress=False).adapter_path
            times[name] = time.perf_counter() - t0
        student = load_teacher_folder(folder)
        adapter = read_adapter(adapter_path)
        recipe = read_recipe(adapter.metadata)
        fuse_into_module(student.unet, adapter, strict=True)

        def eps(xs, t, **_):
            return unet_forward(student.unet, xs, t, cond)

        with torch.no_grad():
            if recipe.sampler == "lcm":
                den = EpsDenoiser(eps, boundary="diffusers")
                rows[f"{name} (lcm)"] = [per_pixel_w2(sample_lcm(den, noise * (1 + lcm_sigmas(k)[0] ** 2) ** 0.5, lcm_sigmas(k),
                                                       extra_args={"seed": 0}, disable=True), reference) for k in STEPS]
            elif recipe.phases is not None:  # pcm / tscd: γ 0 on the phased timesteps (lcm_core.phased_timesteps)
                den = EpsDenoiser(eps, boundary=None)
                sig = {k: timesteps_to_sigmas(recipe_timesteps(recipe, k)) for k in STEPS}
                rows[f"{name} (tcd g=0, {recipe.phases} phases)"] = [
                    per_pixel_w2(sample_tcd(den, noise * (1 + sig[k][0] ** 2) ** 0.5, sig[k], extra_args={"seed": 0}, disable=True,
                                  gamma=0.0), reference) for k in STEPS]
            else:
                den = EpsDenoiser(eps, boundary=None)
                for gamma in sorted({0.0, recipe.gamma, 0.5}):
                    rows[f"{name} (tcd g={gamma:g})"] = [
                        per_pixel_w2(sample_tcd(den, noise * (1 + tcd_sigmas(k)[0] ** 2) ** 0.5, tcd_sigmas(k), extra_args={"seed": 0},
                                      disable=True, gamma=gamma), reference) for k in STEPS]
    print(f"W2 to the teacher's 50-step DDIM ({n} samples; lower is better), {args.steps} distillation steps each")
    print(f"| sampler | {' | '.join(f'{k} steps' for k in STEPS)} |")
    print(f"|---|{'---|' * len(STEPS)}")
    for name, vals in rows.items():
        print(f"| {name} | {' | '.join(f'{v:.3f}' for v in vals)} |", flush=True)
    print("distillation wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
