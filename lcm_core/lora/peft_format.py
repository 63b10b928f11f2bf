"""peft LoRA adapters: ``adapter_model.safetensors`` + ``adapter_config.json`` (peft ``save_pretrained``).

Keys ``base_model.model.<module path>.lora_A.weight`` (down) / ``.lora_B.weight`` (up);
scaling ``lora_alpha / r`` per module, with per-module overrides in ``rank_pattern`` /
``alpha_pattern`` whose keys peft matches as ``re.match(rf"(.*\\.)?({key})$", name)``
(``peft.utils.other.get_pattern_key``). ``use_rslora`` scales by ``alpha/√r``.

A multi-component adapter is written as one peft folder per component
(``<dir>/unet``, ``<dir>/text_encoder``, ``<dir>/text_encoder_2``); a single-component
adapter as a flat folder. Text-encoder patterns are written without the ``text_model.``
level so they match flattened (transformers ≥ 5) and nested CLIP models alike.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

from ..errors import AdapterFileError
from .adapter import LoraModule

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _effective_alpha(m: LoraModule) -> float:
    return float(m.rank) if m.alpha is None else float(m.alpha)


def _pattern_name(comp: str, path: str) -> str:
    return path[len("text_model."):] if comp != "unet" and path.startswith("text_model.") else path


def _num(x: float):
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def lora_config_dict(comp: str, modules: dict[str, LoraModule]) -> dict:
    """peft ``LoraConfig`` kwargs reproducing every module's rank and scale exactly.

    ``modules``: module path (no component) → module. Raises ValueError for Tucker modules.
    """
    for path, m in modules.items():
        if m.mid is not None:
            raise ValueError(f"{comp}.{path}: peft/diffusers formats cannot hold a lora_mid (Tucker) module")
    ranks = Counter(m.rank for m in modules.values())
    r = ranks.most_common(1)[0][0]
    alphas = Counter(_effective_alpha(m) for m in modules.values())
    lora_alpha = alphas.most_common(1)[0][0]
    names = {p: _pattern_name(comp, p) for p in modules}
    return {
        "r": r,
        "lora_alpha": _num(lora_alpha),
        "rank_pattern": {names[p]: m.rank for p, m in sorted(modules.items()) if m.rank != r},
        "alpha_pattern": {names[p]: _num(_effective_alpha(m)) for p, m in sorted(modules.items())
                          if _effective_alpha(m) != lora_alpha},
        "target_modules": sorted(names.values()),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": True,
    }


def _pattern_lookup(patterns: dict, name: str):
    for key, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return value
        except re.error:
            if name == key or name.endswith("." + key):
                return value
    return None


def alpha_from_config(source, config: dict, path: str, rank: int) -> float:
    """Effective kohya-style alpha of module ``path`` under a peft config (scale = alpha / rank)."""
    if config.get("use_dora"):
        raise AdapterFileError(source, "DoRA adapters (use_dora=true) are not supported")
    names = [path]
    if path.startswith("text_model."):
        names.append(path[len("text_model."):])
    alpha = None
    cfg_rank = None
    for n in names:
        alpha = alpha if alpha is not None else _pattern_lookup(config.get("alpha_pattern") or {}, n)
        cfg_rank = cfg_rank if cfg_rank is not None else _pattern_lookup(config.get("rank_pattern") or {}, n)
    if alpha is None:
        alpha = config.get("lora_alpha", 8)  # peft's LoraConfig default
    if cfg_rank is None:
        cfg_rank = config.get("r", rank)
    try:
        alpha, cfg_rank = float(alpha), int(cfg_rank)
    except (TypeError, ValueError):
        raise AdapterFileError(source, f"{path}: bad lora_alpha/r in adapter config") from None
    if cfg_rank != rank:
        raise AdapterFileError(source, f"{path}: rank mismatch: adapter config says r={cfg_rank} but the "
                                       f"weights have rank {rank}")
    if not math.isfinite(alpha):
        raise AdapterFileError(source, f"{path}: lora_alpha is {alpha}")
    if config.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # rsLoRA: scale = alpha/√r = (alpha·√r)/r
    return alpha


def read_config(source, path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFileError(source, f"cannot read {CONFIG_NAME}: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterFileError(source, f"{CONFIG_NAME} is not a JSON object")
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterFileError(source, f"peft_type {ptype} is not supported (LORA only)")
    return cfg


def folder_config(comp: str, modules: dict[str, LoraModule]) -> dict:
    cfg = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
           "inference_mode": True, "fan_in_fan_out": False, "modules_to_save": None}
    cfg.update(lora_config_dict(comp, modules))
    return cfg
