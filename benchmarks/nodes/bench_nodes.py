"""Benchmark: the pack's nodes against ComfyUI's own, inside a real ComfyUI (CPU).

* **LCM Sampler vs ComfyUI's built-in ``lcm`` sampler** — same LCM-patched random-weight
  SD1.5 model, same LCM Scheduler sigmas, same seed, through ``comfy.sample.sample_custom``;
  alternating run pairs, median of the pair ratios ours / built-in (goal ≤ 1.02); outputs must be identical.
  Also the sampler code alone with a trivial denoiser (per-step overhead).
* **LCM-LoRA Loader vs LoraLoader** — apply time of the same kohya file shaped like the
  released SD1.5 LCM-LoRA (every UNet module diffusers' ``train_lcm_distill_lora_sd_wds.py``
  targets, rank 64, fp16) to MODEL + CLIP; cold (file not cached) and warm; ratio ours /
  LoraLoader (goal ≤ 1.0); the registered patches must be identical.

Needs ``COMFYUI_PATH`` / ``COMFYUI_PYTHON`` (as the in-ComfyUI tests). The random checkpoint
(≈2.1 GB) and adapter are made on first use in ``--cache`` (default ``$TMPDIR/lcm-lora-bench``)::

    COMFYUI_PATH=/work/ComfyUI COMFYUI_PYTHON=/work/comfy-venv/bin/python \
        python benchmarks/nodes/bench_nodes.py [--reps 5] [--steps 4] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfy"))

import comfy_harness as H  # noqa: E402
import lora_fixtures as F  # noqa: E402


def lcm_lora_sd15(path: Path) -> Path:
    if not path.exists():
        import torch

        shapes = F.module_shapes("sd1")
        keys = F.select_modules(shapes, ("",))
        F.write_kohya(F.random_lora("sd1", keys, shapes, rank=64, seed=11, dtype=torch.float16), path)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10, help="sampler run pairs (alternating order)")
    p.add_argument("--loader-reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="image size in pixels (latent = size/8)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-sampler", action="store_true", help="only the loader and sampler-overhead parts")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lcm-lora-bench")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    env = H.comfy_env()
    if isinstance(env, str):
        print(f"skipped: {env}", file=sys.stderr)
        return 2
    comfy_path, python = env
    a.cache.mkdir(parents=True, exist_ok=True)
    ckpt = a.cache / "random-sd1.safetensors"
    if not ckpt.exists():
        print("making the random SD1.5 checkpoint ...", file=sys.stderr)
        H.make_checkpoint(comfy_path, python, "sd1", ckpt, a.cache)
    (a.cache / "loras").mkdir(exist_ok=True)
    lora = lcm_lora_sd15(a.cache / "loras" / "lcm-lora-sdv1-5-shaped.safetensors")
    out = a.cache / "result.json"
    cmd = [str(python), str(HERE / "in_comfy.py"), "--comfyui", str(comfy_path), "--repo", str(REPO),
           "--checkpoint", str(ckpt), "--lora", str(lora), "--reps", str(a.reps), "--loader-reps", str(a.loader_reps),
           "--steps", str(a.steps), "--size", str(a.size), "--threads", str(a.threads), "--out", str(out)]
    if a.skip_sampler:
        cmd.append("--skip-sampler")
    subprocess.run(cmd, check=True, cwd=str(comfy_path))
    res = json.loads(out.read_text())
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "load_avg_1m": os.getloadavg()[0], "threads": a.threads}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        ld = res["loader"]
        print(f"LCM-LoRA Loader vs LoraLoader (SD1.5 LCM-LoRA shape, rank 64 fp16, MODEL+CLIP), median of {ld['reps']}:")
        for k in ("cold", "warm"):
            print(f"  {k}: ours {ld['wall_s']['ours_' + k] * 1000:.0f} ms, LoraLoader {ld['wall_s']['stock_' + k] * 1000:.0f} ms"
                  f" -> ratio {ld['ratio_' + k]:.3f} (cpu-time ratio {ld['ratio_' + k + '_cpu']:.3f}; goal <= 1.0)")
        print(f"  cold incl. ComfyUI patching the weights (load_models_gpu): ours {ld['wall_s']['ours_cold_patched']:.2f} s, "
              f"LoraLoader {ld['wall_s']['stock_cold_patched']:.2f} s -> ratio {ld['ratio_cold_patched']:.3f}")
        print(f"  identical patches: {ld['identical_patches']}")
        so = res["sampler_overhead"]
        print(f"sampler code alone (trivial denoiser): ours {so['wall_s_per_step']['ours'] * 1e6:.0f} us/step, "
              f"built-in {so['wall_s_per_step']['builtin'] * 1e6:.0f} us/step -> ratio {so['ratio']:.3f}, "
              f"identical: {so['identical_output']}")
        if "sampler" in res:
            sm = res["sampler"]
            print(f"LCM Sampler vs built-in lcm ({sm['steps']} steps, latent {sm['latent']}, {sm['reps']} alternating pairs): "
                  f"median ours {sm['wall_s']['ours']:.2f} s, built-in {sm['wall_s']['builtin']:.2f} s; "
                  f"ratio (median of pair ratios) {sm['ratio']:.3f}, of minima {sm['ratio_of_mins']:.3f}, "
                  f"cpu-time {sm['ratio_cpu']:.3f} (goal <= 1.02); identical output: {sm['identical_output']}")
        print(f"machine: {res['machine']}")
    ok = res["loader"]["identical_patches"] and res["sampler_overhead"]["identical_output"] and (
        "sampler" not in res or res["sampler"]["identical_output"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
