"""Inner half of the node benchmark: runs in ComfyUI's python (see ``bench_nodes.py``).

Measures, on a real ComfyUI model (the random-weight SD1.5 checkpoint) in one process:

* LCM-LoRA Loader vs ComfyUI's ``LoraLoader`` apply time on the same kohya file, cold (file
  not cached: a fresh LoraLoader, our adapter cache cleared) and warm (second application),
  and that both register identical patches;
* LCM Sampler vs ComfyUI's built-in ``lcm`` sampler through ``comfy.sample.sample_custom``:
  same LCM-patched model, sigmas (LCM Scheduler), seed — interleaved runs, outputs compared;
* the samplers' own per-step overhead with a trivial denoiser (the UNet dominates the
  end-to-end time, so this isolates the sampler code).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def setup_comfy(comfy_path: str, threads: int):
    sys.path.insert(0, comfy_path)
    os.chdir(comfy_path)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch

    torch.set_num_threads(threads)


def import_pack(repo: str):
    import runpy

    import folder_paths  # noqa: F401  (the pack imports its nodes only inside ComfyUI)

    load_pack = runpy.run_path(os.path.join(repo, "nodes", "trainer_launch.py"), run_name="lcm_lora_launcher")["load_pack"]
    return load_pack(repo, "comfyui_lcm_lora")


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def same_patches(a, b) -> bool:
    import torch

    if sorted(a.patches) != sorted(b.patches):
        return False
    for key in a.patches:
        pa, pb = a.patches[key], b.patches[key]
        if len(pa) != len(pb):
            return False
        for x, y in zip(pa, pb):
            if x[0] != y[0] or x[2] != y[2]:
                return False
            wa, wb = x[1].weights, y[1].weights
            for ta, tb in zip(wa, wb):
                if isinstance(ta, torch.Tensor) != isinstance(tb, torch.Tensor):
                    return False
                if isinstance(ta, torch.Tensor) and not torch.equal(ta.float(), tb.float()):
                    return False
                if not isinstance(ta, torch.Tensor) and ta != tb:
                    return False
    return True


def bench_loader(pack, model, clip, lora_name: str, reps: int) -> dict:
    import nodes as comfy_nodes

    ours = pack.nodes.lcm_lora_loader.LCMLoraLoader
    bridge = pack.nodes.comfy_bridge
    res = {k: [] for k in ("ours_cold", "stock_cold", "ours_warm", "stock_warm")}
    cpu = {k: [] for k in res}
    identical = True
    for _ in range(reps):
        bridge.ADAPTERS.clear()  # cold: nothing of ours cached (file, key maps, patches)
        bridge._KEY_MAPS.clear()
        out_ours, w, c = timed(lambda: ours.execute(model, lora_name, 1.0, 1.0, patch_sampling=False, clip=clip))
        res["ours_cold"].append(w), cpu["ours_cold"].append(c)
        stock = comfy_nodes.LoraLoader()
        out_stock, w, c = timed(lambda: stock.load_lora(model, clip, lora_name, 1.0, 1.0))
        res["stock_cold"].append(w), cpu["stock_cold"].append(c)
        _, w, c = timed(lambda: ours.execute(model, lora_name, 1.0, 1.0, patch_sampling=False, clip=clip))
        res["ours_warm"].append(w), cpu["ours_warm"].append(c)
        _, w, c = timed(lambda: stock.load_lora(model, clip, lora_name, 1.0, 1.0))
        res["stock_warm"].append(w), cpu["stock_warm"].append(c)
        identical &= same_patches(out_ours.args[0], out_stock[0]) and same_patches(out_ours.args[1].patcher,
                                                                                   out_stock[1].patcher)
    # cold, up to patched weights: LoraLoader reads the file lazily (mmap) and the data is only
    # touched when ComfyUI patches the weights at load time, so this is the like-for-like figure.
    import comfy.model_management as mm

    full = {"ours": [], "stock": []}
    for i in range(max(1, reps // 2)):
        for side in (("ours", "stock") if i % 2 == 0 else ("stock", "ours")):
            bridge.ADAPTERS.clear()
            bridge._KEY_MAPS.clear()
            mm.unload_all_models()
            mm.soft_empty_cache()

            def apply():
                if side == "ours":
                    m = ours.execute(model, lora_name, 1.0, 1.0, patch_sampling=False, clip=clip).args[0]
                else:
                    m = comfy_nodes.LoraLoader().load_lora(model, clip, lora_name, 1.0, 1.0)[0]
                mm.load_models_gpu([m], force_patch_weights=True)
                return m

            _, w, _ = timed(apply)
            full[side].append(w)
    mm.unload_all_models()
    res["ours_cold_patched"], res["stock_cold_patched"] = full["ours"], full["stock"]
    med = {k: statistics.median(v) for k, v in res.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"wall_s": med, "cpu_s": med_cpu, "identical_patches": identical,
            "ratio_cold_patched": med["ours_cold_patched"] / med["stock_cold_patched"],
            "ratio_cold": med["ours_cold"] / med["stock_cold"], "ratio_warm": med["ours_warm"] / med["stock_warm"],
            "ratio_cold_cpu": med_cpu["ours_cold"] / med_cpu["stock_cold"],
            "ratio_warm_cpu": med_cpu["ours_warm"] / med_cpu["stock_warm"], "reps": reps}


def bench_sampler(pack, model, clip, lora_name: str, steps: int, reps: int, size: int) -> dict:
    import comfy.sample
    import comfy.samplers
    import torch

    patched = pack.nodes.lcm_lora_loader.LCMLoraLoader.execute(model, lora_name, 1.0, 1.0, patch_sampling=True).args[0]
    tokens = clip.tokenize("a watercolor fox in the snow")
    positive = clip.encode_from_tokens_scheduled(tokens)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    sigmas = pack.nodes.lcm_scheduler.LCMScheduler.execute(steps, 50, 1.0).args[0]
    latent = torch.zeros(1, 4, size // 8, size // 8)
    seed = 1234
    noise = comfy.sample.prepare_noise(latent, seed)
    samplers = {"ours": pack.nodes.lcm_sampler.LCMSampler.execute("lcm").args[0],
                "builtin": comfy.samplers.sampler_object("lcm")}

    def run(name):
        return comfy.sample.sample_custom(patched, noise, 1.0, samplers[name], sigmas, positive, negative, latent,
                                          disable_pbar=True, seed=seed)

    outputs = {name: run(name) for name in samplers}  # warm-up: loads and patches the model once
    wall = {n: [] for n in samplers}
    cpu = {n: [] for n in samplers}
    pair_ratios = []
    for i in range(reps):  # paired, alternating order: slow drifts of a shared machine cancel out
        pair = {}
        for name in (("ours", "builtin") if i % 2 == 0 else ("builtin", "ours")):
            _, w, c = timed(lambda: run(name))
            wall[name].append(w)
            cpu[name].append(c)
            pair[name] = w
        pair_ratios.append(pair["ours"] / pair["builtin"])
    med = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    return {"wall_s": med, "cpu_s": med_cpu, "min_wall_s": {n: min(v) for n, v in wall.items()},
            "ratio": statistics.median(pair_ratios), "ratio_of_medians": med["ours"] / med["builtin"],
            "ratio_of_mins": min(wall["ours"]) / min(wall["builtin"]), "ratio_cpu": med_cpu["ours"] / med_cpu["builtin"],
            "steps": steps, "reps": reps, "latent": list(latent.shape),
            "identical_output": bool(torch.equal(outputs["ours"], outputs["builtin"]))}


def bench_sampler_overhead(pack, steps: int, reps: int) -> dict:
    """Sampler code alone: a trivial denoiser (x0 = 0.9·x), 8×8 latents."""
    import comfy.model_sampling
    import torch
    from comfy.k_diffusion import sampling as kd

    ours_fn = pack.lcm_core.sampling.sample_lcm

    class MS(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    class Fake:
        def __init__(self):
            self.inner_model = type("I", (), {})()
            self.inner_model.inner_model = type("J", (), {})()
            self.inner_model.inner_model.model_sampling = MS()

        def __call__(self, x, sigma, **kw):
            return x * 0.9

    model = Fake()
    sigmas = torch.linspace(14.6, 0.03, steps + 1)
    sigmas[-1] = 0
    x = torch.randn(1, 4, 8, 8)
    fns = {"ours": ours_fn, "builtin": kd.sample_lcm}
    wall = {n: [] for n in fns}
    out = {}
    for i in range(reps):
        for name in (("ours", "builtin") if i % 2 == 0 else ("builtin", "ours")):
            t0 = time.perf_counter()
            out[name] = fns[name](model, x, sigmas, extra_args={"seed": 3}, disable=True)
            wall[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in wall.items()}
    return {"wall_s_per_step": {n: v / steps for n, v in med.items()}, "ratio": med["ours"] / med["builtin"],
            "identical_output": bool(torch.equal(out["ours"], out["builtin"])), "steps": steps, "reps": reps}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--comfyui", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lora", required=True)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--loader-reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-sampler", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    setup_comfy(a.comfyui, a.threads)
    import comfy.sd
    import folder_paths

    folder_paths.add_model_folder_path("loras", os.path.dirname(os.path.abspath(a.lora)), is_default=True)
    pack = import_pack(a.repo)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(a.checkpoint, output_vae=False, output_clip=True)
    name = os.path.basename(a.lora)
    result = {"loader": bench_loader(pack, model, clip, name, a.loader_reps),
              "sampler_overhead": bench_sampler_overhead(pack, 200, 15)}
    if not a.skip_sampler:
        result["sampler"] = bench_sampler(pack, model, clip, name, a.steps, a.reps, a.size)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
