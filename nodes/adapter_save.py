"""LCM Adapter Save node: write an adapter into ComfyUI's ``loras`` folder in kohya format.

Uses ``lcm_core.lora.write_adapter`` (atomic: temp file + fsync + rename; refuses to
replace an existing file unless ``overwrite`` is on). The file then shows up in every
LoRA list (LoraLoader, LCM-LoRA Loader, …) — ComfyUI re-scans a folder whose mtime changed.
"""
from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError
from . import comfy_bridge as bridge

AdapterType = io.Custom(bridge.ADAPTER_TYPE)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def target_path(filename: str) -> tuple[str, str]:
    """(full path, name as the loras list shows it) for ``filename`` inside the first loras folder."""
    name = filename.strip().replace("\\", "/")
    if not name:
        raise ConfigError("LCM Adapter Save", "filename is empty")
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    root = os.path.realpath(folder_paths.get_folder_paths("loras")[0])
    full = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or not full.startswith(root + os.sep):
        raise ConfigError(filename, f"must be a relative name inside the loras folder {root}")
    return full, os.path.relpath(full, root).replace(os.sep, "/")


class LCMAdapterSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMAdapterSave",
            display_name="LCM Adapter Save",
            category=bridge.CATEGORY,
            description="Save an adapter (merged or loaded) into the loras folder as a kohya-format .safetensors "
                        "with metadata. Never overwrites unless asked.",
            is_output_node=True,
            inputs=[
                AdapterType.Input("adapter", tooltip="The adapter to save (from LCM Adapter Merge or LCM-LoRA Loader)."),
                io.String.Input("filename", default="lcm_lora_merged",
                                tooltip="File name inside the loras folder ('.safetensors' is added; sub-folders allowed)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Tensor precision of the saved file (released LCM-LoRAs use fp16)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of the same name. Off: an existing file is an error."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name", tooltip="The saved file's name as LoRA lists show it."),
            ],
        )

    @classmethod
    def execute(cls, adapter, filename="lcm_lora_merged", dtype="fp16", overwrite=False) -> io.NodeOutput:
        from ..lcm_core.lora import write_adapter

        if dtype not in DTYPES:
            raise ConfigError("LCM Adapter Save", f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        full, name = target_path(filename)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        out = adapter
        if adapter.dtypes() != {DTYPES[dtype]}:
            out = type(adapter)(
                modules={k: m.to(DTYPES[dtype]) for k, m in adapter.modules.items()}, metadata=dict(adapter.metadata),
                source_format=adapter.source_format, architecture=adapter.architecture,
            )
        write_adapter(out, full, format="kohya", overwrite=bool(overwrite),
                      extra_metadata={"lcm_lora.saved_by": "comfyui-lcm-lora LCM Adapter Save", "lcm_lora.dtype": dtype})
        text = f"saved {name} ({bridge.describe(out, 'kohya')}, {dtype})"
        return io.NodeOutput(name, ui={"text": [text], "lcm_saved": [name]})
