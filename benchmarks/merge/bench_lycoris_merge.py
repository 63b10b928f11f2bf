"""Benchmark: SDXL LoKr + SDXL LCM-LoRA → rank 64 by SVD, against two anchors in the same run.

Adapters over the SDXL LCM-LoRA UNet targets (``bench_merge.sdxl_target_shapes``, 788 modules):

* a LoKr shaped by lycoris-lora's own ``lycoris.functional.lokr.weight_gen`` (``--lokr-dim``,
  ``--factor``; LyCORIS' defaults decompose w2 as w2_a @ w2_b of rank dim, keep w1 whole), random values;
* the LCM-LoRA (rank 64, alpha 64) and style LoRAs (ranks ``--lora-rank``, default 8 and 64) for the anchors.

Timed, all to rank ``--rank`` (64) with ``merge_adapters(method="svd")``:

* **ours**: 0.8·LoKr + 1.0·LCM — Kronecker-structured (``lcm_core/merge_kron.py``: bases
  kron(U1, U2) from SVDs of the small factors, thin QR of the LoRA residual only, core eigh);
* **LoRA+LoRA** (anchor 1, one per ``--lora-rank``: 8 = the first recorded anchor, 64 = the setup of
  ``bench_merge.py``): 0.8·style LoRA + 1.0·LCM on the same modules, same code; alternated with ours;
* **dense** (anchor 2): per module the dense ΔW = 0.8·kron(W1, W2) + ΔW_LCM and a full
  ``torch.linalg.svd`` (kohya ``svd_merge_lora.py`` / ComfyUI "Extract and Save Lora" style).

Goal (issue 14): ours ≤ 2× anchor 1 and ≥ 20× faster than anchor 2. Both of ours and dense are
the Eckart–Young optimum: their total relative errors must agree (exit 1 otherwise).

``--algo loha``: a LoHa of the same dim instead (no Kronecker structure: its exact factor form,
rank dim², goes through the generic QR + core SVD path).

    python benchmarks/merge/bench_lycoris_merge.py --quick --json   # 40 evenly spaced modules
    nice python benchmarks/merge/bench_lycoris_merge.py --json      # all 788 (dense takes long)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_merge import module_subset, random_adapter, sdxl_target_shapes  # noqa: E402


def lokr_adapter(shapes, dim, factor, seed):
    from lycoris.functional import lokr

    from lcm_lora.lcm_core.lora import LoraAdapter
    from lcm_lora.lcm_core.lora.lycoris_modules import LokrModule

    g = torch.Generator().manual_seed(seed)
    mods = {}
    for key, shape in shapes.items():
        w1, w1a, w1b, w2, w2a, w2b, t2 = lokr.weight_gen(torch.empty(shape, device="meta"), dim, tucker=False,
                                                          factor=factor)
        fill = [None if t is None else torch.randn(t.shape, generator=g) * 0.05 for t in (w1, w1a, w1b, w2, w2a, w2b)]
        mods[key] = LokrModule(*fill, alpha=float(dim))
    return LoraAdapter(modules=mods, architecture="sdxl")


def loha_adapter(shapes, dim, seed):
    """LoHa (non-Tucker, LyCORIS' default for Linear and conv): w1a/w2a (out, dim), w1b/w2b (dim, in·kh·kw)."""
    import math as _m

    from lcm_lora.lcm_core.lora import LoraAdapter
    from lcm_lora.lcm_core.lora.lycoris_modules import LohaModule

    g = torch.Generator().manual_seed(seed)
    mods = {}
    for key, shape in shapes.items():
        n = _m.prod(shape[1:])
        a1, b1, a2, b2 = (torch.randn(s, generator=g) * 0.05 for s in ((shape[0], dim), (dim, n), (shape[0], dim), (dim, n)))
        mods[key] = LohaModule(a1, b1, a2, b2, alpha=float(dim), shape=tuple(shape))
    return LoraAdapter(modules=mods, architecture="sdxl")


def dense_merge(adapters, weights, rank):
    err_sq = norm_sq = 0.0
    for key in adapters[0].modules:
        delta = None
        for w, a in zip(weights, adapters):
            m = a.modules[key]
            term = w * m.delta_weight().reshape(m.weight_shape[0], -1)
            delta = term if delta is None else delta + term
        s = torch.linalg.svd(delta, full_matrices=False).S.double()
        err_sq += float((s[rank:] ** 2).sum())
        norm_sq += float((s ** 2).sum())
    return math.sqrt(err_sq / norm_sq)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--algo", choices=("lokr", "loha"), default="lokr",
                   help="the LyCORIS adapter (default lokr; loha takes the generic factor path, rank dim²)")
    p.add_argument("--lokr-dim", type=int, default=8, help="LyCORIS lora_dim of the LoKr / LoHa (default 8)")
    p.add_argument("--factor", type=int, default=-1, help="LyCORIS LoKr factor (default -1: most square)")
    p.add_argument("--lora-rank", type=int, nargs="+", default=[8, 64],
                   help="ranks of the style LoRA of anchor 1, one anchor each (default 8 64)")
    p.add_argument("--modules", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="= --modules 40")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="alternate ours / anchor 1 this many times (best kept)")
    p.add_argument("--no-dense", action="store_true", help="skip anchor 2 (the slow dense SVD)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of every adapter (float16: as files are distributed; the merge then writes float16 "
                        "and measures the stored factors' error, rounding included)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lcm_lora.lcm_core.merge import merge_adapters

    all_shapes = sdxl_target_shapes()
    n_all = len(all_shapes)
    shapes = module_subset(all_shapes, 40 if args.quick and args.modules is None else args.modules)
    lokr = (lokr_adapter(shapes, args.lokr_dim, args.factor, seed=0) if args.algo == "lokr"
            else loha_adapter(shapes, args.lokr_dim, seed=0))
    lcm = random_adapter(shapes, 64, alpha=64.0, seed=1)
    styles = {r: random_adapter(shapes, r, alpha=r / 2, seed=2) for r in args.lora_rank}
    if args.dtype != "float32":
        from lcm_lora.lcm_core.lora import LoraAdapter

        cast = lambda a: LoraAdapter(modules={k: m.to(getattr(torch, args.dtype)) for k, m in a.modules.items()},  # noqa: E731
                                     architecture=a.architecture)
        lokr, lcm, styles = cast(lokr), cast(lcm), {r: cast(a) for r, a in styles.items()}
    w = [0.8, 1.0]
    kron_rank = sorted({int(m.matrix_factors()[0].shape[1]) for m in lokr.modules.values()})
    print(f"SDXL: {len(shapes)}/{n_all} UNet modules; {args.algo} dim {args.lokr_dim} factor {args.factor} (factor-form "
          f"rank {kron_rank[0]}–{kron_rank[-1]}), LCM-LoRA rank 64, style LoRA rank(s) {args.lora_rank}; "
          f"→ rank {args.rank}; {args.dtype}; torch {torch.__version__}, {args.threads} thread(s); load {os.getloadavg()[0]:.1f}",
          flush=True)
    best = {"ours": (math.inf, math.inf), **{r: (math.inf, math.inf) for r in styles}}
    for _ in range(args.repeat):  # alternate, keep the best of each (load from other jobs only adds time)
        (_, rep_ours), t, c = timed(lambda: merge_adapters([lokr, lcm], w, "svd", rank=args.rank, progress=False))
        best["ours"] = min(best["ours"], (t, c))
        for r, style in styles.items():
            _, t, c = timed(lambda: merge_adapters([style, lcm], w, "svd", rank=args.rank, progress=False))
            best[r] = min(best[r], (t, c))
    name = {"lokr": "LoKr", "loha": "LoHa"}[args.algo]
    path = "structured" if args.algo == "lokr" else "factor form"
    print(f"ours      {name} + LCM   ({path}): wall {best['ours'][0]:8.2f} s  cpu {best['ours'][1]:8.2f} s  "
          f"error {rep_ours.total_relative_error:.7f}", flush=True)
    for r in styles:
        print(f"anchor 1  LoRA r{r:<3} + LCM (same code): wall {best[r][0]:8.2f} s  cpu {best[r][1]:8.2f} s", flush=True)
    if args.no_dense:
        err_dense, t_dense, c_dense = rep_ours.total_relative_error, math.nan, math.nan
    else:
        err_dense, t_dense, c_dense = timed(lambda: dense_merge([lokr, lcm], w, args.rank))
    print(f"anchor 2  {name} + LCM   (dense SVD):    wall {t_dense:8.2f} s  cpu {c_dense:8.2f} s  error {err_dense:.7f}")
    r1 = {r: best["ours"][1] / best[r][1] for r in styles}
    r2 = c_dense / best["ours"][1]
    diff = abs(err_dense - rep_ours.total_relative_error)
    for r in styles:
        print(f"ours / (LoRA r{r} + LCM) = {r1[r]:.2f}× cpu ({best['ours'][0] / best[r][0]:.2f}× wall; goal ≤ 2)")
    print(f"dense / ours = {r2:.1f}× cpu ({t_dense / best['ours'][0]:.1f}× wall; goal ≥ 20)   |Δ error| {diff:.1e}")
    if args.json:
        print(json.dumps({"modules": len(shapes), "algo": args.algo, "dtype": args.dtype, "lokr_dim": args.lokr_dim,
                          "factor": args.factor,
                          "kron_rank": [kron_rank[0], kron_rank[-1]], "threads": args.threads,
                          "cpu_ours": best["ours"][1], "cpu_lora_lora": {r: best[r][1] for r in styles},
                          "cpu_dense": c_dense, "wall_ours": best["ours"][0],
                          "wall_lora_lora": {r: best[r][0] for r in styles}, "wall_dense": t_dense,
                          "ratio_vs_lora_lora": r1, "speedup_vs_dense": r2, "error_ours": rep_ours.total_relative_error,
                          "error_dense": err_dense, "load": os.getloadavg()}))
    return 0 if diff < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
