"""safetensors ``__metadata__`` we write next to an adapter.

Source metadata (str → str) is kept; format-specific entries that would be stale are
dropped (``lora_adapter_metadata`` is regenerated for the diffusers format). Ours:

* ``lcm_lora.format_version``, ``lcm_lora.architecture`` (``sd1|sd2|sdxl|ssd1b|unknown``),
  ``lcm_lora.rank`` / ``lcm_lora.alpha`` (a number, or a JSON list when modules differ;
  alpha ``none`` = scale 1), ``lcm_lora.components``, ``lcm_lora.merge_recipe`` (JSON, set by
  the merge code through ``extra_metadata`` or the adapter's metadata);
* ``lcm_lora.alpha_none`` (diffusers/peft only): canonical keys whose alpha is "none"
  (stored there as ``lora_alpha = r``), so a round trip restores ``alpha=None`` exactly;
* sd-scripts' names (``library/train_util.py`` ``SS_METADATA_KEY_*``): ``ss_network_module``,
  ``ss_network_dim``, ``ss_network_alpha`` (``Dynamic`` when modules differ, as
  ``networks/resize_lora.py`` writes), ``ss_base_model_version`` (``sd_v1``, ``sd_v2``,
  ``sdxl_base_v1-0``), ``ss_v2``.
"""
from __future__ import annotations

import json
from typing import Mapping

from .adapter import LoraAdapter

FORMAT_VERSION = "1"
ALPHA_NONE_KEY = "lcm_lora.alpha_none"
BASE_ARCHITECTURE_KEY = "lcm_lora.base_architecture"  # sd1 / sd2 / sdxl / ssd1b, or custom (a model of its own)
_STALE = {"lora_adapter_metadata", "format", ALPHA_NONE_KEY}
SS_BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "ssd1b": "sdxl_base_v1-0"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def build_metadata(adapter: LoraAdapter, fmt: str, arch: str | None,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    md = {k: v for k, v in adapter.metadata.items() if k not in _STALE}
    ranks = sorted(adapter.ranks())
    alphas = sorted({m.alpha for m in adapter.modules.values()}, key=lambda a: (a is None, a or 0.0))
    md["lcm_lora.format_version"] = FORMAT_VERSION
    md["lcm_lora.architecture"] = arch or "unknown"
    md["lcm_lora.components"] = ",".join(sorted(adapter.components()))
    md["lcm_lora.rank"] = str(ranks[0]) if len(ranks) == 1 else json.dumps(ranks)
    if len(alphas) == 1:
        md["lcm_lora.alpha"] = "none" if alphas[0] is None else _num(alphas[0])
    else:
        md["lcm_lora.alpha"] = json.dumps([None if a is None else float(a) for a in alphas])
    algos = {a.split("+")[0] for a in adapter.algorithms()}
    lycoris = algos - {"lora", "locon", "lora_tucker"}
    md["ss_network_module"] = "lycoris.kohya" if lycoris or any("+dora" in a for a in adapter.algorithms()) \
        else "networks.lora"
    if md["ss_network_module"] != "networks.lora":
        md["lcm_lora.algorithms"] = ",".join(sorted(adapter.algorithms()))
    md["ss_network_dim"] = str(ranks[0]) if len(ranks) == 1 else "Dynamic"
    eff = {float(m.rank if m.alpha is None else m.alpha) for m in adapter.modules.values()}
    md["ss_network_alpha"] = repr(eff.pop()) if len(eff) == 1 else "Dynamic"
    if arch in SS_BASE_MODEL_VERSION:
        md["ss_base_model_version"] = SS_BASE_MODEL_VERSION[arch]
        md["ss_v2"] = str(arch == "sd2")
    if fmt in ("diffusers", "peft"):
        none = sorted(k for k, m in adapter.modules.items() if m.alpha is None)
        if none:
            md[ALPHA_NONE_KEY] = "all" if len(none) == len(adapter.modules) else json.dumps(none)
    for k, v in (extra or {}).items():
        if not isinstance(v, str):
            raise TypeError(f"metadata value for {k!r} must be a string (JSON-encode structures)")
        md[k] = v
    return md


def alpha_none_keys(metadata: Mapping[str, str], keys) -> set[str]:
    raw = metadata.get(ALPHA_NONE_KEY)
    if not raw:
        return set()
    if raw == "all":
        return set(keys)
    try:
        listed = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, over-long integer, nested too deeply
        return set()
    if not isinstance(listed, list):
        return set()
    return {k for k in listed if isinstance(k, str)}
