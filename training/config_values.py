"""Config values: a raw value (YAML, TOML, ``key=value`` text, JSON) coerced to its key's kind and set on a
:class:`~.config_schema.TrainConfig`; unknown keys get a "did you mean" suggestion."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from ..lcm_core.errors import ConfigError
from .config_schema import SHORTHANDS, TrainConfig, all_keys, field_meta


def suggest_key(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys() + list(SHORTHANDS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce_value(value: Any, kind: str, key: str, source: str):
    """Convert ``value`` to the field's kind or raise ConfigError naming source and key."""
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and optional):
        if optional:
            return None
        raise ConfigError(source, f"key '{key}' must not be empty")

    def bad(expected):
        return ConfigError(source, f"key '{key}' must be {expected}, got {value!r}")

    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise bad("true or false")
    if base in ("int", "float"):
        integer = base == "int"
        expected = "an integer" if integer else "a number"
        if isinstance(value, bool):
            raise bad(expected)
        if isinstance(value, int) or (isinstance(value, float) and (not integer or value.is_integer())):
            return int(value) if integer else float(value)
        if isinstance(value, str):
            try:
                return int(value.strip()) if integer else float(value.strip())
            except ValueError:
                pass
        raise bad(expected)
    if base == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if base in ("strlist", "intlist"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if base == "intlist" or "," in value else [value]
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        item_kind = "str" if base == "strlist" else "int"
        return [coerce_value(v, item_kind, key, source) for v in value]
    raise AssertionError(kind)


def set_value(cfg: TrainConfig, dotted: str, value: Any, source: str, base_dir: Path | None) -> None:
    """Set ``cfg.<section>.<name>`` from a raw value, coerced and checked against the field's metadata."""
    section, name = dotted.split(".", 1)
    meta = field_meta(dotted)
    value = coerce_value(value, meta["kind"], dotted, source)
    if meta["path"] and value is not None and base_dir is not None:
        value = os.fspath(Path(base_dir, os.path.expanduser(value)))  # (Path: "teacher/" and "teacher" are one path)
    setattr(getattr(cfg, section), name, value)
