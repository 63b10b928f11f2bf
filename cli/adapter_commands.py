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
    _add_arch_flag(p)
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser(
        "convert", help="convert a LoRA between kohya, diffusers, peft and ComfyUI formats",
        description="Convert an adapter between formats. LyCORIS modules (LoHa, LoKr, full diff) and DoRA/OFT "
                    "become plain LoRA by the best rank-r approximation of their ΔW (--rank or --energy; the "
                    "relative error is printed, per module with --json); DoRA/OFT also need --base CKPT.",
    )
    p.add_argument("file")
    p.add_argument("--to", required=True, choices=OUTPUT_FORMATS, help="output format")
    p.add_argument("-o", "--output", required=True, help="output file (peft: output folder)")
    p.add_argument("--rank", type=int, help="LyCORIS/DoRA/OFT modules: LoRA rank of the SVD (plain LoRA modules are kept)")
    p.add_argument("--energy", type=float, help="LyCORIS/DoRA/OFT modules: keep the smallest rank holding this fraction of Σσ²")
    p.add_argument("--base", metavar="CKPT", help="single-file base checkpoint (needed for DoRA / OFT modules)")
    p.add_argument("--arch", choices=("sd1", "sd2", "sdxl", "ssd1b"),
                   help="the adapter's architecture, for a partial adapter that fits several whose ComfyUI / LDM "
                        "names differ (default: detected)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _add_arch_flag(p)
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "merge",
        help="weighted merge of adapters (τ' = Σ λ_i τ_i)",
        description="Merge adapters: FILE:WEIGHT ... (weight defaults to 1). concat is exact (rank Σ r_i); "
        "svd re-ranks to --rank or --energy and reports the relative Frobenius error.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE:WEIGHT")
    p.add_argument("--method", choices=("concat", "svd", "fuse"), default="concat",
                   help="concat: exact, plain LoRA only; svd: any additive type (LoRA, LoHa, LoKr, full), error "
                        "reported; fuse: bake every type into --base CKPT and write a checkpoint")
    p.add_argument("--base", metavar="CKPT", help="base checkpoint: required by --method fuse; with svd it lets "
                                                   "DoRA / OFT modules in (their update on this base at their weight)")
    p.add_argument("--rank", type=int, help="svd: target rank (default: the largest input rank per module)")
    p.add_argument("--energy", type=float, help="svd: keep the smallest rank holding this fraction of Σσ² (0-1]")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--to", choices=OUTPUT_FORMATS, default=None,
                   help="output format (default kohya; not with --method fuse, whose output is a checkpoint)")
    p.add_argument("--json", action="store_true", help="print the merge report as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _add_arch_flag(p)
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
    _add_arch_flag(p)
    p.set_defaults(func=run_fuse)


def _add_arch_flag(p) -> None:
    p.add_argument("--allow-unknown-arch", action="store_true",
                   help="accept adapters whose modules fit no supported architecture (e.g. of a custom UNet); "
                        "by default such a file, or one mixing architectures, is an error")


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
    """Refuse an existing output, or one whose folder does not exist, before doing any work (the atomic write
    checks again at the end)."""
    from ..lcm_core.errors import OutputExistsError

    if not force and os.path.lexists(output):
        raise OutputExistsError(output, "already exists; pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(output, f"output folder {folder} does not exist")


def _read(path: str, allow_unknown_arch: bool = False, arch: str | None = None):
    """The adapter at ``path``; ``arch`` (``convert --arch``) settles an ambiguous detection, never overrules a
    clear one (read_adapter's ``expected_arch``)."""
    from ..lcm_core.lora import read_adapter

    if not os.path.exists(path):
        raise ConfigError(path, "no such file or folder")
    return read_adapter(path, require_fit=not allow_unknown_arch, expected_arch=arch)


def _write(adapter, output: str, fmt: str, force: bool, extra_metadata=None) -> None:
    from ..lcm_core.lora import write_adapter

    write_adapter(adapter, output, format=fmt, overwrite=force, extra_metadata=extra_metadata)


def _size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------- commands


def describe(path: str, allow_unknown_arch: bool = False) -> dict:
    """Everything `inspect` prints, as a JSON-ready dict."""
    from ..lcm_core.lora.architecture import detect_adapter_architecture
    from ..lcm_core.lora.lycoris_modules import describe_module

    adapter = _read(path, allow_unknown_arch)
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
        "adversarial": _adversarial_info(adapter.metadata),
        "metadata": adapter.metadata,
        "algorithms": adapter.algorithms(),
        "module_details": {k: describe_module(m) for k, m in adapter.modules.items()},
    }


def _recipe_info(metadata) -> dict:
    """The sampling recipe stored by the trainer (``lcm_core.sampling_recipe.read_recipe``): the objective
    and how to sample; ``None`` for adapters that carry none (released LCM-/TCD-LoRAs, Hyper-SD)."""
    import dataclasses

    from ..lcm_core.errors import LcmLoraError
    from ..lcm_core.sampling_recipe import read_recipe, recipe_timesteps

    recipe = read_recipe(metadata)
    if recipe is None:
        return {"objective": None, "sampling_recipe": None}
    info = dataclasses.asdict(recipe)
    info["w_range"] = list(recipe.w_range) if recipe.w_range is not None else None
    info["guidance_interval"] = _guidance_interval(metadata)
    try:  # pcm / tscd: the phased timesteps of the recommended step count (None for lcm / tcd)
        info["timesteps"] = recipe_timesteps(recipe, recipe.steps)
    except LcmLoraError:  # a step count the phases cannot be split into: metadata stays advisory
        info["timesteps"] = None
    return {"objective": recipe.objective, "sampling_recipe": info}


def _guidance_interval(metadata) -> list[int] | None:
    """The teacher timesteps ``[lo, hi]`` the trainer guided (``lcm_lora.guidance_interval``, ``lcd.guidance_interval``);
    None when recorded as every timestep (the key is absent) or unreadable (metadata is advisory)."""
    text = (metadata or {}).get("lcm_lora.guidance_interval")
    try:
        lo, hi = (int(v) for v in str(text).split(","))
    except ValueError:
        return None
    return [lo, hi]


def _adversarial_info(metadata) -> dict | None:
    """PCM's adversarial consistency loss as the trainer records it (``lcm_lora.adversarial_*``), else None."""
    weight = (metadata or {}).get("lcm_lora.adversarial_weight")
    if weight is None:
        return None
    try:
        value: float | str = float(weight)
    except ValueError:
        value = weight
    if isinstance(value, float) and not math.isfinite(value):  # "nan" / "inf": kept as text, --json stays valid JSON
        value = weight
    return {"weight": value, "real": metadata.get("lcm_lora.adversarial_real")}


def _recipe_line(info: dict) -> str:
    recipe = info.get("sampling_recipe")
    if recipe is None:
        return "not recorded (no lcm_lora.objective metadata)"
    parts = [f"sampler {recipe['sampler']}", f"{recipe['steps']} steps"]
    if recipe.get("phases") is not None:  # pcm / tscd: edge-to-edge steps (lcm_core.phased_timesteps)
        parts.append(f"{recipe['phases']} phases")
        if recipe.get("phase_starts"):  # lcd.phase_starts: phases of other lengths than PCM's even split
            parts.append(f"starting at solver indices {'/'.join(map(str, recipe['phase_starts']))}")
        if recipe.get("timesteps"):
            parts.append(f"timesteps {'/'.join(map(str, recipe['timesteps']))}")
    if recipe["gamma"] is not None:
        parts.append(f"gamma {recipe['gamma']:g}")
    if recipe["cfg"] > 1:  # lcd.solver_guidance false: no ω distilled in, sampled with real CFG
        parts.append(f"cfg {recipe['cfg']:g} (normal CFG: sample with cfg > 1, negative prompts work)")
    else:
        parts.append(f"cfg {recipe['cfg']:g}")
    if recipe["w_range"] is not None:
        parts.append(f"w {recipe['w_range'][0]:g}-{recipe['w_range'][1]:g}")
    if recipe.get("guidance_interval") is not None:
        parts.append("guided on teacher timesteps {}-{}".format(*recipe["guidance_interval"]))
    return f"{recipe['objective']} ({', '.join(parts)})"


def run_inspect(args: argparse.Namespace) -> int:
    info = describe(args.file, args.allow_unknown_arch)
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
    print(f"algorithms:    {', '.join(f'{a} {n}' for a, n in sorted(info['algorithms'].items()))}")
    print(f"objective:     {_recipe_line(info)}")
    if info["adversarial"] is not None:
        adv = info["adversarial"]
        real = f", real samples: {adv['real']}" if adv.get("real") else ""
        print(f"adversarial:   PCM adversarial consistency loss, weight {adv['weight']}{real}")
    if info["metadata"]:
        print("metadata:")
        for k, v in sorted(info["metadata"].items()):
            v = v if len(v) <= 100 else v[:97] + "..."
            # one line per key, and printable whatever the file holds (a lone surrogate cannot be encoded)
            line = f"  {k}: {v}".replace("\n", "\\n")
            print(line.encode("utf-8", "backslashreplace").decode("utf-8"))
    print("per module (algorithm, rank, factors):")
    for key, d in info["module_details"].items():
        print(f"  {key}: {d['algorithm']}, rank {d['rank']}, {d['factors']}")
    return 0


def _base_weights(base: str | None, adapters):
    """Base weights for the multiplicative (DoRA / OFT) modules of ``adapters``, or None."""
    if base is None:
        return None
    from ..lcm_core.fuse_checkpoint import base_weights

    keys = sorted({k for a in adapters for k, m in a.modules.items() if getattr(m, "multiplicative", False)})
    return base_weights(base, keys)[1] if keys else None


def run_convert(args: argparse.Namespace) -> int:
    from ..lcm_core.convert_lycoris import to_plain_lora

    _check_output(args.output, args.force)
    if args.rank is not None and args.rank < 1:
        raise ConfigError("convert", f"--rank must be a positive integer, got {args.rank}")
    if args.energy is not None and not 0.0 < args.energy <= 1.0:
        raise ConfigError("convert", f"--energy must be in (0, 1], got {args.energy}")
    adapter = _read(args.file, args.allow_unknown_arch, args.arch)
    base = _base_weights(args.base, [adapter])
    adapter, report, notes = to_plain_lora(adapter, args.file, rank=args.rank, energy=args.energy, base=base,
                                           progress=not args.json)
    if args.to in ("diffusers", "peft"):  # they hold no lora_mid: a Tucker LoCon folds into a conv LoRA, exactly
        from ..lcm_core.convert_lycoris import fold_tucker

        adapter, folded = fold_tucker(adapter)
        if folded:
            notes.append(f"{folded} Tucker LoCon module(s) (lora_mid) folded into conv LoRA factors of the same "
                         "rank (exact)")
    _write(adapter, args.output, args.to, args.force)
    summary = {"output": args.output, "format": args.to, "modules": len(adapter), "notes": notes}
    if report is not None:
        summary.update(converted_modules=len(report.per_module), total_relative_error=report.total_relative_error,
                       per_module_relative_error=report.per_module, per_module_rank=report.per_module_rank)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"wrote {args.output} ({args.to}, {len(adapter)} modules)")
    if report is not None:
        worst = max(report.per_module.values(), default=0.0)
        print(f"converted {len(report.per_module)} LyCORIS/DoRA/OFT module(s) to LoRA by SVD: relative error "
              f"{report.total_relative_error:.3e} (max per module {worst:.3e})")
    for note in notes:
        print(f"note: {note}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..lcm_core.merge import merge_adapters

    _check_output(args.output, args.force)
    specs = [parse_weighted(s) for s in args.inputs]
    if args.method in ("concat", "fuse") and (args.rank is not None or args.energy is not None):
        raise ConfigError("merge", "--rank/--energy only apply to --method svd")
    if args.method == "fuse":
        if args.to is not None:
            raise ConfigError("merge", "--to does not apply to --method fuse: its output is a single-file checkpoint")
        if args.base is None:
            raise ConfigError("merge", "--method fuse bakes the adapters into a checkpoint: give it with --base CKPT "
                                       "(the output is then a checkpoint, as `lcm-lora fuse CKPT FILE:WEIGHT...`)")
        return _fuse(args.base, specs, args.output, args.force, None, args.allow_unknown_arch, as_json=args.json)
    adapters = [_read(path, args.allow_unknown_arch) for path, _ in specs]
    base = _base_weights(args.base, adapters)
    if base is not None:
        from ..lcm_core.convert_lycoris import effective_full

        adapters = [effective_full(a, base, p, w) for a, (p, w) in zip(adapters, specs)]
    merged, report = merge_adapters(
        adapters,
        [w for _, w in specs],
        method=args.method,
        rank=args.rank,
        energy=args.energy,
        names=[path for path, _ in specs],
    )
    fmt = args.to or "kohya"
    _write(merged, args.output, fmt, args.force)
    summary = report.summary()
    summary["output"] = args.output
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"wrote {args.output} ({fmt}, {summary['modules']} modules, "
              f"rank {summary['output_rank_min']}–{summary['output_rank_max']})")
        print(f"relative error: {report.total_relative_error:.3e} "
              f"(max per module {summary['max_module_relative_error']:.3e})")
        if report.sampling_objective:
            print(f"sampling recipe: {report.sampling_objective} (kept from the inputs' metadata)")
        for note in report.notes:
            print(f"note: {note}")
    return 0


def run_fuse(args: argparse.Namespace) -> int:
    from ..lcm_core.fuse_checkpoint import fuse_checkpoint

    _check_output(args.output, args.force)
    return _fuse(args.checkpoint, [parse_weighted(s) for s in args.inputs], args.output, args.force, args.arch,
                 args.allow_unknown_arch)


def _fuse(checkpoint, specs, output, force, arch, allow_unknown_arch, as_json: bool = False) -> int:
    from ..lcm_core.fuse_checkpoint import fuse_checkpoint

    _check_output(output, force)
    adapters = [_read(path, allow_unknown_arch) for path, _ in specs]
    result = fuse_checkpoint(checkpoint, adapters, [w for _, w in specs], [p for p, _ in specs],
                             output, overwrite=force, arch=arch)
    if as_json:  # merge --method fuse --json
        print(json.dumps({"output": output, "architecture": result["architecture"],
                          "fused_weights": result["fused_weights"], "method": "fuse"}, indent=2, sort_keys=True))
    else:
        print(f"wrote {output} ({result['architecture']}, {result['fused_weights']} weights changed)")
    return 0
