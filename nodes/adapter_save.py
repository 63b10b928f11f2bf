"""LCM Adapter Save node: write an adapter into ComfyUI's ``loras`` folder in kohya format.

Names follow ComfyUI's save nodes (SaveImage, SaveLora, "Extract and Save Lora"): a
``filename_prefix`` (sub-folders and ``%date%``-style variables allowed) gets a counter from
``folder_paths.get_save_image_path`` — ``<prefix>_00001_.safetensors``, then ``_00002_`` … — so
a save never replaces a file. The prefix is confined to the loras folder by
``lcm_core.safe_names`` (absolute paths and ``..`` refused, every component sanitised, symlinks
that leave the folder refused). ``lcm_core.lora.write_adapter`` writes atomically (temp file +
fsync + link, which fails instead of replacing a file that appeared meanwhile: the next counter
is taken then). The file then shows up in every LoRA list (LoraLoader, LCM-LoRA Loader, …) —
ComfyUI re-scans a folder whose mtime changed.
"""
from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..lcm_core.errors import ConfigError, OutputExistsError
from ..lcm_core.safe_names import MAX_NAME_BYTES, safe_output_path, safe_relative_path, shorten_name
from . import comfy_bridge as bridge

AdapterType = io.Custom(bridge.ADAPTER_TYPE)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
NODE = "LCM Adapter Save"
SUFFIX = ".safetensors"
COUNTER_BYTES = len("_000000_") + len(SUFFIX)  # ComfyUI's counter (5 digits, 6 past 99999) and the suffix
MAX_TRIES = 1000


def loras_root() -> str:
    return os.path.realpath(folder_paths.get_folder_paths("loras")[0])


def next_free_path(filename_prefix: str, root: str | None = None) -> tuple[str, str, int]:
    """(full path, name as the loras list shows it, counter) for the next ``<prefix>_NNNNN_.safetensors``.

    The counter is ComfyUI's (``folder_paths.get_save_image_path``: one more than the highest
    ``<prefix>_<n>_`` file in that folder). Errors name the node input ``filename_prefix``.
    """
    root = root or loras_root()
    if not isinstance(filename_prefix, str) or not filename_prefix.strip():
        raise ConfigError(f"{NODE} filename_prefix", "is empty; give a name such as 'lcm/my_merge'")
    text = filename_prefix.strip()
    if text.lower().endswith(SUFFIX):
        text = text[: -len(SUFFIX)]
    try:
        rel = safe_relative_path(text)
        head, _, last = rel.rpartition("/")  # room for the counter and suffix: "<prefix>_NNNNN_.safetensors"
        rel = "/".join(p for p in (head, shorten_name(last, MAX_NAME_BYTES - COUNTER_BYTES)) if p)
        # before ComfyUI creates the sub-folder: no symbolic link may lead it out of the loras folder
        safe_output_path(root, rel, suffix=SUFFIX)
        # ComfyUI's own counter and %year%/%month%/… variables (it also creates the sub-folder)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(rel, root)
    except ConfigError as e:
        raise ConfigError(f"{NODE} filename_prefix {filename_prefix!r}",
                          f"{e.problem}; it must be a relative name inside the loras folder {root}") from None
    except Exception as e:  # get_save_image_path refuses a prefix that leaves the folder
        raise ConfigError(f"{NODE} filename_prefix {filename_prefix!r}",
                          f"must be a relative name inside the loras folder {root} ({str(e).splitlines()[0]})") from None
    name = "/".join(p for p in (subfolder.replace(os.sep, "/"), f"{filename}_{counter:05}_{SUFFIX}") if p)
    try:
        full = safe_output_path(root, name, suffix=SUFFIX)
    except ConfigError as e:
        raise ConfigError(f"{NODE} filename_prefix {filename_prefix!r}",
                          f"{e.problem}; it must stay inside the loras folder {root}") from None
    return str(full), os.path.relpath(full, root).replace(os.sep, "/"), counter


class LCMAdapterSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LCMAdapterSave",
            display_name=NODE,
            category=bridge.CATEGORY,
            description="Save an adapter (merged or loaded) into the loras folder as a kohya-format .safetensors "
                        "with metadata, named <filename_prefix>_00001_.safetensors (the counter goes up; never overwrites).",
            is_output_node=True,
            inputs=[
                AdapterType.Input("adapter", tooltip="The adapter to save (from LCM Adapter Merge or LCM-LoRA Loader)."),
                io.String.Input("filename_prefix", default="lcm_lora/merged",
                                tooltip="Name inside the loras folder; a counter and '.safetensors' are added "
                                        "(<prefix>_00001_.safetensors). Sub-folders, and the variables %year%, "
                                        "%month%, %day%, %hour%, %minute%, %second% as in Save Image."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Tensor precision of the saved file (released LCM-LoRAs use fp16)."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name", tooltip="The saved file's name as LoRA lists show it."),
            ],
        )

    @classmethod
    def execute(cls, adapter, filename_prefix="lcm_lora/merged", dtype="fp16") -> io.NodeOutput:
        from ..lcm_core.lora import write_adapter

        if dtype not in DTYPES:
            raise ConfigError(f"{NODE} dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
        out = adapter
        if adapter.dtypes() != {DTYPES[dtype]}:
            out = type(adapter)(
                modules={k: m.to(DTYPES[dtype]) for k, m in adapter.modules.items()}, metadata=dict(adapter.metadata),
                source_format=adapter.source_format, architecture=adapter.architecture,
            )
        extra = {"lcm_lora.saved_by": "comfyui-lcm-lora LCM Adapter Save", "lcm_lora.dtype": dtype}
        for _ in range(MAX_TRIES):
            full, name, _counter = next_free_path(filename_prefix)
            try:
                write_adapter(out, full, format="kohya", overwrite=False, extra_metadata=extra)
                break
            except OutputExistsError:
                continue  # another save took this number between the scan and the write: take the next
        else:
            raise ConfigError(f"{NODE} filename_prefix {filename_prefix!r}",
                              f"no free file name after {MAX_TRIES} tries; choose another filename_prefix")
        text = f"saved {name} ({bridge.describe(out, 'kohya')}, {dtype})"
        return io.NodeOutput(name, ui={"text": [text], "lcm_saved": [name]})
