"""Benchmark: factor-form SVD merge (lcm_core.merge, method "svd") vs the dense approach.

Two random adapters shaped like the SDXL LCM-LoRA (every UNet module targeted by diffusers'
``examples/consistency_distillation/train_lcm_distill_lora_sdxl.py``: 788 modules, rank 64,
float32) are merged as λ1·style + λ2·LCM (0.8 / 1.0) to the same target rank by

* ours: ``merge_adapters(..., method="svd", rank=R)`` — QR of the stacked factors + SVD of the
  small core (never forms ΔW), errors from the discarded singular values;
* dense (the anchor, what kohya ``networks/svd_merge_lora.py`` and peft
  ``add_weighted_adapter(combination_type="svd")`` do): per module ΔW = Σ λ_i s_i up_i @ down_i
  (conv flattened to (out, in·kh·kw)), ``torch.linalg.svd(ΔW, full_matrices=False)``, truncate
  (kohya/peft default to ``full_matrices=True``, which is slower still: ``--full-matrices``).

Prints both times (wall and process CPU — CPU time is less sensitive to other load on a
shared machine), the speed-ups and both total relative Frobenius errors
‖ΔW_r − ΔW‖_F / ‖ΔW‖_F (they must agree to ~1e-5: both are the Eckart–Young optimum).

    nice python benchmarks/merge/bench_merge.py            # full SDXL (the dense way takes minutes)
    python benchmarks/merge/bench_merge.py --quick         # 40-module subset
    python benchmarks/merge/bench_merge.py --modules 100 --rank 32 --threads 2
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

# LCM-LoRA SDXL UNet targets (diffusers train_lcm_distill_lora_sdxl.py, default lora_target_modules).
_FALLBACK_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)


def sdxl_target_shapes() -> dict[str, tuple[int, ...]]:
    """Canonical key → base weight shape of every LCM-LoRA target in the SDXL UNet (meta device)."""
    from lcm_lora.lcm_core.model_configs import build_unet

    unet = build_unet("sdxl", device="meta")
    modules = dict(unet.named_modules())
    names = {
        n for n, m in modules.items()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
        and any(n == t or n.endswith("." + t) for t in _FALLBACK_TARGETS)
    }
    try:  # the project's own target list (lcm_core.targets), when present
        from lcm_lora.lcm_core.targets import lora_target_names

        project = {n[len("unet."):] if n.startswith("unet.") else n for n in lora_target_names(unet)}
        if project and project <= set(modules):
            names = project
    except ImportError:
        pass
    return {f"unet.{n}": tuple(modules[n].weight.shape) for n in sorted(names)}


def module_subset(shapes: dict, n: int | None) -> dict:
    """``n`` evenly spaced modules of ``shapes`` (all of them for None or n ≥ their number)."""
    if n is None or n >= len(shapes):
        return shapes
    keys = list(shapes)
    return {k: shapes[k] for k in (keys[round(i * (len(keys) - 1) / max(n - 1, 1))] for i in range(n))}


def random_adapter(shapes, rank, alpha, seed):
    from lcm_lora.lcm_core.lora import LoraAdapter, LoraModule

    g = torch.Generator().manual_seed(seed)
    mods = {}
    for key, shape in shapes.items():
        out, inn = shape[0], shape[1]
        kernel = tuple(shape[2:])
        fan_in = inn * (math.prod(kernel) if kernel else 1)
        down = torch.randn(rank, inn, *kernel, generator=g) / math.sqrt(fan_in)
        up = torch.randn(out, rank, *((1, 1) if kernel else ()), generator=g) * 0.01
        mods[key] = LoraModule(down=down, up=up, alpha=alpha)
    return LoraAdapter(modules=mods, architecture="sdxl")


def dense_svd_merge(adapters, weights, rank, full_matrices=False):
    """The anchor: dense ΔW per module, full SVD, truncate (kohya svd_merge_lora.py)."""
    err_sq = norm_sq = 0.0
    out = {}
    for key in adapters[0].modules:
        delta = None
        for w, a in zip(weights, adapters):
            m = a.modules[key]
            term = (w * m.scale) * (m.up.reshape(m.up.shape[0], -1) @ m.down.reshape(m.rank, -1))
            delta = term if delta is None else delta + term
        U, S, Vh = torch.linalg.svd(delta, full_matrices=full_matrices)
        r = min(rank, S.numel())
        out[key] = (U[:, :r] * S[:r], Vh[:r])
        sq = S.double() ** 2
        err_sq += float(sq[r:].sum())
        norm_sq += float(sq.sum())
    return out, math.sqrt(err_sq / norm_sq)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=64, help="merged rank (default 64)")
    p.add_argument("--input-rank", type=int, default=64, help="rank of each random adapter (default 64)")
    p.add_argument("--modules", type=int, default=None, help="evenly spaced subset of N modules")
    p.add_argument("--quick", action="store_true", help="= --modules 40")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both methods (default 1)")
    p.add_argument("--full-matrices", action="store_true", help="dense SVD with full_matrices=True (kohya/peft default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print one JSON line with the numbers")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lcm_lora.lcm_core.merge import merge_adapters

    all_shapes = sdxl_target_shapes()
    n_all = len(all_shapes)
    shapes = module_subset(all_shapes, 40 if args.quick and args.modules is None else args.modules)
    weights = [0.8, 1.0]  # λ1 · style + λ2 · LCM (the ComfyUI merge node's defaults)
    style = random_adapter(shapes, args.input_rank, alpha=args.input_rank / 2, seed=args.seed)
    lcm = random_adapter(shapes, args.input_rank, alpha=args.input_rank, seed=args.seed + 1)
    print(f"SDXL LCM-LoRA shapes: {len(shapes)}/{n_all} UNet modules, 2 random adapters rank {args.input_rank} "
          f"(fp32), weights {weights}, merged rank {args.rank}, torch threads {args.threads}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    merged, report = merge_adapters([style, lcm], weights, method="svd", rank=args.rank, progress=False)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    print(f"ours  (stacked-factor QR + core SVD): wall {t_ours:9.2f} s  cpu {c_ours:9.2f} s   "
          f"total relative error {report.total_relative_error:.7f}", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    dense, dense_err = dense_svd_merge([style, lcm], weights, args.rank, args.full_matrices)
    t_dense, c_dense = time.perf_counter() - t0, time.process_time() - c0
    fm = "True" if args.full_matrices else "False"
    print(f"dense (ΔW + torch.linalg.svd, full_matrices={fm}): wall {t_dense:9.2f} s  cpu {c_dense:9.2f} s   "
          f"total relative error {dense_err:.7f}")

    # same approximation, not just the same error: compare reconstructions on a few modules
    worst = 0.0
    for key in list(dense)[:: max(1, len(dense) // 10)]:
        up, down = dense[key]
        ref = up @ down
        ours = merged.modules[key].delta_weight().reshape(ref.shape)
        worst = max(worst, float((ours - ref).norm() / ref.norm()))
    ratio, cpu_ratio = t_dense / t_ours, c_dense / c_ours
    diff = abs(report.total_relative_error - dense_err)
    print(f"speed-up wall {ratio:.1f}x, cpu {cpu_ratio:.1f}x   |error difference| {diff:.2e}   "
          f"max ‖ours − dense‖/‖dense‖ on sampled modules {worst:.2e}")
    if args.json:
        print(json.dumps({
            "modules": len(shapes), "rank": args.rank, "input_rank": args.input_rank, "threads": args.threads,
            "seconds_ours": t_ours, "seconds_dense": t_dense, "speedup": ratio,
            "cpu_seconds_ours": c_ours, "cpu_seconds_dense": c_dense, "cpu_speedup": cpu_ratio,
            "error_ours": report.total_relative_error, "error_dense": dense_err, "error_difference": diff,
            "reconstruction_difference": worst, "full_matrices": args.full_matrices,
        }))
    return 0 if diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
