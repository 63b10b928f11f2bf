"""The trained LoRA as an :class:`~lcm_core.lora.LoraAdapter`, written by ``lcm_core.lora.write_adapter``.

peft stores ``<module>.lora_A.weight`` (down) and ``<module>.lora_B.weight`` (up) and scales by
``lora_alpha / r``; that is the adapter model's ``alpha / rank`` (kohya convention), so the
tensors map one to one. Canonical keys are ``unet.<module path>``. The same mapping is what the
reference's ``get_module_kohya_state_dict`` does by string replacement.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..lcm_core.lora import LoraAdapter, LoraModule
from ..lcm_core.lora.metadata import BASE_ARCHITECTURE_KEY
from .config_rules import guidance_interval
from .config_schema import NORMAL_CFG_DEFAULT

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# kohya / modelspec names of the base model (for tools that read kohya metadata).
_KOHYA_BASE = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "ssd1b": "sdxl_base_v1-0"}
_MODELSPEC = {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2/lora",
              "sdxl": "stable-diffusion-xl-v1-base/lora", "ssd1b": "stable-diffusion-xl-v1-base/lora"}


def peft_state_to_adapter(state: dict[str, torch.Tensor], alpha: float, arch: str | None, dtype: torch.dtype) -> LoraAdapter:
    downs, ups = {}, {}
    for key, tensor in state.items():
        if key.endswith(".lora_A.weight"):
            downs[key[: -len(".lora_A.weight")]] = tensor
        elif key.endswith(".lora_B.weight"):
            ups[key[: -len(".lora_B.weight")]] = tensor
    if set(downs) != set(ups):
        raise ValueError(f"unpaired LoRA tensors: {sorted(set(downs) ^ set(ups))[:5]}")
    modules = {
        f"unet.{path}": LoraModule(down=downs[path].detach().to("cpu", dtype).contiguous(),
                                   up=ups[path].detach().to("cpu", dtype).contiguous(), alpha=float(alpha))
        for path in sorted(downs)
    }
    known = arch if arch in _KOHYA_BASE else None
    return LoraAdapter(modules=modules, architecture=known)


def adapter_phases(cfg) -> int | None:
    """The phase count a pcm / tscd adapter samples with: ``lcd.phases`` (PCM), the last stage's segment
    count ``lcd.tscd_segments[-1]`` (TSCD: what training ends on); None for lcm / tcd."""
    lcd = cfg.lcd
    if lcd.objective == "pcm":
        return int(lcd.phases)
    if lcd.objective == "tscd":
        return int(lcd.tscd_segments[-1])
    return None


def adapter_recipe(cfg):
    """How the trained adapter wants to be sampled (``lcm_core.sampling_recipe``): the objective, the ω
    range distilled in, and the sampler defaults — LCM: lcm sampler, 4 steps, LCM model sampling; TCD:
    tcd sampler, 4 steps, plain ε model sampling, γ 0.3 (the TCD paper's default) or, with TDD's s
    draw, γ = ``lcd.tdd_s_ratio`` (the largest γ its training covered; TDD: train and sample with the same γ);
    PCM / TSCD: tcd sampler at γ 0 on the phased timesteps, steps = phases (:func:`adapter_phases`).
    With ``lcd.solver_guidance: false`` no guidance is distilled in: the recipe's cfg is ``lcd.normal_cfg``
    (the teacher's usual cfg; default :data:`NORMAL_CFG`) instead of 1 and it has no ω range. ``output.recommended_gamma``
    replaces the objective's γ (e.g. the γ a user measured best for a phased adapter)."""
    from dataclasses import replace

    from ..lcm_core.sampling_recipe import PHASED, recipe_for_objective

    lcd = cfg.lcd
    if lcd.objective in PHASED:
        recipe = recipe_for_objective(lcd.objective, w_range=(lcd.w_min, lcd.w_max), phases=adapter_phases(cfg),
                                      phase_starts=lcd.phase_starts)  # [] unless pcm (config rules)
    else:
        gamma = lcd.tdd_s_ratio if (lcd.objective == "tcd" and lcd.tcd_s_sampling == "tdd") else 0.3
        recipe = recipe_for_objective(lcd.objective, w_range=(lcd.w_min, lcd.w_max), steps=4, gamma=gamma)
    if not lcd.solver_guidance:
        recipe = replace(recipe, cfg=float(lcd.normal_cfg), w_range=None)
    if cfg.output.recommended_gamma is not None:
        recipe = replace(recipe, gamma=float(cfg.output.recommended_gamma))
    return recipe


# the default recommended cfg of an adapter trained without solver guidance (lcd.normal_cfg): PCM's "Normal CFG"
# adapters are sampled at 7.5 in its demo (G-U-N/Phased-Consistency-Model demo/app.py)
NORMAL_CFG = NORMAL_CFG_DEFAULT


def training_metadata(arch: str, rank: int, alpha: float, steps: int, config_hash: str, cfg) -> dict[str, str]:
    objective = cfg.lcd.objective
    comment = {"lcm": "LCM-LoRA (latent consistency distillation)", "tcd": "TCD-LoRA (trajectory consistency distillation)",
               "pcm": "PCM-LoRA (phased consistency distillation)",
               "tscd": "TSCD-LoRA (trajectory segmented consistency distillation)"}[objective]
    meta = {
        BASE_ARCHITECTURE_KEY: arch,
        "lcm_lora.rank": str(rank),
        "lcm_lora.alpha": str(alpha),
        "lcm_lora.steps": str(steps),
        "lcm_lora.config_hash": config_hash,
        "lcm_lora.teacher": os.path.basename(os.path.normpath(cfg.teacher.path or "")),
        "lcm_lora.num_ddim_timesteps": str(cfg.lcd.num_ddim_timesteps),
        "lcm_lora.w_range": f"{cfg.lcd.w_min},{cfg.lcd.w_max}",
        "lcm_lora.loss": cfg.lcd.loss if cfg.lcd.loss == "l2" else f"huber(c={cfg.lcd.huber_c})",
        "lcm_lora.target": cfg.lcd.target,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_steps": str(steps),
        "ss_training_comment": f"{comment}, lcm_lora.training",
    }
    if objective == "tcd":
        lcd = cfg.lcd
        meta["lcm_lora.tcd_s_sampling"] = (lcd.tcd_s_sampling if lcd.tcd_s_sampling == "uniform"
                                           else f"tdd(s_ratio={lcd.tdd_s_ratio},steps={lcd.tdd_steps[0]}-{lcd.tdd_steps[1]})")
    if objective == "tscd":
        lcd = cfg.lcd
        from .config_rules import tscd_stage_steps

        meta["lcm_lora.tscd_segments"] = ",".join(str(k) for k in lcd.tscd_segments)
        meta["lcm_lora.tscd_stage_steps"] = str(tscd_stage_steps(lcd, cfg.train.max_steps))
    if cfg.lcd.adversarial_weight > 0:  # PCM's adversarial consistency loss (training/adversarial.py)
        meta["lcm_lora.adversarial_weight"] = str(cfg.lcd.adversarial_weight)
        meta["lcm_lora.adversarial_real"] = cfg.lcd.adversarial_real
        meta["ss_training_comment"] = f"{comment} with PCM's adversarial consistency loss, lcm_lora.training"
    if cfg.output.export_ema_decay > 0:  # the weights written are an EMA of the online ones (training/ema.py)
        meta["lcm_lora.export_ema_decay"] = str(cfg.output.export_ema_decay)
    interval = guidance_interval(cfg.lcd)
    if interval is not None:  # ω distilled in on these teacher timesteps only
        meta["lcm_lora.guidance_interval"] = f"{interval[0]},{interval[1]}"
    if not cfg.lcd.solver_guidance:  # no ω distilled in: no guidance range to report
        meta["lcm_lora.solver_guidance"] = "false"
        meta.pop("lcm_lora.w_range")
    meta.update(adapter_recipe(cfg).to_metadata())  # lcm_lora.objective, recommended_* (shared contract keys)
    if arch in _KOHYA_BASE:
        meta["ss_base_model_version"] = _KOHYA_BASE[arch]
        meta["modelspec.architecture"] = _MODELSPEC[arch]
    return meta


def export_adapter(adapter: LoraAdapter, path: Path, fmt: str, metadata: dict[str, str], overwrite: bool = True) -> Path:
    """Write the final adapter atomically (``write_adapter``: temp file + fsync + rename, so a kill
    leaves the old file or none, never a partial one). The trainer saves the final checkpoint
    *before* exporting, so a failed export (disk full) loses nothing: the error says so."""
    from ..lcm_core.errors import ConfigError, LcmLoraError
    from ..lcm_core.lora import write_adapter

    try:
        write_adapter(adapter, path, format=fmt, overwrite=overwrite, extra_metadata=metadata)
    except ConfigError:
        raise
    except LcmLoraError as e:
        raise LcmLoraError(e.source, f"{e.problem}; the final checkpoint is kept: run again with --resume to retry "
                           "the export") from e
    return Path(path)
