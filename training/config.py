"""Trainer configuration: loading (YAML/TOML/dict) with ``key=value`` overrides, and the run's identity (the
trajectory dict, its hash, the written ``config.yaml``).

The schema and its defaults (with their sources in the LCM-LoRA reference scripts) are in :mod:`.config_schema`,
value coercion in :mod:`.config_values`, the validation rules in :mod:`.config_rules`, the trainer panel's overrides
in :mod:`.config_panel`. Paths written in a config file are relative to that file's folder; paths given as
overrides are relative to the current directory.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..lcm_core.errors import ConfigError
from .config_rules import OBJECTIVE_ONLY_KEYS, tscd_stage_steps, validate_config
from .config_schema import (NON_TRAJECTORY_KEYS, NON_TRAJECTORY_SECTIONS, SECTION_CLASSES, SHORTHANDS, TrainConfig,
                            all_keys, field_meta, lcd_defaults)
from .config_values import set_value, suggest_key

__all__ = ["TrainConfig", "config_hash", "dump_config", "load_config", "parse_override", "read_config_file",
           "resolve_override_key", "trajectory_dict"]

# keys added after the first release whose default keeps the trajectory of older runs: left out of the
# trajectory dict while at their default, so the config hash of those runs does not change
_TRAJECTORY_DEFAULT_DROPPED = lcd_defaults("solver_guidance", "adversarial_weight", "adversarial_lr", "adversarial_real",
                                           "guidance_interval", "phase_starts")


def _apply_mapping(cfg: TrainConfig, data: Mapping, source: str, base_dir: Path | None) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"the top level must be a mapping of sections, got {type(data).__name__}")
    for section, body in data.items():
        if section in SHORTHANDS and not isinstance(body, Mapping):
            set_value(cfg, SHORTHANDS[section], body, source, base_dir)
            continue
        if section not in SECTION_CLASSES:
            raise ConfigError(source, f"unknown section '{section}'{suggest_key(str(section))}")
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(source, f"section '{section}' must be a mapping, got {body!r}")
        for name, value in body.items():
            dotted = f"{section}.{name}"
            try:
                field_meta(dotted)
            except KeyError:
                raise ConfigError(source, f"unknown key '{dotted}'{suggest_key(dotted)}") from None
            set_value(cfg, dotted, value, source, base_dir)


def read_config_file(path: str | os.PathLike) -> dict:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"is not UTF-8 text ({e.reason} at byte {e.start}): save the config as UTF-8") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / tomllib.TOMLDecodeError carry line numbers
        raise ConfigError(path, f"cannot parse: {e}") from None
    if data is None:  # an empty file: every default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"must hold sections of keys (e.g. 'train:' with 'max_steps: 300'), got {type(data).__name__} "
                                f"{data!r:.40}")
    return data


def resolve_override_key(key: str, source: str = "override") -> str:
    """``teacher`` → ``teacher.path``; a bare name → its unique section (``train`` wins ties); else dotted."""
    key = key.strip()
    if key in SHORTHANDS:
        return SHORTHANDS[key]
    if "." in key:
        try:
            field_meta(key)
            return key
        except KeyError:
            raise ConfigError(source, f"unknown key '{key}'{suggest_key(key)}") from None
    matches = [k for k in all_keys() if k.split(".", 1)[1] == key]
    if len(matches) > 1 and f"train.{key}" in matches:
        return f"train.{key}"  # the main section wins: seed → train.seed, batch_size → train.batch_size
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(source, f"key '{key}' is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(source, f"unknown key '{key}'{suggest_key(key)}")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``. Strings and paths are kept verbatim; other values are parsed as YAML
    (numbers, booleans, ``[1, 2, 4]``) and then type-checked like file values."""
    if "=" not in text:
        raise ConfigError("override", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    dotted = resolve_override_key(key, source=f"override {text!r}")
    kind = field_meta(dotted)["kind"].rstrip("?")
    if kind == "str":
        return dotted, (raw if raw.strip() else None)
    if not raw.strip():
        return dotted, None
    if not raw.strip().startswith("["):
        # numbers, booleans and comma lists are read by coerce_value from the text itself: YAML would take
        # "a photo #1" for "a photo" plus a comment, and 1 for an integer that a boolean key refuses
        return dotted, raw
    try:
        import yaml

        value = yaml.safe_load(raw)
    except Exception:
        value = raw
    return dotted, value


SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_path(source: str | os.PathLike) -> Path:
    """``source``; or, when no such file exists and it names a config this package ships (``configs/NAME`` or
    ``NAME``), the shipped one: the README's and the demo's ``--config configs/tiny_cpu.yaml`` then works from any
    folder and from a pip install, not only from a checkout's root."""
    path = Path(source)
    if path.is_file() or path.is_absolute() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = SHIPPED_CONFIGS / path.name
    return shipped if shipped.is_file() else path


def load_config(
    source: "TrainConfig | Mapping | str | os.PathLike",
    overrides: Iterable[str] = (),
) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a file, a dict or a config, then apply ``key=value`` overrides."""
    if isinstance(source, TrainConfig):
        cfg = copy.deepcopy(source)
    elif isinstance(source, Mapping):
        cfg = TrainConfig(source="<dict>")
        _apply_mapping(cfg, source, "<dict>", None)
    else:
        path = config_path(source)
        cfg = TrainConfig(source=os.fspath(path))
        _apply_mapping(cfg, read_config_file(path), os.fspath(path), path.resolve().parent)
    for text in overrides:
        dotted, value = parse_override(text)
        set_value(cfg, dotted, value, f"override {text!r}", Path.cwd())
    validate_config(cfg)
    return cfg


def trajectory_dict(cfg: TrainConfig) -> dict:
    """The part of the config that determines the training trajectory (resume must match it)."""
    d = cfg.to_dict()
    for s in NON_TRAJECTORY_SECTIONS:
        d.pop(s, None)
    objective = d["lcd"]["objective"]
    # keys of other objectives (validation keeps them at their defaults) are left out, and LCM runs leave
    # out the objective too, so that the hash and resume check of LCM and TCD runs stay what they were
    # before those keys existed
    for owner, keys in OBJECTIVE_ONLY_KEYS.items():
        if owner != objective:
            for name in keys:
                d["lcd"].pop(name, None)
    if objective == "lcm":
        d["lcd"].pop("objective", None)
    if objective == "tscd":  # the resolved stage length (train.max_steps is not a trajectory key by itself)
        d["lcd"]["tscd_stage_steps"] = tscd_stage_steps(cfg.lcd, cfg.train.max_steps)
    for name, default in _TRAJECTORY_DEFAULT_DROPPED.items():
        if d["lcd"].get(name) == default:
            d["lcd"].pop(name)
    for key in NON_TRAJECTORY_KEYS:
        section, name = key.split(".")
        d.get(section, {}).pop(name, None)
    return d


def config_hash(cfg: TrainConfig) -> str:
    """sha256 (first 16 hex digits) of the trajectory-determining config, recorded in the adapter metadata."""
    blob = json.dumps(trajectory_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of the full config (written as ``config.yaml`` in the output folder)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
