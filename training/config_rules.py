"""Config rules: ranges, choices and the combinations a run may not have (``lcd.objective`` and the keys that belong
to one objective, normal CFG, the guidance interval, 8-bit AdamW, the output name). Every error is a
:class:`~..lcm_core.errors.ConfigError` naming the config source and the key."""
from __future__ import annotations

import dataclasses
import math
import os
import re

from ..lcm_core.errors import ConfigError
from .config_schema import (GUIDANCE_INTERVAL_ALL, NORMAL_CFG_DEFAULT, NUM_TRAIN_TIMESTEPS, SECTION_CLASSES, TrainConfig,
                            lcd_defaults)
from .config_values import coerce_value


# Keys whose own rule below refuses a non-finite value with a message that says what the value is for.
OWN_FINITE_RULE = ("lcd.normal_cfg",)


def check_process_count(cfg: TrainConfig, world: int) -> None:
    """Each of ``world`` processes takes an equal share of the batch."""
    if cfg.train.batch_size % world:
        raise ConfigError(cfg.source, f"key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by the number "
                                      f"of processes ({world})")


def validate_config(cfg: TrainConfig) -> None:
    """Range / choice / cross-field checks; every error names the config source and the key."""
    src = cfg.source
    for section, cls in SECTION_CLASSES.items():
        body = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            value = getattr(body, f.name)
            meta = f.metadata
            value = coerce_value(value, meta["kind"], key, src)
            setattr(body, f.name, value)
            if value is None:
                continue
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(src, f"key '{key}' must be one of {', '.join(meta['choices'])}, got {value!r}")
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    if not math.isfinite(item) and key not in OWN_FINITE_RULE:  # nan passes < / >; inf reaches
                        raise ConfigError(src, f"key '{key}' must be a finite number, got {item}")  # the loss as NaN
                    if meta["minimum"] is not None and item < meta["minimum"]:
                        raise ConfigError(src, f"key '{key}' must be >= {meta['minimum']}, got {item}")
                    if meta["maximum"] is not None and item > meta["maximum"]:
                        raise ConfigError(src, f"key '{key}' must be <= {meta['maximum']}, got {item}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(src, f"key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got {cfg.train.device!r}")
    if cfg.lcd.w_min > cfg.lcd.w_max:
        raise ConfigError(src, f"key 'lcd.w_min' ({cfg.lcd.w_min}) must not exceed 'lcd.w_max' ({cfg.lcd.w_max})")
    _validate_objective(cfg)
    if any(s < 1 for s in cfg.validation.steps):
        raise ConfigError(src, f"key 'validation.steps' must hold positive step counts, got {cfg.validation.steps}")
    if cfg.data.path and cfg.data.prompts:
        raise ConfigError(src, "keys 'data.path' and 'data.prompts' are exclusive: give an image folder or a prompt list")
    from ..lcm_core.safe_names import safe_relative_path

    try:  # the adapter is written inside the output folder, never elsewhere (lcm_core.safe_names)
        safe_relative_path(cfg.output.name, allow_subfolders=False)
    except ConfigError as e:
        raise ConfigError(src, f"key 'output.name' {cfg.output.name!r}: {e.problem}") from None
    if cfg.output.format == "peft" and cfg.output.name.endswith(".safetensors"):
        cfg.output.name = cfg.output.name[: -len(".safetensors")]
    if cfg.optim.optimizer == "adamw8bit" and cfg.optim.fallback_optimizer:
        usable, why = bitsandbytes_usable(cfg.train.device)
        if not usable:
            import warnings

            warnings.warn(f"{src}: optim.optimizer adamw8bit is not usable here ({why}); using the nearest setting, "
                          f"optim.optimizer={cfg.optim.fallback_optimizer} (float32 Adam states: 8 bytes per LoRA weight instead of 2)",
                          stacklevel=2)
            cfg.optim.optimizer = cfg.optim.fallback_optimizer
    if cfg.optim.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(src, "key 'optim.optimizer' is adamw8bit but bitsandbytes is not installed (pip install bitsandbytes)") from None
    if cfg.logging.backend == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(src, "key 'logging.backend' is tensorboard but the tensorboard package is not installed") from None


# lcd keys that only apply to one objective, with their defaults (another objective's config must leave them alone)
TCD_ONLY_KEYS = lcd_defaults("tcd_s_sampling", "tdd_s_ratio", "tdd_steps")
_TDD_ONLY_KEYS = ("tdd_s_ratio", "tdd_steps")
PCM_ONLY_KEYS = lcd_defaults("phases", "phase_starts")
TSCD_ONLY_KEYS = lcd_defaults("tscd_segments", "tscd_stage_steps")
LCM_ONLY_KEYS = lcd_defaults("timestep_scaling")  # checked apart: kept in other objectives' trajectory dicts (hashes)
OBJECTIVE_ONLY_KEYS = {"tcd": TCD_ONLY_KEYS, "pcm": PCM_ONLY_KEYS, "tscd": TSCD_ONLY_KEYS}
# keys that only apply with the adversarial loss on (lcd.adversarial_weight > 0), with their defaults
ADVERSARIAL_ONLY_KEYS = lcd_defaults("adversarial_lr", "adversarial_real")
ADVERSARIAL_OBJECTIVES = ("pcm",)  # the adversarial timestep range [s, s + T/phases) is PCM's phase


def tscd_stage_steps(lcd, max_steps: int) -> int:
    """Optimizer steps per TSCD stage: ``lcd.tscd_stage_steps``, or ``max_steps // len(lcd.tscd_segments)``
    (at least 1) so that the stages split the run evenly."""
    if lcd.tscd_stage_steps is not None:
        return int(lcd.tscd_stage_steps)
    return max(1, int(max_steps) // max(1, len(lcd.tscd_segments)))


def _validate_objective(cfg: TrainConfig) -> None:
    """Combinations of ``lcd.objective`` with the keys that belong to one objective only."""
    src, lcd = cfg.source, cfg.lcd
    for owner, keys in OBJECTIVE_ONLY_KEYS.items():
        if owner == lcd.objective:
            continue
        for name, default in keys.items():
            if getattr(lcd, name) != default:
                raise ConfigError(src, f"key 'lcd.{name}' applies to 'lcd.objective: {owner}' only (objective is "
                                  f"{lcd.objective}); remove it or set lcd.objective={owner}")
    if lcd.objective != "lcm":
        if lcd.timestep_scaling != LCM_ONLY_KEYS["timestep_scaling"]:
            raise ConfigError(src, "key 'lcd.timestep_scaling' applies to 'lcd.objective: lcm' only (the "
                              f"{lcd.objective} map has no boundary scalings); remove it or set lcd.objective=lcm")
    _validate_normal_cfg(cfg)
    _validate_guidance_interval(cfg)
    if cfg.output.recommended_gamma is not None and cfg.lcd.objective == "lcm":
        raise ConfigError(src, "key 'output.recommended_gamma' applies to the TCD sampler's adapters (lcd.objective "
                          "tcd, pcm or tscd); an LCM-LoRA is sampled by the LCM sampler, which has no γ")
    if lcd.objective == "pcm" and lcd.phases > lcd.num_ddim_timesteps:
        raise ConfigError(src, f"key 'lcd.phases' ({lcd.phases}) must not exceed 'lcd.num_ddim_timesteps' "
                          f"({lcd.num_ddim_timesteps}): each phase needs at least one solver step")
    if lcd.objective == "pcm" and lcd.phase_starts:
        from ..lcm_core.phased_timesteps import check_phase_starts

        try:
            check_phase_starts(lcd.phase_starts, lcd.phases, lcd.num_ddim_timesteps)
        except ConfigError as e:
            raise ConfigError(src, f"key 'lcd.phase_starts' {e.problem} (lcd.phases {lcd.phases}, "
                              f"lcd.num_ddim_timesteps {lcd.num_ddim_timesteps})") from None
    if lcd.objective == "tscd":
        if not lcd.tscd_segments:
            raise ConfigError(src, "key 'lcd.tscd_segments' must list at least one segment count, e.g. [8, 4, 2, 1]")
        bad = [k for k in lcd.tscd_segments if k < 1 or NUM_TRAIN_TIMESTEPS % k]
        if bad:
            raise ConfigError(src, f"key 'lcd.tscd_segments': every segment count must be >= 1 and divide the "
                              f"{NUM_TRAIN_TIMESTEPS} training timesteps, got {bad[0]} in {lcd.tscd_segments}")
        skip = NUM_TRAIN_TIMESTEPS // lcd.num_ddim_timesteps
        narrow = [k for k in lcd.tscd_segments if k > 1 and NUM_TRAIN_TIMESTEPS // k <= skip]
        if narrow:  # every solver step would cross a segment edge: the stage distils one teacher step, no segment
            raise ConfigError(src, f"key 'lcd.tscd_segments': {narrow[0]} segments are {NUM_TRAIN_TIMESTEPS // narrow[0]} "
                              f"timesteps wide, not wider than one solver step ({skip}, lcd.num_ddim_timesteps "
                              f"{lcd.num_ddim_timesteps}): use fewer segments or more solver steps")
    if lcd.loss == "huber" and lcd.huber_c <= 0:
        raise ConfigError(src, "key 'lcd.huber_c' must be > 0 with 'lcd.loss: huber' (at 0 the pseudo-Huber gradient is "
                          "NaN wherever a difference is exactly 0): use e.g. 0.001, or lcd.loss: l2")
    if lcd.objective == "tcd":
        if lcd.tcd_s_sampling != "tdd":
            for name in _TDD_ONLY_KEYS:
                if getattr(lcd, name) != TCD_ONLY_KEYS[name]:
                    raise ConfigError(src, f"key 'lcd.{name}' applies to 'lcd.tcd_s_sampling: tdd' only "
                                      f"(tcd_s_sampling is {lcd.tcd_s_sampling})")
    if lcd.adversarial_weight > 0:
        if lcd.objective not in ADVERSARIAL_OBJECTIVES:
            raise ConfigError(src, f"key 'lcd.adversarial_weight' ({lcd.adversarial_weight}) needs 'lcd.objective: pcm' "
                              f"(objective is {lcd.objective}): PCM's adversarial consistency loss draws its timestep in the "
                              "phase above s; remove it or set lcd.objective=pcm")
    else:
        for name, default in ADVERSARIAL_ONLY_KEYS.items():
            if getattr(lcd, name) != default:
                raise ConfigError(src, f"key 'lcd.{name}' applies only with the adversarial loss on (lcd.adversarial_weight "
                                  "> 0, e.g. 0.1 as PCM's --adv_weight); remove it or set lcd.adversarial_weight")
    steps = lcd.tdd_steps  # checked where it is used: a coarse solver grid (num_ddim_timesteps < 8) is fine otherwise
    if (lcd.objective == "tcd" and lcd.tcd_s_sampling == "tdd"
            and (len(steps) != 2 or not 1 <= steps[0] <= steps[1] <= lcd.num_ddim_timesteps)):
        raise ConfigError(src, f"key 'lcd.tdd_steps' must be [min, max] step counts with 1 <= min <= max <= "
                          f"lcd.num_ddim_timesteps ({lcd.num_ddim_timesteps}), got {steps}")




def _validate_normal_cfg(cfg: TrainConfig) -> None:
    """``lcd.normal_cfg`` belongs to ``lcd.solver_guidance: false`` (a guided adapter is sampled at cfg 1: ω is
    distilled in) and must exceed 1 (at cfg 1 a normal-CFG adapter samples without guidance)."""
    src, lcd = cfg.source, cfg.lcd
    if lcd.solver_guidance and lcd.normal_cfg != NORMAL_CFG_DEFAULT:
        raise ConfigError(src, "key 'lcd.normal_cfg' applies to 'lcd.solver_guidance: false' only (an adapter distilled "
                          "with guidance is sampled at cfg 1); remove it or set lcd.solver_guidance=false")
    if not math.isfinite(lcd.normal_cfg) or lcd.normal_cfg <= 1.0:
        raise ConfigError(src, f"key 'lcd.normal_cfg' must be a finite cfg > 1 (the teacher's usual cfg; at 1 the "
                          f"adapter samples without guidance), got {lcd.normal_cfg}")


def _validate_guidance_interval(cfg: TrainConfig) -> None:
    """``lcd.guidance_interval`` is ``[lo, hi]`` with ``0 <= lo <= hi <= 999`` and needs the guided solver step."""
    src, lcd = cfg.source, cfg.lcd
    iv = list(lcd.guidance_interval)
    if len(iv) != 2 or not 0 <= iv[0] <= iv[1] <= NUM_TRAIN_TIMESTEPS - 1:
        raise ConfigError(src, f"key 'lcd.guidance_interval' must be [lo, hi] timesteps with 0 <= lo <= hi <= "
                          f"{NUM_TRAIN_TIMESTEPS - 1} (e.g. [200, 700]), got {iv}")
    if iv != GUIDANCE_INTERVAL_ALL and not lcd.solver_guidance:
        raise ConfigError(src, "key 'lcd.guidance_interval' limits the guidance of the teacher's solver step, which "
                          "'lcd.solver_guidance: false' turns off; remove one of them")


def guidance_interval(lcd) -> tuple[int, int] | None:
    """``lcd.guidance_interval`` as the loss takes it: ``None`` when it covers every timestep (the default)."""
    iv = [int(v) for v in lcd.guidance_interval]
    return None if iv == GUIDANCE_INTERVAL_ALL else (iv[0], iv[1])


def bitsandbytes_usable(device: str = "auto") -> tuple[bool, str]:
    """Whether bitsandbytes' 8-bit AdamW can run for ``train.device`` (it needs the package and a CUDA device)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "bitsandbytes is not installed: pip install bitsandbytes"
    import torch

    if device != "auto" and not device.startswith("cuda"):
        return False, f"train.device is {device}; bitsandbytes' 8-bit optimizers need a CUDA device"
    if not torch.cuda.is_available():
        return False, "no CUDA device; bitsandbytes' 8-bit optimizers need one"
    return True, ""


def require_inputs(cfg: TrainConfig) -> None:
    """Checks needed before a run starts (not for partial configs such as the shipped templates)."""
    if not cfg.teacher.path:
        raise ConfigError(cfg.source, "key 'teacher.path' is not set (give teacher=PATH)")
    if not os.path.exists(cfg.teacher.path):
        raise ConfigError(cfg.source, f"key 'teacher.path': {cfg.teacher.path} does not exist")
    if not cfg.data.path and not cfg.data.prompts:
        raise ConfigError(cfg.source, "neither 'data.path' (image folder) nor 'data.prompts' (prompt list) is set")
    for key in ("data.path", "data.prompts", "teacher.vae", "teacher.tokenizer", "teacher.tokenizer_2"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not os.path.exists(value):
            raise ConfigError(cfg.source, f"key '{key}': {value} does not exist")
