"""LCM-LoRA node pack root.

Two roles, one file:
* ComfyUI loads this file from ``custom_nodes/<pack>/`` and finds ``comfy_entrypoint``
  (ComfyUI's V3 schema API) and ``WEB_DIRECTORY``.
* ``pip install`` maps this directory to the package ``lcm_lora``; importing
  ``lcm_lora.lcm_core`` or the CLI must never import ComfyUI, so the nodes are
  only imported when ComfyUI itself is running (its ``folder_paths`` and ``comfy``
  modules are already loaded before custom nodes are).
"""
import sys

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"


def _running_inside_comfyui() -> bool:
    return "folder_paths" in sys.modules and "comfy" in sys.modules


if _running_inside_comfyui():
    from .nodes import comfy_entrypoint  # noqa: E402,F401
