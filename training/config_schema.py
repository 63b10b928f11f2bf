"""Trainer configuration schema: every section and key with its default, kind, bounds and meaning.

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
  (:mod:`.config_rules`); an LCM run's trajectory dict leaves them out.
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
from dataclasses import dataclass, field

ARCHS = ("auto", "sd1", "sd2", "sdxl", "ssd1b")
NUM_TRAIN_TIMESTEPS = 1000  # the SD/SDXL schedules (the trainer checks the teacher's own count again)
GUIDANCE_INTERVAL_ALL = [0, NUM_TRAIN_TIMESTEPS - 1]  # lcd.guidance_interval's default: guidance at every timestep
NORMAL_CFG_DEFAULT = 7.5  # lcd.normal_cfg's default: PCM's demo cfg for its normal-CFG SD1.5 adapters (demo/app.py)


def _f(default, *, choices=None, path=False, minimum=None, maximum=None, kind=None, doc="", panel=None):
    """A schema field: default value plus validation metadata.

    ``panel``: set (with :func:`_panel`) on the keys the ComfyUI trainer panel may override; nothing
    else about a field changes (see :func:`.config_panel.panel_overrides`)."""
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
    phase_starts: list = _f([], kind="intlist",
                            doc="objective pcm: solver indices where the phases start (one per phase, the first 0, increasing); "
                            "[] = PCM's even split. [0, 15, 30, 41] samples at 999, 819, 599, 299 instead of 999, 739, 499, 239 "
                            "(BENCHMARKS.md: closer to an unseen fine-tune's own 25 steps); recorded in the adapter")
    tscd_segments: list = _f([8, 4, 2, 1], kind="intlist", minimum=1,
                             doc="objective tscd: trajectory segments per stage (Hyper-SD --stage_segments); each divides the 1000 training timesteps")
    tscd_stage_steps: int | None = _f(None, minimum=1, kind="int?",
                                      doc="objective tscd: optimizer steps per stage; null = train.max_steps // len(tscd_segments)")
    solver_guidance: bool = _f(True, kind="bool",
                               doc="false: the teacher's DDIM step uses the conditional prediction only, no CFG "
                               "(PCM --not_apply_cfg_solver, its 'normal CFG' recipe with data.caption_dropout 0.1; sample with cfg > 1)")
    normal_cfg: float = _f(NORMAL_CFG_DEFAULT, kind="float", doc="solver_guidance false only: the cfg the adapter's metadata recommends "
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
    seed: int = _f(0, minimum=0, maximum=2**64 - 1, kind="int", doc="torch generators take seeds below 2**64",
                   panel=_panel("seed", minimum=0, maximum=2**31 - 1))
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


SECTION_CLASSES = {
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
NON_TRAJECTORY_SECTIONS = {"checkpoint", "validation", "logging", "output"}
NON_TRAJECTORY_KEYS = {"train.max_steps", "train.device", "train.num_workers", "data.cache_dir", "prompts_only.dir",
                        "train.offload_encoders", "optim.fallback_optimizer",
                        "lcd.normal_cfg"}  # only the exported adapter's recommended cfg




def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)]


def field_meta(dotted: str):
    section, name = dotted.split(".", 1)
    for f in dataclasses.fields(SECTION_CLASSES[section]):
        if f.name == name:
            return f.metadata
    raise KeyError(dotted)


def field_default(f: dataclasses.Field):
    """A schema field's default (lists as a fresh copy)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def lcd_defaults(*names: str) -> dict:
    """``{name: default}`` of these ``lcd`` keys, read from the schema (the rules and the trajectory dict compare
    values with them)."""
    fields = {f.name: f for f in dataclasses.fields(LcdSection)}
    return {name: field_default(fields[name]) for name in names}


def schema_text() -> str:
    """The full schema as commented YAML: every key with its default, choices and meaning."""
    import yaml

    lines = ["# lcm-lora train: configuration schema and defaults (YAML; TOML takes the same sections)"]
    for section, cls in SECTION_CLASSES.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            value = yaml.safe_dump(field_default(f), default_flow_style=True).strip().removesuffix("...").strip()
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
