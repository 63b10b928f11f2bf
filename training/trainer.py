"""The LCM-LoRA distillation loop (LCM paper Algorithm 1 with LoRA, LCM-LoRA §3) — Python API.

``train(config, output_dir, resume=None, overrides=(), progress=True) -> TrainResult``

Usable in-process or in a subprocess (``python -m lcm_lora.training --config ...``): progress is
streamed to ``<output>/events.jsonl`` (see :mod:`.run_log`), SIGTERM/SIGINT make the run save a
checkpoint and return with ``status="interrupted"``, a non-finite loss stops it with
``status="diverged"`` (raising :class:`NonFiniteLossError`) and keeps the last good checkpoint.

Per optimizer step (``gradient_accumulation`` micro-steps of the global batch):
the batch plan yields the next global batch; a generator seeded by (seed, step, micro-step)
draws the VAE posterior noise and the LCD randomness (i, ε, ω; for ``lcd.objective`` tcd, pcm and
tscd also the end timestep s, :mod:`.phased`; with ``lcd.adversarial_weight`` the adversarial
timestep and noises, :mod:`.adversarial`) for the *whole* global batch;
each process takes its rows; :class:`~.lcd_step.LcdLoss` gives the loss; gradients of the
LoRA weights only are averaged (DDP), clipped (max-norm 1) and AdamW steps. Because all
randomness is a function of (seed, step) and the data position is checkpointed, an interrupted
and resumed run repeats the uninterrupted run's loss sequence.

With PCM's adversarial consistency loss (``lcd.adversarial_weight`` > 0, :mod:`.adversarial`) even
optimizer steps update the discriminator heads (their own AdamW) and odd steps the LoRA, as the
reference's ``global_step % 2``; the heads and their optimizer state are checkpointed
(``discriminator.*`` tensors, ``optimizer.pt["discriminator"]``) and never exported.
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..lcm_core.atomic_write import atomic_file
from ..lcm_core.cpu_threads import training_threads
from ..lcm_core.errors import ConfigError, LcmLoraError, OutputExistsError
from . import checkpoint as ckpt
from .batch_plan import BatchPlan
from .batches import TrainingData
from .config import TrainConfig, config_hash, dump_config, trajectory_dict
from .config_schema import all_keys, field_meta
from .config_rules import check_process_count, guidance_interval, require_inputs
from .ddim_solver import DDIMSolver
from .distributed import DistContext, init_distributed, no_sync, wrap_ddp
from .ema import LoraEma
from .lcd_step import LcdLoss, sample_lcd_randomness
from .phased import objective_end_timesteps
from .offload import encoders_idle, release_encoders
from .run_log import RunLog
from .student import AdapterSwitch, add_lora, lora_state_dict
from .teacher import Teacher, load_teacher, unet_forward

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(LcmLoraError):
    """Training diverged (NaN/Inf loss); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    adapter_path: Path | None
    final_step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step run in this call
    status: str = "finished"  # finished | interrupted | diverged
    output_dir: Path | None = None
    checkpoint: Path | None = None
    start_step: int = 0


def step_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the generator of one micro-step (a pure function: resumable, process-independent)."""
    digest = hashlib.sha256(f"lcm-lora-step-{seed}-{step}-{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _Cancelled(BaseException):
    """SIGTERM/SIGINT while loading the teacher or filling caches (nothing to checkpoint yet). A BaseException, as
    KeyboardInterrupt: the `except Exception` of image readers, caches and lazy importers must not turn it into
    "cannot read image" or an import error."""


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and returns at the next step boundary.
    While ``immediate`` is set (setup: loading, caching, teacher sampling) they raise instead."""

    def __init__(self):
        self.requested = False
        self.signal = None
        self.immediate = False
        self._old = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:  # second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        self.requested = True
        self.signal = signum
        if self.immediate:
            self.immediate = False
            raise _Cancelled(f"signal {signum}")

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _prepare_output(output_dir: Path, cfg: TrainConfig, resume_requested: bool, checkpoint: Path | None) -> None:
    """Create the run folder, or refuse one that holds another run. Every process checks the folder as it was
    before any of them writes (a barrier follows), so all of them agree. ``--resume`` without a checkpoint to
    continue from starts at step 0: refused where that would replace a finished run's adapter, else warned."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(output_dir, "is a file, not a folder: give --output a folder for the run")
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resume_requested and ckpt.list_checkpoints(output_dir):
        raise OutputExistsError(output_dir, "already holds checkpoints of a run: pass --resume to continue it, or use a new folder")
    if checkpoint is None and (output_dir / cfg.output.name).exists():
        # a finished earlier run (checkpoint.every 0, or its checkpoints deleted), or a loras folder: its adapter is
        # never overwritten. A run that stopped before writing one (bad data, say) left only logs: they are replaced
        what = "--resume would start again from step 0 and replace it" if resume_requested else "it cannot be replaced"
        raise OutputExistsError(output_dir, f"already holds an earlier run's adapter {cfg.output.name} and no checkpoint "
                                            f"to continue that run from (checkpoint.every 0, or its checkpoints were "
                                            f"deleted): {what}; use a new folder; nothing was overwritten")
    if resume_requested and checkpoint is None:
        warnings.warn(f"{output_dir}: --resume found no checkpoint (the run stopped before its first one): "
                      "starting from step 0", ckpt.CheckpointWarning, stacklevel=3)


def _write_config(output_dir: Path, cfg: TrainConfig, record: dict | None) -> None:
    """``config.yaml`` (the full config; what ``--resume`` continues with) and ``config.source.json``.
    A resumed run writes them only once its checkpoint has been restored: a refused resume leaves them."""
    from .resume_config import write_source_record

    with atomic_file(output_dir / "config.yaml", overwrite=True) as tmp:
        tmp.write_text(dump_config(cfg), encoding="utf-8")
    write_source_record(output_dir, record)


def _records(cfg: TrainConfig, teacher: Teacher, output_dir: Path, device, autocast, ctx: DistContext, progress_factory):
    from .data import read_prompts, scan_image_folder

    if cfg.data.path:
        return scan_image_folder(cfg.data)
    from .prompts_only import generate_prompt_samples

    prompts = read_prompts(cfg.data.prompts, cfg.data.caption_column)
    root = Path(cfg.prompts_only.dir) if cfg.prompts_only.dir else output_dir / "teacher_samples"
    return generate_prompt_samples(teacher, prompts, cfg.prompts_only, cfg.data.resolution, root, device, autocast,
                                   ctx.rank, ctx.world, ctx.barrier, progress_factory)


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter], device: torch.device):
    """AdamW over the LoRA tensors only (the reference passes all UNet parameters; frozen ones have no grad).

    torch's fused kernel (CUDA and CPU), or bitsandbytes' 8-bit AdamW. Fused rather than the
    multi-tensor ("foreach") path: faster on CPU and without foreach's parameter-sized temporaries
    (numbers: BENCHMARKS.md, "Design measurements")."""
    o = cfg.optim
    kwargs = dict(lr=o.learning_rate, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, eps=o.eps)
    if o.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    if device.type in ("cpu", "cuda", "mps", "xpu"):  # where torch has the fused AdamW kernel
        return torch.optim.AdamW(params, fused=True, **kwargs)
    return torch.optim.AdamW(params, foreach=True, **kwargs)


def train(
    config: "TrainConfig | dict | str | os.PathLike",
    output_dir: str | os.PathLike,
    resume: "str | os.PathLike | bool | None" = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Distil an LCM-LoRA; see the module docstring. ``resume=True`` continues from the newest checkpoint,
    with the run's own saved ``config.yaml`` (``config`` may then be None; a config file given is merged
    on top, see :mod:`.resume_config`)."""
    from .resume_config import record_for_run, resolve_run_config

    output_dir = Path(output_dir)
    cfg = resolve_run_config(config, output_dir, resume, overrides)
    require_inputs(cfg)
    record = record_for_run(config, output_dir, resume)
    ctx = init_distributed(cfg.train.device)
    try:
        return _train(cfg, output_dir, resume, progress, on_step, ctx, record)
    finally:
        ctx.shutdown()


class TrainingSession:
    """Everything one run holds. :meth:`setup` loads models and data (and a checkpoint);
    :meth:`step` is one optimizer step; :meth:`save` writes a checkpoint. ``train()`` drives it;
    ``benchmarks/trainer`` times :meth:`step` directly."""

    def __init__(self, cfg: TrainConfig, output_dir: Path, ctx: DistContext, progress: bool = True):
        self.cfg, self.output_dir, self.ctx = cfg, Path(output_dir), ctx
        self.device = ctx.device
        self.show_progress = progress and cfg.logging.progress and ctx.is_main
        mp = cfg.train.mixed_precision
        self.weight_dtype = _DTYPES.get(mp, torch.float32)
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=self.weight_dtype)) if mp in _DTYPES else nullcontext
        self.step_count = 0
        self.config_hash = config_hash(cfg)

    def progress_factory(self, total, desc):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.show_progress, dynamic_ncols=True)

    # ---------------------------------------------------------------- setup
    def setup(self, resume_path: Path | None = None) -> "TrainingSession":
        cfg, device, ctx = self.cfg, self.device, self.ctx
        check_process_count(cfg, ctx.world)
        if cfg.data.random_flip and cfg.data.cache_latents:
            raise ConfigError(cfg.source, "keys 'data.random_flip' and 'data.cache_latents' cannot be combined (cached latents are unflipped)")
        if device.type == "cuda" and cfg.train.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(cfg.train.seed)  # LoRA init (peft: Kaiming-uniform A, zero B) is identical on every rank
        base_dtype = self.weight_dtype if cfg.train.cast_base_weights else torch.float32
        self.teacher = teacher = load_teacher(cfg.teacher, base_dtype)  # frozen weights loaded straight in base_dtype
        self.unet = unet = teacher.unet
        unet.to(device, dtype=base_dtype)
        for enc in teacher.text_encoders:
            enc.to(device, dtype=base_dtype)
        if teacher.vae is not None:
            # fp32 VAE for fp16/fp32 runs ("to avoid NaN losses", the reference; the SDXL VAE overflows in fp16),
            # bf16 for bf16 runs (no overflow; the reference SD script casts its VAE to the weight dtype too)
            vae_dtype = torch.bfloat16 if (cfg.train.mixed_precision == "bf16" and cfg.train.cast_base_weights) else torch.float32
            teacher.vae.to(device, dtype=vae_dtype)
        self.named_params = add_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
        self.params = [p for _, p in self.named_params]
        self.adapters = AdapterSwitch(unet)
        if cfg.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()

        self.solver = DDIMSolver(teacher.alphas_cumprod, cfg.lcd.num_ddim_timesteps).to(device)
        self.lcd = LcdLoss(self.solver, teacher.prediction_type, cfg.lcd.loss, cfg.lcd.huber_c, cfg.lcd.timestep_scaling,
                           cfg.lcd.objective, cfg.lcd.solver_guidance, guidance_interval(cfg.lcd))
        if cfg.lcd.objective == "tscd":
            bad = [k for k in cfg.lcd.tscd_segments if self.solver.num_train_timesteps % k]
            if bad:
                raise ConfigError(cfg.source, f"key 'lcd.tscd_segments': {bad[0]} does not divide this teacher's "
                                  f"{self.solver.num_train_timesteps} training timesteps")
        self.optimizer = _optimizer(cfg, self.params, device)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=cfg.optim.lr_warmup_steps, num_training_steps=cfg.train.max_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(cfg.train.mixed_precision == "fp16"))
        self.ema = LoraEma(self.named_params, cfg.lcd.ema_decay) if cfg.lcd.target == "ema" else None
        self.export_ema = (LoraEma(self.named_params, cfg.output.export_ema_decay, warmup=True, prefix="export_ema.")
                           if cfg.output.export_ema_decay > 0 else None)  # the weights written to the adapter, not the target
        self.discriminator = self.d_optimizer = self.d_scaler = self.adversarial = None
        if cfg.lcd.adversarial_weight > 0:  # PCM's adversarial consistency loss (training/adversarial.py)
            from .adversarial import Discriminator

            self.discriminator = Discriminator(unet, device=device, seed=step_seed(cfg.train.seed, -1, 0))
            self.d_optimizer = self.discriminator.make_optimizer(cfg.lcd.adversarial_lr, cfg.optim.eps, cfg.optim.weight_decay,
                                                                 fused=device.type in ("cpu", "cuda", "mps", "xpu"))
            self.d_scaler = torch.amp.GradScaler(device.type, enabled=(cfg.train.mixed_precision == "fp16"))
            from .adversarial import AdversarialLoss

            self.adversarial = AdversarialLoss(self.lcd, self.discriminator, cfg.lcd.adversarial_weight, cfg.lcd.adversarial_real)
        self.adversarial_edges = None  # uneven PCM phases: the adversarial t stays in the sample's own phase
        if self.adversarial is not None and cfg.lcd.phase_starts:
            from ..lcm_core.phased_timesteps import pcm_phase_edges

            self.adversarial_edges = pcm_phase_edges(cfg.lcd.phases, cfg.lcd.num_ddim_timesteps,
                                                     self.solver.num_train_timesteps, cfg.lcd.phase_starts)

        records = _records(cfg, teacher, self.output_dir, device, self.autocast, ctx, self.progress_factory)
        from .validation import validation_prompts

        self.validation_prompts = validation_prompts(cfg, records)  # config's, or captions from the data
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.output_dir / "cache"
        self.data = TrainingData(records, teacher, cfg.data, cache_dir, device, cfg.train.seed, num_workers=cfg.train.num_workers)
        self._check_sizes()
        self.data.prepare(ctx.rank, ctx.world, ctx.barrier, self.progress_factory)
        self.validation_text = None
        if encoders_idle(cfg, records):  # both caches on: text encoders and VAE leave the device (training/offload.py)
            prompts = self.validation_prompts if (ctx.is_main and cfg.validation.every) else None
            self.data._uncond, self.validation_text = release_encoders(teacher, device, prompts, cfg.lcd.uncond)
        self.plan = BatchPlan([self.data.bucket_of[i] for i in range(len(records))], cfg.train.batch_size, cfg.train.seed)
        if resume_path is not None:
            self._restore(resume_path)
        self.model = wrap_ddp(unet, ctx)
        world = ctx.world
        self.rows = slice(ctx.rank * cfg.train.batch_size // world, (ctx.rank + 1) * cfg.train.batch_size // world)
        return self

    def _check_sizes(self) -> None:
        """Every bucket must be divisible by VAE × UNet downsampling (8 × 8 = 64 px for SD)."""
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        multiple = self.teacher.downsample * unet_factor
        for w, h in sorted(set(self.data.bucket_of)):
            if w % multiple or h % multiple:
                raise ConfigError(self.cfg.source, f"keys 'data.resolution'/'data.bucket_step': a {w}x{h} px training size is not "
                                  f"a multiple of {multiple} px (VAE x{self.teacher.downsample}, UNet x{unet_factor}) for this teacher")

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        saved, now = state.state.get("trajectory") or {}, _jsonable(trajectory_dict(self.cfg))
        changed = resume_changes(path, saved, self.cfg)
        with torch.no_grad():
            for name, p in self.named_params:
                p.copy_(state.tensors[name])
        if self.ema is not None:
            self.ema.load_state_dict(state.tensors)
        if self.export_ema is not None:
            if "export_ema.updates" in state.tensors:
                self.export_ema.load_state_dict(state.tensors)
            else:  # output.export_ema_decay set on resume (output.* may change): the average starts here
                self.export_ema.restart()
                warnings.warn(f"{path}: the checkpoint has no exported-EMA weights (output.export_ema_decay was 0); "
                              "the EMA written to the adapter averages from this step on", stacklevel=2)
        optimizer_state = dict(state.optimizer)
        d_state = optimizer_state.pop("discriminator", None)
        self.optimizer.load_state_dict(optimizer_state)
        if self.discriminator is not None:
            if d_state is None:
                raise ConfigError(path, "the checkpoint holds no discriminator state (lcd.adversarial_weight was 0)")
            self.discriminator.load_tensors(state.tensors)
            self.d_optimizer.load_state_dict(d_state)
            if state.state.get("discriminator_scaler"):
                self.d_scaler.load_state_dict(state.state["discriminator_scaler"])
        self.lr_scheduler.load_state_dict(state.state["lr_scheduler"])
        saved_steps = _get(state.state.get("config") or {}, "train.max_steps")
        if self.cfg.optim.lr_scheduler not in ("constant", "constant_with_warmup") and saved_steps not in (None, self.cfg.train.max_steps):
            warnings.warn(f"resuming {path} with train.max_steps {saved_steps} -> {self.cfg.train.max_steps}: the "
                          f"{self.cfg.optim.lr_scheduler} learning-rate schedule is shaped by max_steps, so from step "
                          f"{state.step} on it follows a {self.cfg.train.max_steps}-step schedule (it is not the run it "
                          "would have been; a constant schedule is)", ckpt.CheckpointWarning, stacklevel=2)
        if "optim.learning_rate" in changed:
            self._rescale_learning_rate(float(_get(saved, "optim.learning_rate")), path)
        if changed:
            warnings.warn(f"resuming {path} with " + ", ".join(
                f"{k} {_get(saved, k)} -> {_get(now, k)}" for k in sorted(changed)), ckpt.CheckpointWarning, stacklevel=2)
        if state.state.get("scaler"):
            self.scaler.load_state_dict(state.state["scaler"])
        self.plan.load_state_dict(state.state["data"])
        ckpt.restore_rng_states(state.rng, state.state["rng"])
        self.step_count = state.step

    def _rescale_learning_rate(self, saved_lr: float, path: Path) -> None:
        """Resume with a new peak learning rate (e.g. after a divergence): the restored schedule keeps
        its position and shape, scaled by new/old — LambdaLR's lr = base_lr · λ(step)."""
        new_lr = self.cfg.optim.learning_rate
        if not saved_lr > 0:
            raise ConfigError(path, f"cannot rescale the saved learning rate {saved_lr}")
        ratio = new_lr / saved_lr
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            group["initial_lr"] = new_lr
        self.lr_scheduler.base_lrs = [new_lr for _ in self.lr_scheduler.base_lrs]
        self.lr_scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # ---------------------------------------------------------------- models as callables
    def _student(self, x, t, cond):
        return unet_forward(self.model, x, t, cond)

    def _teacher(self, x, t, cond):
        with self.adapters.disabled():
            return unet_forward(self.unet, x, t, cond)

    def _target(self, x, t, cond):
        if self.ema is None:  # stop-gradient online network, as the LoRA reference scripts
            return unet_forward(self.unet, x, t, cond)
        return self.ema.call(self.unet, x, t, encoder_hidden_states=cond["encoder_hidden_states"],
                             added_cond_kwargs=cond.get("added_cond_kwargs")).sample

    # ---------------------------------------------------------------- one optimizer step
    def step(self) -> float:
        """Run one optimizer step (all accumulation micro-steps); return the process-averaged loss.

        A non-finite loss leaves the weights, optimizer and step counter untouched.
        """
        cfg, step = self.cfg, self.step_count
        accum = cfg.train.gradient_accumulation
        total = 0.0
        if self.discriminator is not None:
            return self._adversarial_step(step, accum)
        for micro in range(accum):
            latents, cond, uncond, rnd, _, _ = self._micro_batch(step, micro)
            rnd = rnd.select(self.rows)
            with no_sync(self.model, micro == accum - 1):
                loss = self.lcd(self._student, self._teacher, self._target, latents, cond, uncond, rnd, self.autocast)
                self.scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
        reduce_device = self.device if self.device.type == "cuda" else "cpu"
        loss_value = float(self.ctx.mean(torch.tensor([total], device=reduce_device)).item())
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            return loss_value
        if not self._lora_update():
            return math.nan  # finite loss, non-finite gradients: stopped as a divergence, nothing updated
        self.step_count += 1
        return loss_value

    def _micro_batch(self, step: int, micro: int):
        """The global micro-batch of optimizer step ``step``: latents, cond, uncond, the LCD randomness (not yet
        restricted to this process's rows), its generator and the global batch shape — seeded by step, so a
        resumed run draws the same."""
        cfg = self.cfg
        global_items = self.plan.next()
        gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, step, micro))
        latents, cond, time_ids = self.data.build(global_items, self.rows, f"{cfg.train.seed}-{step}-{micro}", gen)
        uncond = self.data.uncond(cfg.lcd.uncond, latents.shape[0], time_ids)
        global_shape = (len(global_items), *latents.shape[1:])
        rnd = sample_lcd_randomness(global_shape, cfg.lcd.num_ddim_timesteps, cfg.lcd.w_min, cfg.lcd.w_max, gen)
        # s (tcd/pcm/tscd) is drawn after (i, ε, ω): LCM runs draw exactly what they drew before;
        # TSCD's stage follows the global optimizer step, so resumed runs draw the same s
        rnd.tcd_s = objective_end_timesteps(cfg.lcd, rnd.index, self.solver, step, gen, cfg.train.max_steps)
        return latents, cond, uncond, rnd, gen, global_shape

    def _lora_update(self) -> bool:
        """Clip, step the LoRA's optimizer and LR schedule, clear gradients, update the EMA target.

        Returns False, changing nothing, when the gradients of a run without a GradScaler are not finite (a finite
        loss can have them: pseudo-Huber at c → 0 where a difference is exactly 0); the caller stops as for a
        non-finite loss. A step GradScaler skips (fp16 overflow) leaves the LR schedule and the EMAs where they were,
        as accelerate's scheduler does in the reference scripts."""
        scaled = self.scaler.is_enabled()
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm > 0 or not scaled:
            if scaled:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm if max_norm > 0 else math.inf)
            if not scaled and not math.isfinite(float(norm)):
                self.optimizer.zero_grad(set_to_none=True)
                return False
        scale = float(self.scaler.get_scale()) if scaled else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scaled and float(self.scaler.get_scale()) < scale:  # GradScaler skipped this step
            return True
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update()
        if self.export_ema is not None:
            self.export_ema.update()
        return True

    def _adversarial_step(self, step: int, accum: int) -> float:
        """One optimizer step with PCM's adversarial consistency loss (:mod:`.adversarial`): the discriminator's
        on even steps (returns its hinge loss), the LoRA's on odd steps (returns consistency + weight·G)."""
        from .adversarial import is_discriminator_step, sample_adversarial_randomness

        cfg, disc = self.cfg, self.discriminator
        d_step = is_discriminator_step(step)
        total = 0.0
        for micro in range(accum):
            latents, cond, uncond, rnd, gen, global_shape = self._micro_batch(step, micro)
            adv = sample_adversarial_randomness(global_shape, rnd.tcd_s, cfg.lcd.phases, self.solver.num_train_timesteps, gen,
                                                self.adversarial_edges)
            rnd, adv = rnd.select(self.rows), adv.select(self.rows)
            models = (self._student, self._teacher, self._target, latents, cond, uncond, rnd, adv)
            if d_step:
                loss = self.adversarial.discriminator_loss(*models, self.adapters.disabled, self.autocast)
                self.d_scaler.scale(loss / accum).backward()
                total += float(loss.detach()) / accum
                continue
            with no_sync(self.model, micro == accum - 1):
                scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
                value, surrogate = self.adversarial.generator_loss(*models, self.adapters.disabled, self.autocast, scale)
                self.scaler.scale(surrogate / accum).backward()
            total += float(value) / accum
        reduce_device = self.device if self.device.type == "cuda" else "cpu"
        loss_value = float(self.ctx.mean(torch.tensor([total], device=reduce_device)).item())
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            self.d_optimizer.zero_grad(set_to_none=True)
            return loss_value
        if d_step:
            params = list(disc.parameters())  # used twice below: a list, not a one-shot generator
            if self.ctx.world > 1:  # the heads are not inside DDP: average their gradients by hand
                for p in params:
                    if p.grad is not None:
                        p.grad.copy_(self.ctx.mean(p.grad))
            if cfg.optim.max_grad_norm > 0:
                self.d_scaler.unscale_(self.d_optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            self.d_scaler.step(self.d_optimizer)
            self.d_scaler.update()
            self.d_optimizer.zero_grad(set_to_none=True)
        elif not self._lora_update():  # the reference steps its scheduler in the generator branch only
            return math.nan
        self.step_count += 1
        return loss_value

    # ---------------------------------------------------------------- checkpoints / export
    def save(self) -> Path | None:
        """Checkpoint the current step (main process writes; all processes wait)."""
        path = None
        if self.ctx.is_main:
            tensors = {name: p.detach().float() for name, p in self.named_params}
            if self.ema is not None:
                tensors.update(self.ema.state_dict())
            if self.export_ema is not None:
                tensors.update(self.export_ema.state_dict())
            optimizer_state = self.optimizer.state_dict()
            if self.discriminator is not None:  # checkpoint only: the adapter export reads the LoRA layers
                tensors.update({k: v.detach().float() for k, v in self.discriminator.named_tensors().items()})
                optimizer_state = dict(optimizer_state, discriminator=self.d_optimizer.state_dict())
            trainer_state = dict(
                data=self.plan.state_dict(), lr_scheduler=self.lr_scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
                config_hash=self.config_hash, trajectory=_jsonable(trajectory_dict(self.cfg)), config=_jsonable(self.cfg.to_dict()),
            )
            if self.d_scaler is not None and self.d_scaler.is_enabled():
                trainer_state["discriminator_scaler"] = self.d_scaler.state_dict()
            path = ckpt.save_checkpoint(self.output_dir, self.step_count, tensors, optimizer_state, trainer_state,
                                        self.cfg.checkpoint.keep)
        self.ctx.barrier()
        return path

    def export(self) -> Path:
        if self.export_ema is None:
            return _export(self.unet, self.teacher, self.cfg, self.step_count, self.config_hash, self.output_dir)
        with self.export_ema.swapped_in():  # output.export_ema_decay: the averaged weights go into the adapter
            return _export(self.unet, self.teacher, self.cfg, self.step_count, self.config_hash, self.output_dir)


def _train(cfg: TrainConfig, output_dir: Path, resume, progress: bool, on_step, ctx: DistContext,
           record: dict | None = None) -> TrainResult:
    resume_path = ckpt.resolve_resume(output_dir, resume)
    resuming = resume_path is not None or bool(resume)
    _prepare_output(output_dir, cfg, resuming, resume_path)
    if resume_path is not None:  # a refused resume is said before the teacher is loaded and the caches are filled
        resume_changes(resume_path, ckpt.read_state(resume_path).get("trajectory") or {}, cfg)
    ctx.barrier()  # every process has checked the folder before the main one writes the config
    if ctx.is_main and not (resuming and (output_dir / "config.yaml").is_file()):
        _write_config(output_dir, cfg, record)
    ctx.barrier()
    log = RunLog(output_dir, cfg.logging.backend, enabled=ctx.is_main, progress=progress and cfg.logging.progress,
                 max_steps=cfg.train.max_steps)
    log.event("setup", status="loading", pid=os.getpid())
    if cfg.logging.memory_estimate:
        _report_memory(cfg, ctx, log)
    session = None
    stop = _StopFlag().install()
    try:
        stop.immediate = True
        session = TrainingSession(cfg, output_dir, ctx, progress).setup(resume_path)
        stop.immediate = False
        if resume and ctx.is_main:
            _write_config(output_dir, cfg, record)
        if resume_path is not None and ctx.is_main:  # the restore was accepted: later checkpoints are abandoned
            ckpt.set_aside_newer(output_dir, session.step_count)
        with training_threads(session.unet, session.device):
            return _loop(session, log, resume_path, on_step, stop)
    except _Cancelled as e:
        message = f"stopped by {e} while loading/caching; nothing to checkpoint yet (caches are kept)"
        log.event("end", step=None, status="interrupted", adapter=None, checkpoint=None, message=message)
        step = 0 if resume_path is None else ckpt.checkpoint_step(resume_path)
        return TrainResult(adapter_path=None, final_step=step, status="interrupted", output_dir=output_dir,
                           checkpoint=resume_path, start_step=step)
    except NonFiniteLossError:
        raise
    except BaseException as e:  # noqa: BLE001 — recorded for the event stream, then re-raised
        step = session.step_count if session is not None else None
        log.event("end", step=step, status="error", adapter=None, checkpoint=None, message=f"{type(e).__name__}: {e}")
        raise
    finally:
        stop.restore()
        log.close()


class MemoryWarning(UserWarning):
    """The device reports less free memory than the run is estimated to need."""


def _report_memory(cfg: TrainConfig, ctx: DistContext, log: RunLog) -> None:
    """Print the memory estimate (``training/memory_estimate.py``) and warn when the device has less free."""
    from .memory_estimate import check_fits, estimate_memory, free_device_memory

    try:
        est = estimate_memory(cfg, str(ctx.device), world=ctx.world, both_modes=False)
    except Exception as e:  # an estimate must never stop a run
        log.write(f"memory estimate unavailable: {type(e).__name__}: {e}")
        return
    log.write(est.format())
    log.event("memory_estimate", total_bytes=est.total, components={c.name: c.bytes for c in est.components})
    message = check_fits(est, free_device_memory(ctx.device))
    if message:
        log.write(f"warning: {message}")
        warnings.warn(message, MemoryWarning, stacklevel=3)


def _loop(session: TrainingSession, log: RunLog, resume_path: Path | None, on_step, stop: _StopFlag) -> TrainResult:
    cfg, ctx, output_dir = session.cfg, session.ctx, session.output_dir
    start_step = session.step_count
    log.start_bar(start_step)
    log.event("start", status="running", start_step=start_step, max_steps=cfg.train.max_steps, config_hash=session.config_hash,
              threads=torch.get_num_threads(),
              pid=os.getpid(), world_size=ctx.world, device=str(ctx.device),
              resumed_from=None if resume_path is None else os.fspath(resume_path))
    saved_step = {"step": None if resume_path is None else session.step_count}

    def save() -> Path | None:
        path = session.save()
        saved_step["step"] = session.step_count
        if path is not None:
            log.event("checkpoint", step=session.step_count, path=os.fspath(path))
        return path

    losses: list[float] = []
    status = "finished"
    last_ckpt = resume_path
    while session.step_count < cfg.train.max_steps:
        loss_value = session.step()
        step = session.step_count
        if not math.isfinite(loss_value):
            status = "diverged"
            message = (f"non-finite loss or gradients (loss {loss_value}) at step {step + 1}; stopped without updating. "
                       f"Last good checkpoint: {last_ckpt or 'none'}. Resume from it with a lower rate: --resume optim.learning_rate=... (or mixed_precision: bf16/no in a new run).")
            log.event("end", step=step, status=status, adapter=None, message=message,
                      checkpoint=None if last_ckpt is None else os.fspath(last_ckpt))
            raise NonFiniteLossError(output_dir, message)
        losses.append(loss_value)
        log.step(step, loss_value, session.lr_scheduler.get_last_lr()[0], log_row=(step % cfg.logging.every == 0))
        if on_step is not None:
            on_step(step, loss_value)
        if ctx.is_main and cfg.validation.every and step % cfg.validation.every == 0:
            images = _validate(session.teacher, session.unet, cfg, step, output_dir, ctx.device, session.autocast,
                               session.solver, log, session.validation_prompts, session.validation_text)
            if images:
                log.event("validation", step=step, images=images, steps=cfg.validation.steps,
                          prompts=session.validation_prompts)
        stop_now = ctx.any(stop.requested)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.max_steps:
            last_ckpt = save()
        if stop_now:
            status = "interrupted"
            if saved_step["step"] != step:
                last_ckpt = save()
            break

    adapter_path = None
    if status == "finished":
        if saved_step["step"] != session.step_count:  # resumed at max_steps (e.g. killed while exporting): already saved
            last_ckpt = save()
        if ctx.is_main:
            adapter_path = session.export()
    log.event("end", step=session.step_count, status=status, adapter=None if adapter_path is None else os.fspath(adapter_path),
              checkpoint=None if last_ckpt is None else os.fspath(last_ckpt),
              message="finished" if status == "finished" else f"stopped by signal {stop.signal}; resume with --resume")
    return TrainResult(adapter_path=adapter_path, final_step=session.step_count, losses=losses, status=status,
                       output_dir=output_dir, checkpoint=last_ckpt, start_step=start_step)


def _validate(teacher, unet, cfg, step, output_dir, device, autocast, solver, log, prompts=None, text=None) -> list[str]:
    from .validation import run_validation

    try:
        return run_validation(teacher, unet, cfg, step, output_dir, device, autocast, solver, prompts, text)
    except Exception as e:  # validation must never kill a long run
        log.write(f"validation at step {step} failed: {type(e).__name__}: {e}")
        return []


def _export(unet, teacher: Teacher, cfg: TrainConfig, step: int, thash: str, output_dir: Path) -> Path:
    from .export import DTYPES, export_adapter, peft_state_to_adapter, training_metadata

    alpha = cfg.lora.alpha if cfg.lora.alpha is not None else float(cfg.lora.rank)
    adapter = peft_state_to_adapter(lora_state_dict(unet), alpha, teacher.arch, DTYPES[cfg.output.dtype])
    meta = training_metadata(teacher.arch, cfg.lora.rank, alpha, step, thash, cfg)
    from ..lcm_core.safe_names import safe_output_path  # output.name stays inside the output folder

    return export_adapter(adapter, safe_output_path(output_dir, cfg.output.name, allow_subfolders=False), cfg.output.format,
                          meta, overwrite=True)


# Keys a resumed run may change: the usual fix after a divergence is a lower learning rate, and
# the gradient-clipping threshold. Everything else in the trajectory must match the checkpoint.
RESUME_MAY_CHANGE = ("optim.learning_rate", "optim.max_grad_norm")


def resume_changes(path: Path, saved: dict, cfg: TrainConfig) -> set[str]:
    """The keys of ``RESUME_MAY_CHANGE`` that differ between the checkpoint's trajectory ``saved`` and ``cfg``;
    a ConfigError naming the keys when anything else differs."""
    now = _jsonable(trajectory_dict(cfg))
    saved, now = _same_path_spelling(saved), _same_path_spelling(now)  # runs written before paths were normalised
    if _without(saved, RESUME_MAY_CHANGE) != _without(now, RESUME_MAY_CHANGE):
        differ = _differing_keys(_without(saved, RESUME_MAY_CHANGE), _without(now, RESUME_MAY_CHANGE))
        raise ConfigError(path, "the checkpoint was trained with a different configuration "
                          f"({', '.join(f'{k} {_get(saved, k)!r} -> {_get(now, k)!r}' for k in differ[:4]) or 'teacher, data, lcd, lora, optim or train settings differ'}); "
                          "resume with the run's own config (--output RUN --resume; "
                          f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on resume)")
    return {k for k in RESUME_MAY_CHANGE if _get(saved, k) != _get(now, k)}


def _same_path_spelling(trajectory: dict) -> dict:
    """``trajectory`` with its path keys spelled as ``Path`` does ("teacher/" and "teacher" are one folder)."""
    paths = {key for key in all_keys() if field_meta(key)["path"]}
    out = {section: dict(body) if isinstance(body, dict) else body for section, body in trajectory.items()}
    for section, body in out.items():
        if isinstance(body, dict):
            for name, value in body.items():
                if f"{section}.{name}" in paths and isinstance(value, str) and value:
                    body[name] = os.fspath(Path(value))
    return out


def _get(d: dict, dotted: str):
    section, name = dotted.split(".")
    return d.get(section, {}).get(name)


def _differing_keys(a: dict, b: dict) -> list[str]:
    keys = {f"{s}.{k}" for d in (a, b) for s, body in d.items() if isinstance(body, dict) for k in body}
    return sorted(k for k in keys if _get(a, k) != _get(b, k))


def _without(d: dict, dotted_keys) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key in dotted_keys:
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
