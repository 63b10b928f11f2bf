"""Run in ComfyUI's python: exercise the pack's adapter cache (``nodes.comfy_bridge._AdapterCache``).

Usage: ``adapter_cache_check.py --comfyui DIR --repo DIR --bound BYTES FILE1 FILE2 FILE3``;
prints one JSON line (see ``test_comfy_recipe_and_conventions.test_adapter_cache_is_bounded_in_bytes``).
The pack is imported the way ComfyUI imports it (``comfy_side._import_pack``).
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
    ap.add_argument("--bound", type=int, required=True)
    ap.add_argument("files", nargs=3)
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from comfy_side import _import_comfy, _import_pack

    _import_comfy(a.comfyui)

    bridge = _import_pack(a.repo).nodes.comfy_bridge
    files = [os.path.realpath(f) for f in a.files]
    out = {"default_bytes": bridge.DEFAULT_CACHE_BYTES, "env_bytes": bridge.ADAPTERS.max_bytes}
    assert bridge.CACHE_ENV == "LCM_LORA_ADAPTER_CACHE_MB"
    saved, out["env_values"] = os.environ.get("LCM_LORA_ADAPTER_CACHE_MB"), {}
    for raw in ("inf", "1e400", "nan", "abc", "-1", "0"):  # what the pack does at import with each
        os.environ["LCM_LORA_ADAPTER_CACHE_MB"] = raw
        value = bridge.cache_bytes_from_env()
        out["env_values"][raw] = "maxsize" if value == sys.maxsize else value
    if saved is None:
        os.environ.pop("LCM_LORA_ADAPTER_CACHE_MB", None)
    else:
        os.environ["LCM_LORA_ADAPTER_CACHE_MB"] = saved
    cache = bridge._AdapterCache(max_bytes=a.bound)
    first = cache.get(files[0])
    out["nbytes"] = [bridge.adapter_nbytes(cache.get(f)) for f in files[:1]]
    cache.get(files[1])
    out["after_two"] = cache.paths()
    cache.get(files[2])
    out["after_three"] = cache.paths()
    out["bytes_after_three"] = cache.nbytes
    out["nbytes"] += [bridge.adapter_nbytes(cache.get(f)) for f in files[1:]]
    cache.get(files[2])
    cache.get(files[1])
    out["after_touch"] = cache.paths()
    out["hit_is_same_object"] = cache.get(files[1]) is cache.get(files[1])
    tiny = bridge._AdapterCache(max_bytes=1)
    tiny.get(files[0])
    out["tiny_bound"] = tiny.paths()
    zero = bridge._AdapterCache(max_bytes=0)
    zero.get(files[0])
    out["zero_bound"] = zero.paths()
    del first
    print(json.dumps(out))


if __name__ == "__main__":
    main()
