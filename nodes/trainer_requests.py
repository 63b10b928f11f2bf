"""Requests of the ComfyUI trainer panel: typing a start request, and the job's merged trainer config.

No aiohttp and no ComfyUI here (unit-tested without either). A start request names a shipped
config, a teacher, the training data (a folder, or prompts) and a LoRA name, plus overrides whose
names, kinds and bounds are the trainer's own schema (``training.config_panel.panel_overrides``: the
fields marked ``panel=``). :func:`job_config` loads the shipped config with the trainer's
``load_config``, sets the resolved paths and applies the overrides with
``training.config_panel.apply_panel_overrides``: every message about a value is the trainer's own. The job
then writes that config with ``dump_config`` and starts ``lcm-lora train --config <that file>``.

Names are confined by :mod:`lcm_core.safe_names` (the project's one module for that); its errors
become :class:`RequestError` 400 (unsafe) or 404 (not found).
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lcm_core.errors import ConfigError, LcmLoraError
from ..lcm_core.safe_names import NameNotFoundError, check_relative_name
from ..training.config import TrainConfig, load_config
from ..training.config_panel import PANEL_TEXT_CHARS, apply_panel_overrides, panel_overrides

START_KEYS = {"config", "teacher", "teacher_type", "data", "prompts", "output_name", "overrides"}
MAX_PROMPTS = 1000
JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


class RequestError(LcmLoraError):
    """A request the panel must refuse; ``status`` is the HTTP status the routes answer with."""

    def __init__(self, source, problem: str, status: int = 400):
        super().__init__(source, problem)
        self.status = status

    @classmethod
    def of(cls, error: LcmLoraError) -> "RequestError":
        """400 for a bad value or unsafe name, 404 for a name no folder holds."""
        return cls(error.source, error.problem, status=404 if isinstance(error, NameNotFoundError) else 400)


def confined_name(name: Any, what: str) -> str:
    """:func:`lcm_core.safe_names.check_relative_name` as a :class:`RequestError`."""
    try:
        return check_relative_name(name, what)
    except ConfigError as e:
        raise RequestError.of(e) from None


def check_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise RequestError("job", f"{str(job_id)[:60]!r} is not a job id", status=404)
    return job_id


def _check_prompt(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RequestError(what, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(what, "must not be empty")
    if len(value) > PANEL_TEXT_CHARS:
        raise RequestError(what, f"is longer than {PANEL_TEXT_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise RequestError(what, "contains a control character (newline, NUL, ...); refused")
    return value


@dataclass
class StartRequest:
    """A typed start request (names are resolved in ComfyUI's folders by ``JobManager.start``)."""

    config: str
    teacher: str
    teacher_type: str
    output_name: str
    data: str | None = None
    prompts: list[str] | None = None
    overrides: dict | None = None  # {panel name: JSON value}, checked by the trainer's schema


def parse_start_request(body: Any) -> StartRequest:
    """Type-check a start request body (a decoded JSON object); :class:`RequestError` 400 otherwise.

    The overrides are checked against the trainer's schema with its defaults here (early, before any
    file is resolved); :func:`job_config` checks them again on the chosen config. ``normal_cfg`` belongs to
    configs with ``lcd.solver_guidance: false``: it is checked early on the defaults with that setting,
    and :func:`job_config` refuses it (the trainer's message naming ``lcd.normal_cfg``) for a guided config."""
    if not isinstance(body, dict):
        raise RequestError("request body", f"must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - START_KEYS)
    if unknown:
        raise RequestError("request body", f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(START_KEYS))}")
    for key in ("config", "teacher", "output_name"):
        if key not in body:
            raise RequestError("request body", f"missing field {key!r}")
    config = confined_name(body["config"], "config")
    teacher = confined_name(body["teacher"], "teacher")
    teacher_type = body.get("teacher_type", "checkpoint")
    if teacher_type not in ("checkpoint", "diffusers"):
        raise RequestError("teacher_type", f"must be 'checkpoint' or 'diffusers', got {json.dumps(teacher_type)[:60]}")
    output_name = confined_name(body["output_name"], "output_name")
    if "/" in output_name:
        raise RequestError("output_name", f"{output_name!r} must be a plain file name, without folders")
    has_data, has_prompts = body.get("data") is not None, body.get("prompts") is not None
    if has_data == has_prompts:
        raise RequestError("request body", "give exactly one of 'data' (a folder in ComfyUI's input folder) or "
                                           "'prompts' (a list of prompts, prompts-only mode)")
    data = prompts = None
    if has_data:
        data = confined_name(body["data"], "data")
    else:
        value = body["prompts"]
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_PROMPTS:
            raise RequestError("prompts", f"must be a list of 1 to {MAX_PROMPTS} strings")
        prompts = [_check_prompt(p, f"prompts[{i}]") for i, p in enumerate(value)]
    overrides = body.get("overrides")
    overrides = {} if overrides is None else overrides
    early = TrainConfig(source="overrides")
    if isinstance(overrides, dict) and "normal_cfg" in overrides:
        early.lcd.solver_guidance = False  # whether the chosen config is a normal-CFG one: job_config
    try:
        apply_panel_overrides(early, overrides)
    except ConfigError as e:
        raise RequestError.of(e) from None
    return StartRequest(config, teacher, teacher_type, output_name, data, prompts, dict(overrides))


def job_config(req: StartRequest, config_file: Path, *, teacher: Path, data: Path | None = None,
               prompts_file: Path | None = None, tokenizer: Path | None = None, adapter_name: str) -> TrainConfig:
    """The merged trainer config of a job: the shipped ``config_file`` (the trainer's ``load_config``),
    the resolved teacher / data / prompts / tokenizer, the panel's output settings, then the request's
    overrides (``apply_panel_overrides``, which validates the whole). :class:`RequestError` 400 with the
    trainer's message otherwise."""
    try:
        cfg = load_config(config_file)
        cfg.teacher.path = str(teacher)
        if tokenizer is not None:
            cfg.teacher.tokenizer = str(tokenizer)
        cfg.data.path = str(data) if data is not None else None
        cfg.data.prompts = str(prompts_file) if prompts_file is not None else None
        cfg.output.format, cfg.output.name, cfg.logging.progress = "kohya", adapter_name, False
        cfg.source = str(config_file.name)
        return apply_panel_overrides(cfg, req.overrides or {})
    except ConfigError as e:
        raise RequestError.of(e) from None


def normal_cfg_configs(config_files: list[Path]) -> dict[str, float]:
    """``{file name: lcd.normal_cfg}`` of the configs with ``lcd.solver_guidance: false`` (PCM's normal-CFG
    recipe), loaded with the trainer's ``load_config``: the panel offers its ``normal_cfg`` field (the
    adapter's recommended cfg) for these only and shows their value. A config that does not load is left
    out with a warning in ComfyUI's log (starting a job with it reports the trainer's error)."""
    out = {}
    for path in config_files:
        try:
            with warnings.catch_warnings():  # e.g. "adamw8bit is not usable here": the job's own log says it
                warnings.simplefilter("ignore")
                cfg = load_config(path)
        except (ConfigError, OSError) as e:
            logging.warning("LCM-LoRA trainer panel: %s", e)
            continue
        if not cfg.lcd.solver_guidance:
            out[Path(path).name] = float(cfg.lcd.normal_cfg)
    return out


def override_schema() -> dict:
    """The allowed overrides with their limits (``GET /lcm_lora/train/options``; the panel builds its form from it)."""
    return panel_overrides()
