"""Trainer configuration: schema, defaults, loading (YAML/TOML/dict), ``key=value`` overrides, validation.

Defaults follow the LCM-LoRA reference, diffusers ``examples/consistency_distillation/
train_lcm_distill_lora_sd_wds.py`` / ``train_lcm_distill_lora_sdxl.py`` (argparse defaults, and the
README's recommended command line) and the LCM paper (Luo et al. 2023, §4.2, Algorithm 1):

* ``lcd.num_ddim_timesteps = 50`` (skip k = 1000 // 50 = 20): ``--num_ddim_timesteps`` default 50.
* ``lcd.w_min/w_max = 3, 15``: ``--w_min`` default 3.0 in the SDXL LoRA script, 5.0 in the SD one
  (``configs/sd15.yaml`` uses 5), ``--w_max`` 15.0 in both. ω multiplies (cond − uncond) in
  ``x0 = cond + ω (cond − uncond)``, i.e. the paper's ``(1+ω)Ψ(c) − ωΨ(∅)`` (the argparse help
  text there says the opposite; the code is what counts).
* ``lcd.loss = huber``, ``huber_c = 0.001``: the README runs ``--loss_type="huber"`` (the argparse
  default is "l2"); ``--huber_c`` default 0.001.
* ``lcd.timestep_scaling = 10``: ``--timestep_scaling_factor`` default 10.0.
* ``lcd.target = stopgrad``: the LoRA scripts use the online student under ``no_grad`` as target
  ("we do not use a separate target network for LCM-LoRA distillation"); ``ema`` is the paper's
  θ⁻ ← μθ⁻ + (1 − μ)θ with μ = ``ema_decay`` (0.95 in ``train_lcm_distill_sd_wds.py``).
* ``lcd.objective = lcm``; ``tcd`` is trajectory consistency distillation (Zheng et al. 2024,
  rootonchair ``tcd/train_tcd_distill_lora_*.py``; :mod:`.tcd`) with ``lcd.tcd_s_sampling``
  (``uniform``: the reference; ``tdd``: Target-Driven Distillation's draw, ``lcd.tdd_s_ratio`` 0.3,
  ``lcd.tdd_steps`` [4, 8]). TCD-only keys with ``lcm`` are errors naming the key
  (:func:`_validate_objective`); an LCM run's trajectory dict leaves them out.
* ``lcd.objective = pcm`` (Phased Consistency Model, Wang et al. 2024; :mod:`.phased`) with
  ``lcd.phases`` 4 (the reference's launch scripts; ``--multiphase``), and ``tscd`` (Hyper-SD's
  trajectory segmented consistency distillation, Ren et al. 2024; :mod:`.phased`) with
  ``lcd.tscd_segments`` [8, 4, 2, 1] (``--stage_segments``) and ``lcd.tscd_stage_steps`` (default
  ``train.max_steps // len(segments)``; the reference has no default). PCM-/TSCD-only keys with
  another objective are errors naming the key; ``lcd.timestep_scaling`` is LCM-only.
  ``lcd.solver_guidance: false`` is PCM's "normal CFG" recipe (``--not_apply_cfg_solver``); its adapter
  records ``lcd.normal_cfg`` (default 7.5, PCM's demo value) as the cfg to sample with.
  ``lcd.adversarial_weight`` (default 0 = off) adds PCM's adversarial consistency loss (its ``*_adv.py``
  scripts' ``--adv_weight`` 0.1, ``--adv_lr`` 1e-5 → ``lcd.adversarial_lr``; :mod:`.adversarial`), with
  ``lcd.objective: pcm`` only; ``lcd.adversarial_lr`` / ``adversarial_real`` without it are errors naming the
  key. The three keys are left out of the trajectory dict at their defaults (hashes of other runs unchanged).
* ``lora.rank = alpha = 64``; targets: the released LCM-LoRA UNet modules (``lcm_core.targets``).
* ``optim``: AdamW, lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0 (README passes
  ``--adam_weight_decay=0.0``; argparse default 1e-2), grad-norm clip 1.0, constant LR.
  (The reference's ``--lr_warmup_steps 500`` has no effect with its "constant" scheduler.)

Schema (section.key: default): see :class:`TrainConfig` and the dataclasses below, or
``docs`` in ``configs/*.yaml``. Paths written in a config file are relative to that file's
folder; paths given as overrides are relative to the current directory.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..lcm_core.errors import ConfigError

ARCHS = ("auto", "sd1", "sd2", "sdxl", "ssd1b")
NUM_TRAIN_TIMESTEPS = 1000  # the SD/SDXL schedules (the trainer checks the teacher's own count again)
GUIDANCE_INTERVAL_ALL = [0, NUM_TRAIN_TIMESTEPS - 1]  # lcd.guidance_interval's default: guidance at every timestep


def _f(default, *, choices=None, path=False, minimum=None, maximum=None, kind=None, doc="", panel=None):
    """A schema field: default value plus validation metadata.

    ``panel``: set (with :func:`_panel`) on the keys the ComfyUI trainer panel may override; nothing
    else about a field changes (see :func:`panel_overrides`)."""
    meta = dict(choices=choices, path=path, minimum=minimum, maximum=maximum, kind=kind, doc=doc, panel=panel)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _panel(name: str, *, minimum=None, maximum=None, choices=None, max_items=None) -> dict:
    """A trainer-panel override: its name in the panel's request, and bounds a web request must keep
    on top of the field's own (a request must not ask for a million prompts or a 1e9-step run)."""
    return dict(name=name, minimum=minimum, maximum=maximum, choices=choices, max_items=max_items)


@dataclass
class TeacherSection:
    path: str | None = _f(None, path=True, kind="str?", doc="single-file checkpoint (.safetensors/.ckpt) or diffusers folder")
    arch: str = _f("auto", choices=ARCHS, kind="str", doc="base architecture; auto = detect")
    vae: str | None = _f(None, path=True, kind="str?", doc="optional separate VAE (diffusers folder or single file)")
    tokenizer: str | None = _f(None, path=True, kind="str?", doc="CLIP tokenizer folder (vocab.json+merges.txt) for single-file teachers")
    tokenizer_2: str | None = _f(None, path=True, kind="str?", doc="second tokenizer folder (SDXL/SSD-1B); default: same files as tokenizer, pad '!'")
    prediction_type: str = _f("auto", choices=("auto", "epsilon", "v_prediction"), kind="str")


@dataclass
class DataSection:
    path: str | None = _f(None, path=True, kind="str?", doc="image folder (captions in .txt files, metadata.jsonl or metadata.csv)")
    prompts: str | None = _f(None, path=True, kind="str?", doc="prompts-only mode: .txt (one per line), .jsonl or .csv of prompts")
    captions: str = _f("auto", choices=("auto", "txt", "jsonl", "csv"), kind="str")
    caption_column: str = _f("text", kind="str", doc="caption field in metadata.jsonl/csv")
    image_column: str = _f("file_name", kind="str", doc="image file field in metadata.jsonl/csv")
    resolution: int = _f(512, minimum=8, kind="int", doc="training area is resolution x resolution pixels", panel=_panel("resolution", maximum=4096))
    buckets: bool = _f(True, kind="bool", doc="aspect-ratio buckets of ~resolution^2 pixels")
    bucket_step: int = _f(64, minimum=1, kind="int", doc="bucket sides are multiples of this (pixels)")
    max_aspect: float = _f(2.0, minimum=1.0, kind="float")
    crop: str = _f("center", choices=("center", "random"), kind="str", doc="random crops are off when latents are cached")
    random_flip: bool = _f(False, kind="bool")
    caption_dropout: float = _f(0.0, minimum=0.0, maximum=1.0, kind="float", doc="proportion_empty_prompts of the reference")
    cache_latents: bool = _f(False, kind="bool", doc="encode every image once; epochs reuse the cached VAE posterior")
    cache_text: bool = _f(False, kind="bool", doc="encode every caption once")
    cache_dir: str | None = _f(None, path=True, kind="str?", doc="default <output>/cache")


@dataclass
class PromptsOnlySection:
    samples_per_prompt: int = _f(4, minimum=1, kind="int", panel=_panel("samples_per_prompt", maximum=10_000))
    steps: int = _f(50, minimum=1, kind="int", doc="teacher DDIM steps (on the 1000-step schedule)")
    guidance_scale: float = _f(7.5, minimum=0.0, kind="float", doc="classifier-free guidance (Imagen convention)")
    batch_size: int = _f(4, minimum=1, kind="int")
    seed: int = _f(0, kind="int")
    dir: str | None = _f(None, path=True, kind="str?", doc="sample cache; default <output>/teacher_samples")


@dataclass
class LcdSection:
    num_ddim_timesteps: int = _f(50, minimum=1, maximum=1000, kind="int", doc="DDIM solver grid; skip k = 1000 // N")
    w_min: float = _f(3.0, minimum=0.0, kind="float", doc="guidance ω ~ U[w_min, w_max]; x0 = cond + ω (cond - uncond)")
    w_max: float = _f(15.0, minimum=0.0, kind="float", doc="see w_min")
    loss: str = _f("huber", choices=("huber", "l2"), kind="str")
    huber_c: float = _f(0.001, minimum=0.0, kind="float", doc="pseudo-Huber sqrt(d^2 + c^2) - c")
    timestep_scaling: float = _f(10.0, minimum=0.0, kind="float", doc="boundary scalings c_skip/c_out use t * this")
    target: str = _f("stopgrad", choices=("stopgrad", "ema"), kind="str", doc="θ⁻: online weights without grad (LoRA reference) or EMA (paper)")
    ema_decay: float = _f(0.95, minimum=0.0, maximum=1.0, kind="float", doc="μ of the EMA target (target: ema)")
    uncond: str = _f("auto", choices=("auto", "empty_prompt", "zeros"), kind="str", doc="auto: zeros for SDXL-type, '' otherwise")
    objective: str = _f("lcm", choices=("lcm", "tcd", "pcm", "tscd"), kind="str",
                        doc="lcm: consistency to x0 (LCM); tcd: trajectory consistency to an intermediate s (TCD, arXiv 2402.19159); "
                        "pcm: consistency to the lower edge of the timestep's phase (Phased Consistency Model, arXiv 2405.18407); "
                        "tscd: consistency to a point of the timestep's trajectory segment, segments halving by stage (Hyper-SD TSCD, arXiv 2404.13686)")
    tcd_s_sampling: str = _f("uniform", choices=("uniform", "tdd"), kind="str",
                             doc="objective tcd: end point s uniform over the DDIM grid <= t_n (TCD reference) or tdd (Target-Driven Distillation)")
    tdd_s_ratio: float = _f(0.3, minimum=0.0, maximum=1.0, kind="float",
                            doc="tcd_s_sampling tdd: s = floor((1 - r*ratio) m), r ~ U[0,1]; match the inference gamma")
    tdd_steps: list = _f([4, 8], kind="intlist", doc="tcd_s_sampling tdd: [min, max] inference step counts whose timesteps s is drawn near")
    phases: int = _f(4, minimum=1, maximum=1000, kind="int",
                     doc="objective pcm: number of phases of the solver grid (PCM --multiphase; <= num_ddim_timesteps); sample with this many steps")
    tscd_segments: list = _f([8, 4, 2, 1], kind="intlist", minimum=1,
                             doc="objective tscd: trajectory segments per stage (Hyper-SD --stage_segments); each divides the 1000 training timesteps")
    tscd_stage_steps: int | None = _f(None, minimum=1, kind="int?",
                                      doc="objective tscd: optimizer steps per stage; null = train.max_steps // len(tscd_segments)")
    solver_guidance: bool = _f(True, kind="bool",
                               doc="false: the teacher's DDIM step uses the conditional prediction only, no CFG "
                               "(PCM --not_apply_cfg_solver, its 'normal CFG' recipe with data.caption_dropout 0.1; sample with cfg > 1)")
    normal_cfg: float = _f(7.5, kind="float", doc="solver_guidance false only: the cfg the adapter's metadata recommends "
                           "(lcm_lora.recommended_cfg; > 1, two UNet evaluations per step): the teacher's own usual cfg "
                           "(7.5 = PCM's SD1.5 demo; SDXL checkpoints often 5-7). Metadata only: not part of the config hash",
                           panel=_panel("normal_cfg", minimum=1.01, maximum=30.0))  # trainer: > 1
    guidance_interval: list = _f(list(GUIDANCE_INTERVAL_ALL), kind="intlist", minimum=0,
                                 doc="[lo, hi]: the teacher's solver step is guided (ω) only where its start timestep t_n+k is "
                                 "in [lo, hi], unguided elsewhere (guidance in a limited interval, Kynkaanniemi et al. 2024, "
                                 "arXiv 2404.07724: CFG at the highest noise mostly costs diversity); "
                                 "[0, 999] = every step, as the references")
    adversarial_weight: float = _f(0.0, minimum=0.0, kind="float",
                                   doc="objective pcm: weight of PCM's adversarial consistency loss (its *_adv.py scripts, "
                                   "--adv_weight 0.1; training/adversarial.py); 0 = off. A discriminator (frozen teacher UNet + "
                                   "trainable heads) is updated on even optimizer steps, the LoRA on odd ones")
    adversarial_lr: float = _f(1e-5, minimum=0.0, kind="float",
                               doc="adversarial_weight > 0: learning rate of the discriminator heads (PCM --adv_lr; AdamW betas (0, 0.999))")
    adversarial_real: str = _f("target", choices=("target", "data"), kind="str",
                               doc="adversarial_weight > 0: the discriminator's real samples: target = the consistency target "
                               "noise-travelled to the adversarial timestep (the reference); data = the training latents noised "
                               "to it (computed but unused by the reference; closeness to the data instead of the teacher)")


@dataclass
class LoraSection:
    rank: int = _f(64, minimum=1, kind="int", panel=_panel("rank", maximum=1024))
    alpha: float | None = _f(None, minimum=0.0, kind="float?", doc="default = rank (scale 1)", panel=_panel("alpha", minimum=1e-6, maximum=4096))
    dropout: float = _f(0.0, minimum=0.0, maximum=1.0, kind="float")
    targets: list | None = _f(None, kind="strlist?", doc="module name suffixes; default lcm_core.targets.LCM_LORA_UNET_TARGETS")


@dataclass
class OptimSection:
    optimizer: str = _f("adamw", choices=("adamw", "adamw8bit"), kind="str")
    learning_rate: float = _f(1e-4, minimum=0.0, kind="float", panel=_panel("learning_rate", minimum=1e-8, maximum=1.0))
    weight_decay: float = _f(0.0, minimum=0.0, kind="float")
    beta1: float = _f(0.9, minimum=0.0, maximum=1.0, kind="float")
    beta2: float = _f(0.999, minimum=0.0, maximum=1.0, kind="float")
    eps: float = _f(1e-8, minimum=0.0, kind="float")
    max_grad_norm: float = _f(1.0, minimum=0.0, kind="float", doc="0 disables clipping")
    lr_scheduler: str = _f(
        "constant",
        choices=("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"),
        kind="str",
    )
    lr_warmup_steps: int = _f(0, minimum=0, kind="int")
    fallback_optimizer: str | None = _f(None, choices=(None, "adamw"), kind="str?",
                                        doc="used (with a warning) when optimizer is adamw8bit but bitsandbytes is not usable "
                                        "here (not installed, or no CUDA device); unset = error")


@dataclass
class TrainSection:
    max_steps: int = _f(1000, minimum=1, kind="int", doc="optimizer steps", panel=_panel("max_steps", maximum=1_000_000))
    batch_size: int = _f(12, minimum=1, kind="int", doc="global batch per optimizer micro-step (split across processes)", panel=_panel("batch_size", maximum=4096))
    gradient_accumulation: int = _f(1, minimum=1, kind="int", panel=_panel("gradient_accumulation", maximum=1024))
    mixed_precision: str = _f("no", choices=("no", "fp16", "bf16"), kind="str", panel=_panel("mixed_precision"))
    cast_base_weights: bool = _f(True, kind="bool", doc="store frozen UNet/text weights in the mixed-precision dtype")
    gradient_checkpointing: bool = _f(False, kind="bool")
    allow_tf32: bool = _f(True, kind="bool")
    seed: int = _f(0, kind="int", panel=_panel("seed", minimum=0, maximum=2**31 - 1))
    device: str = _f("auto", kind="str", doc="auto | cpu | cuda | cuda:N | mps", panel=_panel("device", choices=("auto", "cpu", "cuda", "mps")))
    num_workers: int = _f(0, minimum=0, kind="int", doc="image decoding worker threads")
    offload_encoders: bool = _f(True, kind="bool", doc="with cache_text and cache_latents on, release the text encoders and the VAE "
                                "encoder after caching and keep the VAE decoder off the accelerator (moved there only to decode validation images)")


@dataclass
class CheckpointSection:
    every: int = _f(200, minimum=0, kind="int", doc="0 = only at the end / on SIGTERM", panel=_panel("checkpoint_every", maximum=1_000_000))
    keep: int = _f(3, minimum=1, kind="int")


@dataclass
class ValidationSection:
    every: int = _f(200, minimum=0, kind="int", doc="0 disables", panel=_panel("validation_every", maximum=1_000_000))
    prompts: list | None = _f(None, kind="strlist?", doc="null = the first 4 distinct captions of the data", panel=_panel("validation_prompts", max_items=8))
    steps: list = _f([1, 2, 4], kind="intlist", panel=_panel("validation_steps", minimum=1, maximum=50, max_items=6))
    seed: int = _f(0, kind="int")
    resolution: int | None = _f(None, minimum=8, kind="int?", doc="default data.resolution")


@dataclass
class LoggingSection:
    backend: str = _f("csv", choices=("csv", "tensorboard", "none"), kind="str")
    every: int = _f(1, minimum=1, kind="int", doc="metric rows every N steps (events.jsonl too)")
    progress: bool = _f(True, kind="bool", doc="tqdm bar")
    memory_estimate: bool = _f(True, kind="bool", doc="print the per-component memory estimate at start and warn when "
                               "the device reports less free memory (lcm-lora train --estimate-memory)")


@dataclass
class OutputSection:
    format: str = _f("kohya", choices=("kohya", "diffusers", "peft"), kind="str")
    name: str = _f("lcm_lora.safetensors", kind="str", doc="file (kohya/diffusers) or folder (peft) name in the output folder")
    dtype: str = _f("fp16", choices=("fp16", "bf16", "fp32"), kind="str", panel=_panel("output_dtype"))
    export_ema_decay: float = _f(0.0, minimum=0.0, maximum=0.99999, kind="float",
                          doc="0 = write the final weights (the references); μ in (0, 1) = write an EMA of the weights over "
                          "training instead (consistency models are evaluated on an EMA, arXiv 2303.01469 §6), decay per "
                          "update min(μ, (1 + n) / (10 + n)) as diffusers' EMAModel; training itself is unchanged")
    recommended_gamma: float | None = _f(None, minimum=0.0, maximum=1.0, kind="float?",
                                          doc="the γ (TCD's stochasticity) the adapter's metadata recommends; default = the "
                                          "objective's (tcd 0.3, or lcd.tdd_s_ratio with the TDD s draw; pcm / tscd 0); "
                                          "not for lcd.objective lcm (its sampler has no γ)")


@dataclass
class TrainConfig:
    teacher: TeacherSection = field(default_factory=TeacherSection)
    data: DataSection = field(default_factory=DataSection)
    prompts_only: PromptsOnlySection = field(default_factory=PromptsOnlySection)
    lcd: LcdSection = field(default_factory=LcdSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    output: OutputSection = field(default_factory=OutputSection)
    source: str = field(default="<config>", compare=False, repr=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


_SECTION_CLASSES = {
    "teacher": TeacherSection,
    "data": DataSection,
    "prompts_only": PromptsOnlySection,
    "lcd": LcdSection,
    "lora": LoraSection,
    "optim": OptimSection,
    "train": TrainSection,
    "checkpoint": CheckpointSection,
    "validation": ValidationSection,
    "logging": LoggingSection,
    "output": OutputSection,
}
# ``teacher=PATH`` is ``teacher.path=PATH`` (likewise data, prompts).
SHORTHANDS = {"teacher": "teacher.path", "data": "data.path", "prompts": "data.prompts"}
# Sections that do not change the training trajectory (left out of the resume check / config hash).
_NON_TRAJECTORY = {"checkpoint", "validation", "logging", "output"}
_NON_TRAJECTORY_KEYS = {"train.max_steps", "train.device", "train.num_workers", "data.cache_dir", "prompts_only.dir",
                        "train.offload_encoders", "optim.fallback_optimizer",
                        "lcd.normal_cfg"}  # only the exported adapter's recommended cfg


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in dataclasses.fields(cls)]


def _field_meta(dotted: str):
    section, name = dotted.split(".", 1)
    for f in dataclasses.fields(_SECTION_CLASSES[section]):
        if f.name == name:
            return f.metadata
    raise KeyError(dotted)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys() + list(SHORTHANDS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, kind: str, key: str, source: str):
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
    if base == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise bad("an integer")
    if base == "float":
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise bad("a number")
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
        return [_coerce(v, item_kind, key, source) for v in value]
    raise AssertionError(kind)


def set_value(cfg: TrainConfig, dotted: str, value: Any, source: str, base_dir: Path | None) -> None:
    """Set ``cfg.<section>.<name>`` from a raw value, coerced and checked against the field's metadata."""
    section, name = dotted.split(".", 1)
    meta = _field_meta(dotted)
    value = _coerce(value, meta["kind"], dotted, source)
    if meta["path"] and value is not None and base_dir is not None:
        value = os.fspath(Path(base_dir, os.path.expanduser(value))) if not os.path.isabs(os.path.expanduser(value)) else os.path.expanduser(value)
    setattr(getattr(cfg, section), name, value)


def _apply_mapping(cfg: TrainConfig, data: Mapping, source: str, base_dir: Path | None) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(source, f"the top level must be a mapping of sections, got {type(data).__name__}")
    for section, body in data.items():
        if section in SHORTHANDS and not isinstance(body, Mapping):
            set_value(cfg, SHORTHANDS[section], body, source, base_dir)
            continue
        if section not in _SECTION_CLASSES:
            raise ConfigError(source, f"unknown section '{section}'{_suggest(str(section))}")
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise ConfigError(source, f"section '{section}' must be a mapping, got {body!r}")
        for name, value in body.items():
            dotted = f"{section}.{name}"
            try:
                _field_meta(dotted)
            except KeyError:
                raise ConfigError(source, f"unknown key '{dotted}'{_suggest(dotted)}") from None
            set_value(cfg, dotted, value, source, base_dir)


def read_config_file(path: str | os.PathLike) -> dict:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / tomllib.TOMLDecodeError carry line numbers
        raise ConfigError(path, f"cannot parse: {e}") from None
    return data or {}


def resolve_override_key(key: str, source: str = "override") -> str:
    """``teacher`` → ``teacher.path``; a bare name → its unique section (``train`` wins ties); else dotted."""
    key = key.strip()
    if key in SHORTHANDS:
        return SHORTHANDS[key]
    if "." in key:
        try:
            _field_meta(key)
            return key
        except KeyError:
            raise ConfigError(source, f"unknown key '{key}'{_suggest(key)}") from None
    matches = [k for k in _all_keys() if k.split(".", 1)[1] == key]
    if len(matches) > 1 and f"train.{key}" in matches:
        return f"train.{key}"  # the main section wins: seed → train.seed, batch_size → train.batch_size
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(source, f"key '{key}' is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(source, f"unknown key '{key}'{_suggest(key)}")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``. Strings and paths are kept verbatim; other values are parsed as YAML
    (numbers, booleans, ``[1, 2, 4]``) and then type-checked like file values."""
    if "=" not in text:
        raise ConfigError("override", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    dotted = resolve_override_key(key, source=f"override {text!r}")
    kind = _field_meta(dotted)["kind"].rstrip("?")
    if kind == "str":
        return dotted, (raw if raw.strip() else None)
    try:
        import yaml

        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:
        value = raw
    return dotted, value


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
        path = Path(source)
        cfg = TrainConfig(source=os.fspath(path))
        _apply_mapping(cfg, read_config_file(path), os.fspath(path), path.resolve().parent)
    for text in overrides:
        dotted, value = parse_override(text)
        set_value(cfg, dotted, value, f"override {text!r}", Path.cwd())
    validate_config(cfg)
    return cfg


def validate_config(cfg: TrainConfig) -> None:
    """Range / choice / cross-field checks; every error names the config source and the key."""
    src = cfg.source
    for section, cls in _SECTION_CLASSES.items():
        body = getattr(cfg, section)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            value = getattr(body, f.name)
            meta = f.metadata
            value = _coerce(value, meta["kind"], key, src)
            setattr(body, f.name, value)
            if value is None:
                continue
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(src, f"key '{key}' must be one of {', '.join(meta['choices'])}, got {value!r}")
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    if item != item and (meta["minimum"] is not None or meta["maximum"] is not None):
                        raise ConfigError(src, f"key '{key}' must be a number in its range, got nan")  # nan passes < / >
                    if meta["minimum"] is not None and item < meta["minimum"]:
                        raise ConfigError(src, f"key '{key}' must be >= {meta['minimum']}, got {item}")
                    if meta["maximum"] is not None and item > meta["maximum"]:
                        raise ConfigError(src, f"key '{key}' must be <= {meta['maximum']}, got {item}")
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
TCD_ONLY_KEYS = {"tcd_s_sampling": "uniform", "tdd_s_ratio": 0.3, "tdd_steps": [4, 8]}
_TDD_ONLY_KEYS = ("tdd_s_ratio", "tdd_steps")
PCM_ONLY_KEYS = {"phases": 4}
TSCD_ONLY_KEYS = {"tscd_segments": [8, 4, 2, 1], "tscd_stage_steps": None}
OBJECTIVE_ONLY_KEYS = {"tcd": TCD_ONLY_KEYS, "pcm": PCM_ONLY_KEYS, "tscd": TSCD_ONLY_KEYS}
# keys added after the first release whose default keeps the trajectory of older runs: left out of the
# trajectory dict while at their default, so the config hash of those runs does not change
_TRAJECTORY_DEFAULT_DROPPED = {"solver_guidance": True, "adversarial_weight": 0.0, "adversarial_lr": 1e-5,
                               "adversarial_real": "target", "guidance_interval": GUIDANCE_INTERVAL_ALL}
# keys that only apply with the adversarial loss on (lcd.adversarial_weight > 0), with their defaults
ADVERSARIAL_ONLY_KEYS = {"adversarial_lr": 1e-5, "adversarial_real": "target"}
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
        if lcd.timestep_scaling != 10.0:
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
    if lcd.objective == "tscd":
        if not lcd.tscd_segments:
            raise ConfigError(src, "key 'lcd.tscd_segments' must list at least one segment count, e.g. [8, 4, 2, 1]")
        bad = [k for k in lcd.tscd_segments if k < 1 or NUM_TRAIN_TIMESTEPS % k]
        if bad:
            raise ConfigError(src, f"key 'lcd.tscd_segments': every segment count must be >= 1 and divide the "
                              f"{NUM_TRAIN_TIMESTEPS} training timesteps, got {bad[0]} in {lcd.tscd_segments}")
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
    steps = lcd.tdd_steps
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1] <= lcd.num_ddim_timesteps:
        raise ConfigError(src, f"key 'lcd.tdd_steps' must be [min, max] step counts with 1 <= min <= max <= "
                          f"lcd.num_ddim_timesteps ({lcd.num_ddim_timesteps}), got {steps}")


NORMAL_CFG_DEFAULT = 7.5  # lcd.normal_cfg's default: PCM's demo cfg for its normal-CFG SD1.5 adapters (demo/app.py)


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


def trajectory_dict(cfg: TrainConfig) -> dict:
    """The part of the config that determines the training trajectory (resume must match it)."""
    d = cfg.to_dict()
    for s in _NON_TRAJECTORY:
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
    for key in _NON_TRAJECTORY_KEYS:
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


def schema_text() -> str:
    """The full schema as commented YAML: every key with its default, choices and meaning."""
    import yaml

    lines = ["# lcm-lora train: configuration schema and defaults (YAML; TOML takes the same sections)"]
    for section, cls in _SECTION_CLASSES.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            notes = []
            if f.metadata.get("choices"):
                notes.append("one of " + ", ".join(map(str, f.metadata["choices"])))
            if f.metadata.get("doc"):
                notes.append(f.metadata["doc"])
            comment = f"  # {'; '.join(notes)}" if notes else ""
            lines.append(f"  {f.name}: {value}{comment}")
    lines.append("# shorthands: teacher=PATH (teacher.path), data=FOLDER (data.path), prompts=FILE (data.prompts);")
    lines.append("# a bare key (max_steps=300) resolves to its section; train wins ties (seed -> train.seed)")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the ComfyUI trainer panel's overrides
PANEL_TEXT_CHARS = 1000  # one validation prompt from a panel request


def panel_overrides() -> dict[str, dict]:
    """The overrides the trainer panel accepts, from the fields marked ``panel=`` above:
    ``{name: {key, kind, min, max, choices, max_items, default, doc}}`` (JSON-serialisable; the
    panel builds its form from it). ``kind`` is the field's kind, or ``choice`` when it has choices."""
    out = {}
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            p = f.metadata.get("panel")
            if not p:
                continue
            meta = f.metadata
            choices = p["choices"] or meta["choices"]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[p["name"]] = {
                "key": f"{section}.{f.name}",
                "kind": "choice" if choices else meta["kind"].rstrip("?"),
                "min": p["minimum"] if p["minimum"] is not None else meta["minimum"],
                "max": p["maximum"] if p["maximum"] is not None else meta["maximum"],
                "choices": list(choices) if choices else None,
                "max_items": p["max_items"],
                "default": default,
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
