"""`lcm-lora inspect | convert | merge | fuse`: thin argument handling over :mod:`lcm_core`."""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from ..lcm_core.errors import ConfigError

OUTPUT_FORMATS = ("kohya", "diffusers", "peft", "comfy")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="describe a LoRA file or peft folder")
    p.add_argument("file", help="adapter .safetensors file or peft adapter folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser("convert", help="convert a LoRA between kohya, diffusers, peft and ComfyUI formats")
    p.add_argument("file")
    p.add_argument("--to", required=True, choices=OUTPUT_FORMATS, help="output format")
    p.add_argument("-o", "--output", required=True, help="output file (peft: output folder)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "merge",
        help="weighted merge of adapters (τ' = Σ λ_i τ_i)",
        description="Merge adapters: FILE:WEIGHT ... (weight defaults to 1). concat is exact (rank Σ r_i); "
        "svd re-ranks to --rank or --energy and reports the relative Frobenius error.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE:WEIGHT")
    p.add_argument("--method", choices=("concat", "svd"), default="concat")
    p.add_argument("--rank", type=int, help="svd: target rank (default: the largest input rank per module)")
    p.add_argument("--energy", type=float, help="svd: keep the smallest rank holding this fraction of Σσ² (0-1]")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--to", choices=OUTPUT_FORMATS, default="kohya", help="output format (default kohya)")
    p.add_argument("--json", action="store_true", help="print the merge report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run_merge)

    p = subparsers.add_parser(
        "fuse",
        help="bake adapters into a single-file checkpoint: θ' = θ + Σ λ_i ΔW_i",
    )
    p.add_argument("checkpoint", help="single-file .safetensors checkpoint (original SD key layout)")
    p.add_argument("inputs", nargs="+", metavar="FILE:WEIGHT")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl", "ssd1b"),
                   help="base architecture (default: detected from the checkpoint's weights)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run_fuse)


# --------------------------------------------------------------------------- helpers


def parse_weighted(spec: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]`` (weight 1 when absent); the last ``:`` splits, so paths with ``:`` work."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not path:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        if os.path.exists(spec):
            return spec, 1.0
        raise ConfigError(spec, f"weight {weight!r} is not a number (use FILE:WEIGHT, e.g. style.safetensors:0.8)") from None
    if not math.isfinite(value):
        raise ConfigError(spec, f"weight {weight!r} is not a finite number")
    return path, value


def _check_output(output: str, force: bool) -> None:
    """Refuse an existing output before doing any work (the atomic write checks again at the end)."""
    from ..lcm_core.errors import OutputExistsError

    if not force and os.path.lexists(output):
        raise OutputExistsError(output, "already exists; pass --force to replace it")


def _read(path: str):
    from ..lcm_core.lora import read_adapter

    if not os.path.exists(path):
        raise ConfigError(path, "no such file or folder")
    return read_adapter(path)


def _write(adapter, output: str, fmt: str, force: bool, extra_metadata=None) -> None:
    from ..lcm_core.lora import write_adapter

    write_adapter(adapter, output, format=fmt, overwrite=force, extra_metadata=extra_metadata)


def _size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- commands


def describe(path: str) -> dict:
    """Everything `inspect` prints, as a JSON-ready dict."""
    from ..lcm_core.architecture import detect_adapter_architecture

    adapter = _read(path)
    detection = detect_adapter_architecture(adapter)
    per_component: dict[str, int] = {}
    for key in adapter.modules:
        comp = key.split(".", 1)[0]
        per_component[comp] = per_component.get(comp, 0) + 1
    alphas = sorted({m.alpha for m in adapter.modules.values() if m.alpha is not None})
    kinds = {"linear": 0, "conv": 0}
    for m in adapter.modules.values():
        kinds["conv" if m.is_conv else "linear"] += 1
    return {
        "file": str(path),
        "format": adapter.source_format,
        "architecture": detection.arch,
        "architecture_evidence": detection.evidence,
        "modules": len(adapter),
        "modules_per_component": per_component,
        "module_kinds": kinds,
        "ranks": sorted(adapter.ranks()),
        "alphas": alphas,
        "alpha_none_modules": sum(1 for m in adapter.modules.values() if m.alpha is None),
        "dtypes": sorted(str(d).replace("torch.", "") for d in adapter.dtypes()),
        "parameters": adapter.num_parameters(),
        "size_bytes": _size_bytes(Path(path)),
        **_recipe_info(adapter.metadata),
        "metadata": adapter.metadata,
    }


def _recipe_info(metadata) -> dict:
    """The sampling recipe stored by the trainer (``lcm_core.sampling_recipe.read_recipe``): the objective
    and how to sample; ``None`` for adapters that carry none (released LCM-/TCD-LoRAs, Hyper-SD)."""
    import dataclasses

    from ..lcm_core.sampling_recipe import read_recipe

    recipe = read_recipe(metadata)
    if recipe is None:
        return {"objective": None, "sampling_recipe": None}
    info = dataclasses.asdict(recipe)
    info["w_range"] = list(recipe.w_range) if recipe.w_range is not None else None
    return {"objective": recipe.objective, "sampling_recipe": info}


def _recipe_line(info: dict) -> str:
    recipe = info.get("sampling_recipe")
    if recipe is None:
        return "not recorded (no lcm_lora.objective metadata)"
    parts = [f"sampler {recipe['sampler']}", f"{recipe['steps']} steps"]
    if recipe["gamma"] is not None:
        parts.append(f"gamma {recipe['gamma']:g}")
    parts.append(f"cfg {recipe['cfg']:g}")
    if recipe["w_range"] is not None:
        parts.append(f"w {recipe['w_range'][0]:g}-{recipe['w_range'][1]:g}")
    return f"{recipe['objective']} ({', '.join(parts)})"


def run_inspect(args: argparse.Namespace) -> int:
    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"file:          {info['file']}")
    print(f"format:        {info['format']}")
    print(f"architecture:  {info['architecture']}")
    for line in info["architecture_evidence"][:3]:
        print(f"               - {line}")
    comps = ", ".join(f"{c} {n}" for c, n in sorted(info["modules_per_component"].items()))
    print(f"modules:       {info['modules']} ({comps}; {info['module_kinds']['linear']} linear, "
          f"{info['module_kinds']['conv']} conv)")
    print(f"ranks:         {', '.join(map(str, info['ranks']))}")
    alphas = ", ".join(f"{a:g}" for a in info["alphas"]) or "none"
    none_note = f" ({info['alpha_none_modules']} modules without alpha: scale 1)" if info["alpha_none_modules"] else ""
    print(f"alpha:         {alphas}{none_note}")
    print(f"dtype:         {', '.join(info['dtypes'])}")
    print(f"parameters:    {info['parameters']:,}")
    print(f"size:          {info['size_bytes']:,} bytes")
    print(f"objective:     {_recipe_line(info)}")
    if info["metadata"]:
        print("metadata:")
        for k, v in sorted(info["metadata"].items()):
            v = v if len(v) <= 100 else v[:97] + "..."
            print(f"  {k}: {v}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    _check_output(args.output, args.force)
    adapter = _read(args.file)
    _write(adapter, args.output, args.to, args.force)
    print(f"wrote {args.output} ({args.to}, {len(adapter)} modules)")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..lcm_core.merge import merge_adapters

    _check_output(args.output, args.force)
    specs = [parse_weighted(s) for s in args.inputs]
    if args.method == "concat" and (args.rank is not None or args.energy is not None):
        raise ConfigError("merge", "--rank/--energy only apply to --method svd")
    adapters = [_read(path) for path, _ in specs]
    merged, report = merge_adapters(
        adapters,
        [w for _, w in specs],
        method=args.method,
        rank=args.rank,
        energy=args.energy,
        names=[path for path, _ in specs],
    )
    _write(merged, args.output, args.to, args.force)
    summary = report.summary()
    summary["output"] = args.output
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"wrote {args.output} ({args.to}, {summary['modules']} modules, "
              f"rank {summary['output_rank_min']}–{summary['output_rank_max']})")
        print(f"relative error: {report.total_relative_error:.3e} "
              f"(max per module {summary['max_module_relative_error']:.3e})")
    return 0


def run_fuse(args: argparse.Namespace) -> int:
    from ..lcm_core.fuse_checkpoint import fuse_checkpoint

    _check_output(args.output, args.force)
    specs = [parse_weighted(s) for s in args.inputs]
    adapters = [_read(path) for path, _ in specs]
    result = fuse_checkpoint(args.checkpoint, adapters, [w for _, w in specs], [p for p, _ in specs],
                             args.output, overwrite=args.force, arch=args.arch)
    print(f"wrote {args.output} ({result['architecture']}, {result['fused_weights']} weights changed)")
    return 0
