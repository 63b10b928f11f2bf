"""The LCM-LoRA distillation loop (LCM paper Algorithm 1 with LoRA, LCM-LoRA §3) — Python API.

``train(config, output_dir, resume=None, overrides=(), progress=True) -> TrainResult``

Usable in-process or in a subprocess (``python -m lcm_lora.training --config ...``): progress is
streamed to ``<output>/events.jsonl`` (see :mod:`.run_log`), SIGTERM/SIGINT make the run save a
checkpoint and return with ``status="interrupted"``, a non-finite loss stops it with
``status="diverged"`` (raising :class:`NonFiniteLossError`) and keeps the last good checkpoint.

Per optimizer step (``gradient_accumulation`` micro-steps of the global batch):
the batch plan yields the next global batch; a generator seeded by (seed, step, micro-step)
draws the VAE posterior noise and the LCD randomness (i, ε, ω) for the *whole* global batch;
each process takes its rows; :class:`~.lcd_step.LcdLoss` gives the loss; gradients of the
LoRA weights only are averaged (DDP), clipped (max-norm 1) and AdamW steps. Because all
randomness is a function of (seed, step) and the data position is checkpointed, an interrupted
and resumed run repeats the uninterrupted run's loss sequence.
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..lcm_core.atomic_write import atomic_file
from ..lcm_core.errors import ConfigError, LcmLoraError, OutputExistsError
from . import checkpoint as ckpt
from .batch_plan import BatchPlan
from .batches import TrainingData
from .config import TrainConfig, config_hash, dump_config, load_config, require_inputs, trajectory_dict
from .ddim_solver import DDIMSolver
from .distributed import DistContext, init_distributed, no_sync, wrap_ddp
from .ema import LoraEma
from .lcd_step import LcdLoss, sample_lcd_randomness
from .run_log import RunLog
from .student import adapters_disabled, add_lora, lora_state_dict
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


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint and returns at the next step boundary."""

    def __init__(self):
        self.requested = False
        self.signal = None
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

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _prepare_output(output_dir: Path, cfg: TrainConfig, resuming: bool, is_main: bool) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    if not resuming and ckpt.list_checkpoints(output_dir):
        raise OutputExistsError(output_dir, "already holds checkpoints of a run: pass --resume to continue it, or use a new folder")
    if is_main:
        with atomic_file(output_dir / "config.yaml", overwrite=True) as tmp:
            tmp.write_text(dump_config(cfg), encoding="utf-8")


def _records(cfg: TrainConfig, teacher: Teacher, output_dir: Path, device, autocast, ctx: DistContext, progress_factory):
    from .data import read_prompts, scan_image_folder

    if cfg.data.path:
        return scan_image_folder(cfg.data)
    from .prompts_only import generate_prompt_samples

    prompts = read_prompts(cfg.data.prompts, cfg.data.caption_column)
    root = Path(cfg.prompts_only.dir) if cfg.prompts_only.dir else output_dir / "teacher_samples"
    return generate_prompt_samples(teacher, prompts, cfg.prompts_only, cfg.data.resolution, root, device, autocast,
                                   ctx.rank, ctx.world, ctx.barrier, progress_factory)


def _optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]):
    o = cfg.optim
    if o.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=o.learning_rate, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, eps=o.eps)


def train(
    config: "TrainConfig | dict | str | os.PathLike",
    output_dir: str | os.PathLike,
    resume: "str | os.PathLike | bool | None" = None,
    overrides: Iterable[str] = (),
    progress: bool = True,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Distil an LCM-LoRA; see the module docstring. ``resume=True`` continues from the newest checkpoint."""
    cfg = load_config(config, overrides)
    require_inputs(cfg)
    output_dir = Path(output_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        return _train(cfg, output_dir, resume, progress, on_step, ctx)
    finally:
        ctx.shutdown()


def _train(cfg: TrainConfig, output_dir: Path, resume, progress: bool, on_step, ctx: DistContext) -> TrainResult:
    device = ctx.device
    if cfg.train.batch_size % ctx.world:
        raise ConfigError(cfg.source, f"key 'train.batch_size' ({cfg.train.batch_size}) must be divisible by the number of processes ({ctx.world})")
    resume_path = ckpt.resolve_resume(output_dir, resume)
    _prepare_output(output_dir, cfg, resume_path is not None or bool(resume), ctx.is_main)
    ctx.barrier()
    if device.type == "cuda" and cfg.train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    mp = cfg.train.mixed_precision
    weight_dtype = _DTYPES.get(mp, torch.float32)
    autocast = (lambda: torch.autocast(device.type, dtype=weight_dtype)) if mp in _DTYPES else nullcontext

    # ---------------------------------------------------------------- models
    torch.manual_seed(cfg.train.seed)  # LoRA init (peft: Kaiming-uniform A, zero B) is identical on every rank
    teacher = load_teacher(cfg.teacher)
    unet = teacher.unet
    base_dtype = weight_dtype if cfg.train.cast_base_weights else torch.float32
    unet.to(device, dtype=base_dtype)
    for enc in teacher.text_encoders:
        enc.to(device, dtype=base_dtype)
    if teacher.vae is not None:
        teacher.vae.to(device, dtype=torch.float32)  # fp32 VAE, as the reference ("to avoid NaN losses")
    named_params = add_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets)
    params = [p for _, p in named_params]
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    solver = DDIMSolver(teacher.alphas_cumprod, cfg.lcd.num_ddim_timesteps).to(device)
    lcd = LcdLoss(solver, teacher.prediction_type, cfg.lcd.loss, cfg.lcd.huber_c, cfg.lcd.timestep_scaling)
    optimizer = _optimizer(cfg, params)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(cfg.optim.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.optim.lr_warmup_steps,
                                 num_training_steps=cfg.train.max_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=(mp == "fp16"))
    ema = LoraEma(named_params, cfg.lcd.ema_decay) if cfg.lcd.target == "ema" else None

    # ---------------------------------------------------------------- data
    from tqdm.auto import tqdm

    show = progress and cfg.logging.progress and ctx.is_main

    def progress_factory(total, desc):
        return tqdm(total=total, desc=desc, disable=not show, dynamic_ncols=True)

    records = _records(cfg, teacher, output_dir, device, autocast, ctx, progress_factory)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else output_dir / "cache"
    data = TrainingData(records, teacher, cfg.data, cache_dir, device, cfg.train.seed, num_workers=cfg.train.num_workers)
    if cfg.data.random_flip and cfg.data.cache_latents:
        raise ConfigError(cfg.source, "keys 'data.random_flip' and 'data.cache_latents' cannot be combined (cached latents are unflipped)")
    data.prepare(ctx.rank, ctx.world, ctx.barrier, progress_factory)
    plan = BatchPlan([data.bucket_of[i] for i in range(len(records))], cfg.train.batch_size, cfg.train.seed)

    # ---------------------------------------------------------------- resume
    step = 0
    thash = config_hash(cfg)
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path)
        if state.state.get("trajectory") != _jsonable(trajectory_dict(cfg)):
            raise ConfigError(resume_path, "the checkpoint was trained with a different configuration "
                              "(teacher, data, lcd, lora, optim or train settings differ); resume with the same config")
        with torch.no_grad():
            for name, p in named_params:
                p.copy_(state.tensors[name])
        if ema is not None:
            ema.load_state_dict(state.tensors)
        optimizer.load_state_dict(state.optimizer)
        lr_scheduler.load_state_dict(state.state["lr_scheduler"])
        if state.state.get("scaler"):
            scaler.load_state_dict(state.state["scaler"])
        plan.load_state_dict(state.state["data"])
        ckpt.restore_rng_states(state.rng, state.state["rng"])
        step = state.step
    start_step = step

    model = wrap_ddp(unet, ctx)
    rows = slice(ctx.rank * cfg.train.batch_size // ctx.world, (ctx.rank + 1) * cfg.train.batch_size // ctx.world)

    def student(x, t, cond):
        return unet_forward(model, x, t, cond)

    def teacher_fn(x, t, cond):
        with adapters_disabled(unet):
            return unet_forward(unet, x, t, cond)

    def target_fn(x, t, cond):
        if ema is None:  # stop-gradient online network, as the LoRA reference scripts
            return unet_forward(unet, x, t, cond)
        return ema.call(unet, x, t, encoder_hidden_states=cond["encoder_hidden_states"],
                        added_cond_kwargs=cond.get("added_cond_kwargs")).sample

    log = RunLog(output_dir, cfg.logging.backend, enabled=ctx.is_main, progress=show, max_steps=cfg.train.max_steps, start_step=step)
    log.event("start", status="running", start_step=step, max_steps=cfg.train.max_steps, config_hash=thash, pid=os.getpid(),
              world_size=ctx.world, device=str(device), resumed_from=None if resume_path is None else os.fspath(resume_path))

    def save(step_now: int) -> Path | None:
        path = None
        if ctx.is_main:
            tensors = {name: p.detach().float() for name, p in named_params}
            if ema is not None:
                tensors.update(ema.state_dict())
            trainer_state = dict(
                data=plan.state_dict(), lr_scheduler=lr_scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                config_hash=thash, trajectory=_jsonable(trajectory_dict(cfg)), config=_jsonable(cfg.to_dict()),
            )
            path = ckpt.save_checkpoint(output_dir, step_now, tensors, optimizer.state_dict(), trainer_state, cfg.checkpoint.keep)
            log.event("checkpoint", step=step_now, path=os.fspath(path))
        ctx.barrier()
        return path

    stop = _StopFlag().install()
    losses: list[float] = []
    status = "finished"
    last_ckpt = resume_path
    accum = cfg.train.gradient_accumulation
    try:
        while step < cfg.train.max_steps:
            total = 0.0
            for micro in range(accum):
                global_items = plan.next()
                gen = torch.Generator().manual_seed(step_seed(cfg.train.seed, step, micro))
                latents, cond, time_ids = data.build(global_items, rows, f"{cfg.train.seed}-{step}-{micro}", gen)
                uncond = data.uncond(cfg.lcd.uncond, latents.shape[0], time_ids)
                global_shape = (len(global_items), *latents.shape[1:])
                rnd = sample_lcd_randomness(global_shape, cfg.lcd.num_ddim_timesteps, cfg.lcd.w_min, cfg.lcd.w_max, gen).select(rows)
                with no_sync(model, micro == accum - 1):
                    loss = lcd(student, teacher_fn, target_fn, latents, cond, uncond, rnd, autocast)
                    scaler.scale(loss / accum).backward()
                total += float(loss.detach()) / accum
            loss_value = float(ctx.mean(torch.tensor([total], device=device if device.type == "cuda" else "cpu")).item())
            if not math.isfinite(loss_value):
                status = "diverged"
                optimizer.zero_grad(set_to_none=True)
                message = (f"non-finite loss ({loss_value}) at step {step + 1}; stopped without updating. "
                           f"Last good checkpoint: {last_ckpt or 'none'}. Try a lower optim.learning_rate or mixed_precision: bf16/no.")
                log.event("end", step=step, status=status, adapter=None, message=message,
                          checkpoint=None if last_ckpt is None else os.fspath(last_ckpt))
                raise NonFiniteLossError(output_dir, message)
            if cfg.optim.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            losses.append(loss_value)
            log.step(step, loss_value, lr_scheduler.get_last_lr()[0], log_row=(step % cfg.logging.every == 0))
            if on_step is not None:
                on_step(step, loss_value)

            if ctx.is_main and cfg.validation.every and step % cfg.validation.every == 0:
                images = _validate(teacher, unet, cfg, step, output_dir, device, autocast, solver, log)
                if images:
                    log.event("validation", step=step, images=images, steps=cfg.validation.steps)
            stop_now = ctx.any(stop.requested)
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.max_steps:
                last_ckpt = save(step)
            if stop_now:
                status = "interrupted"
                if last_ckpt is None or ckpt.list_checkpoints(output_dir)[-1][0] != step:
                    last_ckpt = save(step)
                break
    finally:
        stop.restore()

    adapter_path = None
    if status == "finished":
        last_ckpt = save(step)
        if ctx.is_main:
            adapter_path = _export(unet, teacher, cfg, step, thash, output_dir)
    log.event("end", step=step, status=status, adapter=None if adapter_path is None else os.fspath(adapter_path),
              checkpoint=None if last_ckpt is None else os.fspath(last_ckpt),
              message="finished" if status == "finished" else f"stopped by signal {stop.signal}; resume with --resume")
    log.close()
    return TrainResult(adapter_path=adapter_path, final_step=step, losses=losses, status=status, output_dir=output_dir,
                       checkpoint=last_ckpt, start_step=start_step)


def _validate(teacher, unet, cfg, step, output_dir, device, autocast, solver, log) -> list[str]:
    from .validation import run_validation

    try:
        return run_validation(teacher, unet, cfg, step, output_dir, device, autocast, solver)
    except Exception as e:  # validation must never kill a long run
        log.write(f"validation at step {step} failed: {type(e).__name__}: {e}")
        return []


def _export(unet, teacher: Teacher, cfg: TrainConfig, step: int, thash: str, output_dir: Path) -> Path:
    from .export import DTYPES, export_adapter, peft_state_to_adapter, training_metadata

    alpha = cfg.lora.alpha if cfg.lora.alpha is not None else float(cfg.lora.rank)
    adapter = peft_state_to_adapter(lora_state_dict(unet), alpha, teacher.arch, DTYPES[cfg.output.dtype])
    meta = training_metadata(teacher.arch, cfg.lora.rank, alpha, step, thash, cfg)
    return export_adapter(adapter, output_dir / cfg.output.name, cfg.output.format, meta, overwrite=True)


def _jsonable(obj):
    import json

    return json.loads(json.dumps(obj, default=str))
