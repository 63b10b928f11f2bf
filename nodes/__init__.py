"""ComfyUI nodes of the LCM-LoRA pack (V3 schema API, ``comfy_api.latest``), category "LCM-LoRA".

Imported only inside a running ComfyUI (see the package root ``__init__.py``). The nodes
stay thin: reading, merging, saving adapters and the LCM/TCD samplers live in ``lcm_core``;
``comfy_bridge`` holds the small ComfyUI glue they share. Help pages: ``web/docs/<node_id>.md``.

Nodes: LCMLoraLoader, LCMAdapterMerge, LCMAdapterSave, LCMSampler, LCMScheduler, LCMKSampler.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .adapter_merge import LCMAdapterMerge
from .adapter_save import LCMAdapterSave
from .lcm_ksampler import LCMKSampler
from .lcm_lora_loader import LCMLoraLoader
from .lcm_sampler import LCMSampler
from .lcm_scheduler import LCMScheduler

NODES = [LCMLoraLoader, LCMAdapterMerge, LCMAdapterSave, LCMSampler, LCMScheduler, LCMKSampler]

# Trainer panel routes (/lcm_lora/train/...), only when ComfyUI's server exists (see trainer_routes).
from .trainer_routes import register_with_comfyui  # noqa: E402

register_with_comfyui()


class LCMLoraExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LCMLoraExtension:
    return LCMLoraExtension()


__all__ = ["comfy_entrypoint", "LCMLoraExtension", "NODES"]
