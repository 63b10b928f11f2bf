"""The configuration of a resumed run: the run's own ``RUN/config.yaml``, a config file given again
merged on top, then ``key=value`` overrides.

A run folder records the full configuration it was started with (``config.yaml``: the config file
with every override applied, paths absolute) and, in ``config.source.json``, the values the config
*file* alone gave (before overrides). ``lcm-lora train --output RUN --resume`` needs nothing else.
With ``--config FILE`` given again, each key FILE sets (not null) is applied on top of the saved
config when its value differs from what the file gave when the run started — so an unchanged
template (``configs/sd15.yaml`` with ``teacher.path: null``) changes nothing and the run's own
overrides (``teacher=…``, ``max_steps=…``) survive, while a key edited in the file since then takes
effect. ``key=value`` overrides come last. (Runs written before this record existed: every non-null
key of FILE is applied.) The trainer then checks that only the keys a resume may change differ from
the checkpoint (``trainer.RESUME_MAY_CHANGE``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..lcm_core.errors import ConfigError
from .config import TrainConfig, config_path, load_config, parse_override
from .config_rules import validate_config
from .config_values import set_value

SAVED_CONFIG = "config.yaml"
SOURCE_RECORD = "config.source.json"


def flat_values(cfg: TrainConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of a config (JSON-comparable values)."""
    out = {}
    for section, body in cfg.to_dict().items():
        for name, value in body.items():
            out[f"{section}.{name}"] = json.loads(json.dumps(value, default=str))
    return out


def source_record(config) -> dict | None:
    """What the config file alone gave (recorded at the start of a run); None for in-memory configs."""
    if isinstance(config, (TrainConfig, Mapping)) or config is None:
        return None
    return {"file": os.fspath(config_path(config).resolve()), "values": flat_values(load_config(config))}


def record_for_run(config, output_dir, resume) -> dict | None:
    """The record to write for this run: a new run's config file; on resume, the file given again
    only when it is the file the run was started from (the comparison base stays that file)."""
    record = source_record(config)
    if record is None or not resume:
        return record
    old = _read_record(Path(output_dir))
    return record if old is None or old.get("file") == record["file"] else None


def _read_record(output_dir: Path) -> dict | None:
    path = output_dir / SOURCE_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record.get("values"), dict) else None


def resolve_run_config(config, output_dir, resume, overrides: Iterable[str] = ()) -> TrainConfig:
    """The validated config a (possibly resumed) run uses; see the module docstring.

    Without ``resume`` (or for an in-memory config, or a run folder without ``config.yaml``), this
    is ``load_config(config, overrides)``."""
    overrides = list(overrides)
    saved = Path(output_dir) / SAVED_CONFIG
    in_memory = isinstance(config, (TrainConfig, Mapping))
    if not resume or in_memory or not saved.is_file():
        if config is None:
            where = f"{saved} does not exist" if resume else "no config given"
            raise ConfigError(output_dir, f"{where}: give --config FILE (or --resume with the --output folder of an earlier run)")
        return load_config(config, overrides)
    cfg = load_config(saved)
    if config is not None:
        given = flat_values(load_config(config))
        record = _read_record(Path(output_dir))
        started_with = record["values"] if record is not None else None
        for key, value in given.items():
            if value is None:
                continue  # null in a template = "not set here": keep the run's value
            if started_with is not None and started_with.get(key) == value:
                continue  # unchanged since the run started: the run's own value (overrides included) stands
            set_value(cfg, key, value, os.fspath(config), None)
        cfg.source = os.fspath(config)
    else:
        cfg.source = os.fspath(saved)
    for text in overrides:
        dotted, value = parse_override(text)
        set_value(cfg, dotted, value, f"override {text!r}", Path.cwd())
    validate_config(cfg)
    return cfg


def write_source_record(output_dir: Path, record: dict | None) -> None:
    """Write ``config.source.json`` (atomically); nothing for in-memory configs."""
    if record is None:
        return
    from ..lcm_core.atomic_write import atomic_file

    with atomic_file(Path(output_dir) / SOURCE_RECORD, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
