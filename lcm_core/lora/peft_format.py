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


_PLAIN_KEY = re.compile(r"[\w\-]+(?:\.[\w\-]+)*")
_QUANTIFIER = re.compile(r"(?<!\\)[*+?{]")
MAX_REGEX_KEYS = 16  # regular-expression keys evaluated per pattern map (plain keys: unlimited)
MAX_REGEX_LEN = 256
_INDEX_CACHE: dict[int, tuple[dict, dict, list, list]] = {}


def _pattern_index(source, field: str, patterns: dict) -> tuple[dict, list, list]:
    """Split a ``rank_pattern`` / ``alpha_pattern`` map into plain module names (matched in O(depth)
    by dotted suffix, which is what peft's regex does for them) and the few true regular
    expressions. Untrusted files must not be able to hang the reader, so regex keys are limited
    to :data:`MAX_REGEX_KEYS`, no groups / alternation and at most one quantifier (peft's own
    ``(.*\.)?`` prefix adds another: worst case quadratic in the module-name length)."""
    cached = _INDEX_CACHE.get(id(patterns))
    if cached is not None and cached[0] is patterns:
        return cached[1:]
    plain: dict[str, int] = {}
    regex: list[tuple[int, re.Pattern]] = []
    for pos, key in enumerate(patterns):
        if _PLAIN_KEY.fullmatch(key):
            plain.setdefault(key, pos)
            continue
        if (len(regex) >= MAX_REGEX_KEYS or len(key) > MAX_REGEX_LEN or any(c in key for c in "()|")
                or len(_QUANTIFIER.findall(key)) > 1):
            raise AdapterFileError(source, f"{field} key {key[:80]!r} is a regular expression too complex to "
                                           f"evaluate safely (at most {MAX_REGEX_KEYS} regex keys, one quantifier, "
                                           "no groups)")
        try:
            regex.append((pos, re.compile(rf"(.*\.)?({key})$")))
        except (re.error, RecursionError, OverflowError):
            raise AdapterFileError(source, f"{field} key {key[:80]!r} is not a valid regular expression") from None
    if len(_INDEX_CACHE) > 16:
        _INDEX_CACHE.clear()
    values = list(patterns.values())
    _INDEX_CACHE[id(patterns)] = (patterns, plain, regex, values)
    return plain, regex, values


def _pattern_lookup(source, field: str, patterns: dict, name: str):
    """The value of the first key of ``patterns`` matching ``name`` as peft matches it
    (``re.match(rf"(.*\.)?({key})$", name)``, ``peft.utils.other.get_pattern_key``), or None."""
    if not patterns:
        return None
    if not isinstance(patterns, dict) or not all(isinstance(k, str) for k in patterns):
        raise AdapterFileError(source, f"{field} in the adapter config must map module names to numbers")
    plain, regex, values = _pattern_index(source, field, patterns)
    parts = name.split(".")
    hits = [plain[s] for s in (".".join(parts[i:]) for i in range(len(parts))) if s in plain]
    best = min(hits) if hits else len(patterns)
    for pos, rx in regex:
        if pos >= best:
            break
        if rx.match(name):
            best = pos
            break
    return None if best == len(patterns) else values[best]


def alpha_from_config(source, config: dict, path: str, rank: int) -> float:
    """Effective kohya-style alpha of module ``path`` under a peft config (scale = alpha / rank)."""
    names = [path]
    if path.startswith("text_model."):
        names.append(path[len("text_model."):])
    alpha = None
    cfg_rank = None
    for n in names:
        alpha = alpha if alpha is not None else _pattern_lookup(source, "alpha_pattern", config.get("alpha_pattern"), n)
        cfg_rank = cfg_rank if cfg_rank is not None else _pattern_lookup(source, "rank_pattern", config.get("rank_pattern"), n)
    if alpha is None:
        alpha = config.get("lora_alpha", 8)  # peft's LoraConfig default
    if cfg_rank is None:
        cfg_rank = config.get("r", rank)
    try:
        if isinstance(alpha, bool) or isinstance(cfg_rank, bool) or (isinstance(cfg_rank, float)
                                                                      and not cfg_rank.is_integer()):
            raise ValueError
        alpha, cfg_rank = float(alpha), int(cfg_rank)
    except (TypeError, ValueError, OverflowError):
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
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: bad JSON, over-long integers
        raise AdapterFileError(source, f"cannot read {CONFIG_NAME}: {e}") from None
    except RecursionError:
        raise AdapterFileError(source, f"cannot read {CONFIG_NAME}: JSON nested too deeply") from None
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
