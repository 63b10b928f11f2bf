"""Run inside ComfyUI's own Python: patched weights for LyCORIS / DoRA / OFT adapters, three ways.

For each case (a list of ``file:strength``, applied in order) on one SD1.5 checkpoint:

* ``comfy``: ComfyUI's LoraLoader path — ``comfy.sd.load_lora_for_models`` per adapter (what
  chained LoraLoader nodes do), then ``ModelPatcher.patch_model()``;
* ``node``: our nodes — one adapter: the LCM-LoRA Loader's patch path (``comfy_bridge.load_adapter``
  → ``adapter_patches`` → ``apply_patches``); several: ``LCMAdapterMerge`` with method ``fuse``;

and the unpatched base weights of every touched key (``base``), all saved as float32
safetensors in ``--out``. Prints one JSON line: ``{"keys": {case: [model keys]}, "messages": …}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--loras", required=True)
    ap.add_argument("--cases", required=True, help="JSON {case: [[file, strength], ...]}")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from comfy_side import _import_comfy, _import_pack

    _import_comfy(a.comfyui)
    import torch
    from safetensors.torch import save_file

    import comfy.sd
    import comfy.utils
    import folder_paths

    folder_paths.add_model_folder_path("loras", a.loras, is_default=True)
    pack = _import_pack(a.repo)
    import importlib

    bridge = importlib.import_module("comfyui_lcm_lora.nodes.comfy_bridge")
    merge_mod = importlib.import_module("comfyui_lcm_lora.nodes.adapter_merge")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(a.checkpoint, output_vae=False, output_clip=False)
    assert pack is not None
    base_sd = model.model.state_dict()
    cases = json.loads(a.cases)
    keys_out, messages, base_keys = {}, {}, set()

    def patched(m, keys):
        m = m.clone()
        out = {}
        for k in keys:  # ModelPatcher.patch_weight_to_device: float32 working copy + calculate_weight
            w = base_sd[k].to(torch.float32).clone()
            out[k] = comfy.lora.calculate_weight(m.patches[k], w, k).to(torch.float32).contiguous()
        return out

    for case, items in cases.items():
        comfy_model = model
        for name, strength in items:
            lora = comfy.utils.load_torch_file(os.path.join(a.loras, name), safe_load=True)
            comfy_model, _ = comfy.sd.load_lora_for_models(comfy_model, None, lora, strength, 0)
        keys = sorted(k for k in comfy_model.patches if k.startswith("diffusion_model."))
        if len(items) == 1:
            name, strength = items[0]
            adapter = bridge.load_adapter(name)
            patches = bridge.adapter_patches(name, adapter, bridge.model_architecture(model), model=model)
            node_model, _ = bridge.apply_patches(patches, model, None, strength, strength)
        else:
            slots = {}
            for i, (name, strength) in enumerate(items, start=1):
                slots[f"adapter_{i}"] = name
                slots[f"weight_{i}"] = strength
            result = merge_mod.LCMAdapterMerge.execute(model, method="fuse", rank=8, patch_sampling=False, **slots)
            node_model = result.result[0]
            messages[case] = result.result[3]
        node_keys = sorted(k for k in node_model.patches if k.startswith("diffusion_model."))
        assert node_keys == keys, (case, set(node_keys) ^ set(keys))
        save_file(patched(comfy_model, keys), os.path.join(a.out, f"comfy_{case}.safetensors"))
        save_file(patched(node_model, keys), os.path.join(a.out, f"node_{case}.safetensors"))
        keys_out[case] = keys
        base_keys.update(keys)
    save_file({k: base_sd[k].to(torch.float32).contiguous() for k in sorted(base_keys)},
              os.path.join(a.out, "base.safetensors"))

    # The merge node's svd / concat with a LyCORIS input, and a file mixing two architectures.
    from comfyui_lcm_lora.lcm_core.errors import LcmLoraError

    extra = {}
    slots = {"adapter_1": "loha.safetensors", "weight_1": 0.8, "adapter_2": "lora.safetensors", "weight_2": 1.0}
    res = merge_mod.LCMAdapterMerge.execute(model, method="svd", rank=8, patch_sampling=False, **slots)
    merged = res.result[2]
    extra["svd_report"] = res.result[3]
    extra["svd_algorithms"] = merged.algorithms()
    save_file({k: m.delta_weight().reshape(m.weight_shape[0], -1).contiguous() for k, m in merged.modules.items()},
              os.path.join(a.out, "svd_merged_delta.safetensors"))
    for what, call in (("concat", lambda: merge_mod.LCMAdapterMerge.execute(model, method="concat", patch_sampling=False,
                                                                           **slots)),
                       ("mixed", lambda: bridge.load_adapter("mixed.safetensors"))):
        try:
            call()
            extra[what] = None
        except LcmLoraError as e:
            extra[what] = f"{type(e).__name__}: {e}"
    print(json.dumps({"keys": keys_out, "messages": messages, "extra": extra}))


if __name__ == "__main__":
    main()
