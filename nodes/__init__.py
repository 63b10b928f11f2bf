"""ComfyUI nodes of the LCM-LoRA pack (V3 schema API, ``comfy_api.latest``), category "LCM-LoRA".

Imported only inside a running ComfyUI (see the package root ``__init__.py``). The nodes
stay thin: reading, merging, saving adapters and the LCM/TCD samplers live in ``lcm_core``;
``comfy_bridge`` holds the small ComfyUI glue they share. Help pages: ``web/docs/<node_id>.md``.

Nodes: LCMLoraLoader, LCMAdapterMerge, LCMAdapterSave, LCMSampler, LCMScheduler, LCMKSampler, LCMCFGGuider.

Importing this package has no side effect: the trainer panel's routes (``/lcm_lora/train/...``,
:mod:`.trainer_routes`) are added to ComfyUI's server in :meth:`LCMLoraExtension.on_load`.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .adapter_merge import LCMAdapterMerge
from .adapter_save import LCMAdapterSave
from .lcm_cfg_guider import LCMCFGGuider
from .lcm_ksampler import LCMKSampler
from .lcm_lora_loader import LCMLoraLoader
from .lcm_sampler import LCMSampler
from .lcm_scheduler import LCMScheduler

NODES = [LCMLoraLoader, LCMAdapterMerge, LCMAdapterSave, LCMSampler, LCMScheduler, LCMKSampler, LCMCFGGuider]


class LCMLoraExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        """Add the trainer panel's routes to ComfyUI's server (once; nothing without a server)."""
        from .trainer_routes import register_with_comfyui

        register_with_comfyui()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.64 declares ComfyExtension.on_load but does not call it yet (nodes.py
        # load_custom_node calls comfy_entrypoint, then get_node_list, before the server adds its
        # routes to the app): call it here; it is idempotent, so a ComfyUI that calls it is fine too.
        await self.on_load()
        return list(NODES)


async def comfy_entrypoint() -> LCMLoraExtension:
    return LCMLoraExtension()


__all__ = ["comfy_entrypoint", "LCMLoraExtension", "NODES"]
