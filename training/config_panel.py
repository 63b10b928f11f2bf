"""The ComfyUI trainer panel's overrides: which config keys a web request may set (the fields marked ``panel=`` in
:mod:`.config_schema`), with tighter bounds, checked as typed JSON, then validated like any config."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from ..lcm_core.errors import ConfigError
from .config_rules import validate_config
from .config_schema import SECTION_CLASSES, TrainConfig, field_default
from .config_values import set_value


PANEL_TEXT_CHARS = 1000  # one validation prompt from a panel request


def panel_overrides() -> dict[str, dict]:
    """The overrides the trainer panel accepts, from the fields marked ``panel=`` above:
    ``{name: {key, kind, min, max, choices, max_items, default, doc}}`` (JSON-serialisable; the
    panel builds its form from it). ``kind`` is the field's kind, or ``choice`` when it has choices."""
    out = {}
    for section, cls in SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            p = f.metadata.get("panel")
            if not p:
                continue
            meta = f.metadata
            choices = p["choices"] or meta["choices"]
            out[p["name"]] = {
                "key": f"{section}.{f.name}",
                "kind": "choice" if choices else meta["kind"].rstrip("?"),
                "min": p["minimum"] if p["minimum"] is not None else meta["minimum"],
                "max": p["maximum"] if p["maximum"] is not None else meta["maximum"],
                "choices": list(choices) if choices else None,
                "max_items": p["max_items"],
                "default": field_default(f),
                "doc": meta["doc"],
            }
    return out


def _check_panel_value(value: Any, spec: dict, source: str) -> None:
    """JSON values are typed already: no text-to-number coercion (``"12"`` is not an integer here)."""
    import math
    import unicodedata

    key = spec["key"]

    def number(v, integer: bool, label: str):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise ConfigError(source, f"key '{label}' must be {'an integer' if integer else 'a number'}, got {json.dumps(v)[:60]}")
        if not math.isfinite(v):
            raise ConfigError(source, f"key '{label}' must be finite, got {v}")
        if spec["min"] is not None and v < spec["min"]:
            raise ConfigError(source, f"key '{label}' must be >= {spec['min']}, got {v}")
        if spec["max"] is not None and v > spec["max"]:
            raise ConfigError(source, f"key '{label}' must be <= {spec['max']}, got {v}")

    kind = spec["kind"]
    if kind in ("int", "float"):
        number(value, kind == "int", key)
    elif kind == "choice":
        if value not in spec["choices"]:
            raise ConfigError(source, f"key '{key}' must be one of {', '.join(spec['choices'])}, got {json.dumps(value)[:60]}")
    elif kind in ("strlist", "intlist"):
        n = spec["max_items"]
        if not isinstance(value, list) or not value or len(value) > n:
            raise ConfigError(source, f"key '{key}' must be a list of 1 to {n} items, got {json.dumps(value)[:60]}")
        for i, item in enumerate(value):
            label = f"{key}[{i}]"
            if kind == "intlist":
                number(item, True, label)
            elif not isinstance(item, str) or not item.strip():
                raise ConfigError(source, f"key '{label}' must be a non-empty string, got {json.dumps(item)[:60]}")
            elif len(item) > PANEL_TEXT_CHARS:
                raise ConfigError(source, f"key '{label}' is longer than {PANEL_TEXT_CHARS} characters")
            elif any(unicodedata.category(c) in ("Cc", "Cs") for c in item):
                raise ConfigError(source, f"key '{label}' contains a control character (newline, NUL, ...); refused")
    else:  # a panel field of a kind this function does not know: a schema mistake, not a user error
        raise AssertionError(kind)


def apply_panel_overrides(cfg: TrainConfig, values: Any, source: str = "overrides") -> TrainConfig:
    """Set the panel's overrides ``{name: JSON value}`` on ``cfg`` (in place) and validate the result.

    Names and bounds come from :func:`panel_overrides`; every error is a :class:`ConfigError` naming
    ``source`` and the config key, as the trainer's own messages do."""
    if not isinstance(values, Mapping):
        raise ConfigError(source, f"must be a JSON object of overrides, got {type(values).__name__}")
    allowed = panel_overrides()
    unknown = sorted(set(values) - set(allowed), key=str)
    if unknown:
        raise ConfigError(source, f"unknown override(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    for name, spec in allowed.items():
        if name in values:
            _check_panel_value(values[name], spec, source)
            set_value(cfg, spec["key"], values[name], source, None)
    validate_config(cfg)
    return cfg
