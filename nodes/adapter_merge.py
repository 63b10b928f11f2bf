"""LCM Adapter Merge node: τ' = Σ λ_i τ_i over N adapters (LCM-LoRA paper §3.3, arXiv 2311.05556).

The paper's recipe combines a style LoRA and LCM-LoRA as ``λ1 τ_style + λ2 τ_LCM`` with
λ1 = 0.8, λ2 = 1.0 (the defaults of slots 1 and 2). Methods:

* ``concat``: exact low-rank merge (``lcm_core.merge.merge_adapters``, rank Σ r_i);
* ``svd``: best rank-``rank`` approximation of the exact sum (same function), with its
  relative Frobenius error reported;
* ``fuse``: θ' = θ + Σ λ_i ΔW_i — every adapter is registered as a ComfyUI patch with
  strength λ_i, so ComfyUI adds the dense updates into the weights when it loads the model
  (under its own memory management; ``lcm_core.fuse`` would need private copies of the base
  weights). Takes every type ComfyUI's LoraLoader takes (LoRA, LoHa, LoKr, full, DoRA, OFT,
  BOFT); DoRA/OFT are applied in slot order, as chained LoraLoaders would. The adapter output
  is the exact concat merge for plain LoRAs, else the svd merge (see ``_merged_adapter``).

LyCORIS inputs: ``svd`` merges LoHa / LoKr / full modules from their exact factor forms;
``concat`` refuses them with an error naming the file.

Slots 3-8 are optional ("None" = empty); the web extension shows them one at a time.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from . import comfy_bridge as bridge
from ..lcm_core.sampling_recipe import merged_recipe
from . import recipe_follow

MAX_ADAPTERS = 8
NONE = "None"
METHODS = ("concat", "svd", "fuse")
AdapterType = io.Custom(bridge.ADAPTER_TYPE)


def _slot_inputs() -> list:
    names = bridge.lora_names()
    inputs = []
    for i in range(1, MAX_ADAPTERS + 1):
        required = i <= 2
        role = {1: " (slot 1: usually the style LoRA)", 2: " (slot 2: usually the LCM-LoRA)"}.get(i, "")
        inputs.append(io.Combo.Input(
            f"adapter_{i}", options=names if required else [NONE] + names, optional=not required,
            default=None if required else NONE,
            tooltip=f"Adapter {i} from the loras folder{role}." + ("" if required else " 'None' leaves the slot empty."),
        ))
        inputs.append(io.Float.Input(
            f"weight_{i}", default={1: 0.8}.get(i, 1.0), min=-10.0, max=10.0, step=0.01, optional=not required,
            tooltip=f"λ{i}: weight of adapter {i} in Σ λ_i ΔW_i (paper: 0.8 for the style LoRA, 1.0 for LCM-LoRA).",
        ))
    return inputs


class LCMAdapterMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMAdapterMerge",
            display_name="LCM Adapter Merge",
            category=bridge.CATEGORY,
            description="Merge a style LoRA with LCM-LoRA (or any N adapters) as Σ λ_i ΔW_i, apply the result "
                        "to MODEL/CLIP and output the merged adapter; the merge error is shown on the node.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the merged adapter is applied to."),
                io.Clip.Input("clip", optional=True, tooltip="Optional CLIP model to apply the text-encoder part to."),
                io.Combo.Input("method", options=list(METHODS), default="concat",
                               tooltip="concat: exact (rank = sum of ranks). svd: re-compressed to 'rank' (approximate; "
                                       "error reported). fuse: each adapter added into the weights at its weight (exact)."),
                io.Int.Input("rank", default=64, min=1, max=4096,
                             tooltip="Output rank for method 'svd', and for the adapter output of 'fuse' when an input "
                                     "is not a plain LoRA (LoHa / LoKr / full: the svd merge); ignored by concat."),
                io.Boolean.Input("patch_sampling", default=True, display_name="patch sampling to LCM",
                                 tooltip="Switch the model to LCM sampling, as the LCM-LoRA Loader does (not when an "
                                         "adapter's metadata says it is a TCD, PCM or TSCD adapter: plain eps sampling then)."),
                *_slot_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the merged adapter applied."),
                io.Clip.Output(display_name="CLIP", tooltip="The CLIP model with the merged adapter applied."),
                AdapterType.Output(display_name="merged adapter", tooltip="The merged adapter (e.g. for LCM Adapter Save)."),
                io.String.Output(display_name="report", tooltip="The merge report (method, ranks, relative error)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, adapter_1=None, adapter_2=None, adapter_3=None, adapter_4=None, adapter_5=None,
                        adapter_6=None, adapter_7=None, adapter_8=None):
        names = [adapter_1, adapter_2, adapter_3, adapter_4, adapter_5, adapter_6, adapter_7, adapter_8]
        for i, name in enumerate(names, start=1):
            ok = bridge.check_lora_name(name, allow_none=i > 2)
            if ok is not True:
                return f"adapter_{i}: {ok}"
        return True

    @classmethod
    def execute(cls, model, method="concat", rank=64, patch_sampling=True, clip=None, **slots) -> io.NodeOutput:
        from ..lcm_core.merge import merge_adapters

        if method not in METHODS:
            raise ConfigError("LCM Adapter Merge", f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        arch = bridge.model_architecture(model)
        names, adapters, weights = [], [], []
        for i in range(1, MAX_ADAPTERS + 1):
            name = slots.get(f"adapter_{i}")
            if name in (None, "", NONE):
                continue
            adapter = bridge.load_adapter(name)
            bridge.check_adapter_architecture(name, adapter, arch)
            names.append(name)
            adapters.append(adapter)
            weights.append(float(slots.get(f"weight_{i}", 1.0)))
        if len(adapters) < 1:
            raise ConfigError("LCM Adapter Merge", "no adapters selected")

        merged, report, note = _merged_adapter(merge_adapters, method, adapters, weights, int(rank), names)
        merged.architecture = merged.architecture or arch
        if method == "fuse":
            new_model, new_clip = model, clip
            for name, adapter, weight in zip(names, adapters, weights):
                patches = bridge.adapter_patches(name, adapter, arch, model=new_model, clip=new_clip)
                new_model, new_clip = bridge.apply_patches(patches, new_model, new_clip, weight, weight)
        else:
            patches = bridge.adapter_patches("merged adapter", merged, arch, model=model, clip=clip)
            new_model, new_clip = bridge.apply_patches(patches, model, clip, 1.0, 1.0)
        # the sampling recipe of the first adapter that records one (e.g. a TCD / PCM / TSCD adapter), else LCM;
        # the merged adapter's metadata keeps it (phases included) and the report says it, and which it ignored
        kept, conflict = merged_recipe([a.metadata for a in adapters], names)
        recipe, source = (kept, "adapter metadata") if kept is not None else recipe_follow.resolve(None)
        if kept is not None:
            merged.metadata.update(kept.to_metadata())  # (merge_adapters keeps it too; fuse's empty output does not)
        if patch_sampling and recipe.model_sampling == "lcm":
            new_model = bridge.patch_lcm_sampling(new_model)
        new_model = recipe_follow.attach(new_model, recipe)

        summary = report.summary()
        summary["method"] = method
        text = _report_text(method, names, weights, summary) + (f"\n{note}" if note else "")
        if source == "adapter metadata":
            text += "\n" + recipe_follow.describe(recipe, source)
        notes = list(report.notes) + ([conflict] if conflict and conflict not in report.notes else [])
        for extra in notes:  # e.g. inputs recording different recipes, bias diffs a LoRA cannot hold
            text += f"\nnote: {extra}"
        return io.NodeOutput(new_model, new_clip, merged, text, ui={"text": [text], "lcm_merge": [summary]})


def _merged_adapter(merge_adapters, method, adapters, weights, rank, names):
    """The merged-adapter output. concat / svd: that merge (concat refuses LoHa/LoKr/full modules with
    an error naming the file; no merge takes DoRA/OFT without base weights). fuse patches every
    adapter itself; its adapter output is the exact concat when all inputs are plain LoRA, else the
    rank-``rank`` svd merge (error reported), else — DoRA/OFT inputs — an empty adapter, said in the report."""
    from ..lcm_core.errors import AdapterFileError
    from ..lcm_core.lora import LoraAdapter

    kw = dict(dtype=torch.float32, progress=False, names=names)
    if method != "fuse":
        merged, report = merge_adapters(adapters, weights, method=method, rank=rank if method == "svd" else None, **kw)
        return merged, report, ""
    if all(a.is_plain_lora() for a in adapters):
        merged, report = merge_adapters(adapters, weights, method="concat", **kw)
        return merged, report, ""
    try:
        merged, report = merge_adapters(adapters, weights, method="svd", rank=rank, **kw)
    except AdapterFileError as e:  # multiplicative (DoRA / OFT): the fused MODEL/CLIP are still exact
        empty, report = LoraAdapter(), None
        return empty, _EmptyReport(), f"adapter output: none ({e.problem})"
    return merged, report, (f"adapter output: svd merge at rank {rank} (relative error "
                            f"{report.total_relative_error:.3g}); the MODEL/CLIP outputs are fused exactly")


class _EmptyReport:
    total_relative_error = 0.0
    notes: tuple = ()

    def summary(self) -> dict:
        return {"modules": 0, "output_rank_min": None, "output_rank_max": None, "total_relative_error": 0.0}


def _report_text(method: str, names, weights, summary: dict) -> str:
    terms = " + ".join(f"{w:g}·{n}" for n, w in zip(names, weights))
    lo, hi = summary.get("output_rank_min"), summary.get("output_rank_max")
    rank = f"rank {lo}" if lo == hi else f"rank {lo}-{hi}"
    err = summary.get("total_relative_error", 0.0)
    exact = " (exact)" if method in ("concat", "fuse") else ""
    return (f"{method}: {terms}\n{summary.get('modules', 0)} modules, {rank}, "
            f"relative error {err:.3g}{exact}")
