"""``lcm-lora train --estimate-memory``: the peak memory of a training run, per component, without weights.

Nothing is loaded: the UNet, text encoders and VAE are built on PyTorch's ``meta`` device from
their configs (``lcm_core.model_configs`` for ``teacher.arch``, or the ``config.json`` files of a
diffusers teacher folder), so parameter counts are exact. Components:

* frozen weights: UNet (+ text encoders and VAE while they are on the device; with both caches on
  they leave it after caching — :mod:`.offload`), in the dtypes the trainer stores them in;
* LoRA weights (float32), their gradients and the optimizer states (AdamW: 2 × float32;
  8-bit AdamW: 2 bytes per weight);
* cached tensors: one batch of latents / text embeddings on the device, plus the in-memory text
  cache (``TextCache``, host memory);
* activations: not a per-model constant — one LCD training step (teacher pass at 2B, student
  forward, target pass, loss, backward; ``training/lcd_step.py``) is *executed on meta tensors*
  with the real UNet code, LoRA layers, gradient checkpointing and a mixed-precision emulation,
  while a dispatch mode counts the bytes of every live tensor storage (freed when its last
  reference dies, as the allocator sees it). The peak of that count is the activation component
  (including the LoRA gradients, which live from the backward to the optimizer step). It is an
  exact count of tensor sizes per op of this UNet config at this resolution and batch — the
  analytic per-block count, done by the model code itself rather than by a hand-written table.
  The step is the configured one: the teacher pass runs at B instead of 2B with ``lcd.solver_guidance:
  false`` (no unconditional pass), and with PCM's adversarial loss (``lcd.adversarial_weight``) both steps
  of its alternation run and the larger peak counts (:func:`simulate_step`); the discriminator heads and
  their AdamW states are one more component (``discriminator heads + optimizer states``).

Not estimated: the validation pass (``validation.every`` > 0, :func:`.validation.sample_student`): no-grad
sampling of all validation prompts in one UNet batch at ``validation.resolution`` — two rows per prompt
(conditional + unconditional, real CFG at ``lcd.normal_cfg``) for a normal-CFG run (``lcd.solver_guidance:
false``) — and the VAE decode of the samples. Its peak is not simulated or measured here (the memory
checks of ``benchmarks/trainer/memory_check.py`` run with ``validation.every=0``); the estimate says so in a
note when validation is on (:func:`_validation_note`).

Attention is counted as the fused kernels run it (``scaled_dot_product_attention`` →
flash / memory-efficient: output + log-sum-exp saved, no L×L matrix), autocast as PyTorch's
lower-precision op list (conv, linear, matmul, bmm, baddbmm, addmm, attention; CUDA: norms and
softmax in float32). Not counted: allocator fragmentation / caching (CUDA reserves more than it
allocates), CUDA context and kernels (≈ 0.3–1 GiB), library code and Python objects (on CPU a
process-overhead allowance is added, see ``_process_overhead``).
"""
from __future__ import annotations

import json
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..lcm_core.errors import ConfigError

GIB = 2**30
MIB = 2**20
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------ result
@dataclass
class Component:
    name: str
    bytes: int
    note: str = ""


@dataclass
class MemoryEstimate:
    """Per-component peak estimate of one training process on ``device`` (bytes)."""

    arch: str
    device: str
    resolution: tuple[int, int]
    batch_size: int
    components: list[Component] = field(default_factory=list)
    activations_checkpointed: int = 0
    activations_plain: int = 0
    gradient_checkpointing: bool = False
    offloaded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    def get(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)

    def format(self) -> str:
        w, h = self.resolution
        lines = [f"memory estimate ({self.arch}, {w}x{h} px, batch {self.batch_size} per process, device {self.device}):"]
        for c in self.components:
            lines.append(f"  {c.name:<34s} {c.bytes / GIB:8.2f} GiB  {c.note}")
        other = self.activations_plain if self.gradient_checkpointing else self.activations_checkpointed
        lines.append(f"  {'peak (total)':<34s} {self.total / GIB:8.2f} GiB")
        if other:
            lines.append(f"  activations {'without' if self.gradient_checkpointing else 'with'} gradient checkpointing would be "
                         f"{other / GIB:.2f} GiB (peak {(self.total - self.get('activations (peak of one step)') + other) / GIB:.2f} GiB)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ live-bytes counter
def _dispatch_mode_base():
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


class LiveBytes(_dispatch_mode_base()):
    """Counts the bytes of tensor storages created under it that are still referenced (and their peak).

    A storage is counted once (views share it) and released by a weakref finalizer when the last
    reference dies — i.e. when a caching-free allocator would get the memory back."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._sizes:
            return
        n = storage.nbytes()
        self._sizes[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        # a view or in-place result shares an input's storage: not an allocation (weights made before the
        # counter started, e.g. ``aten.t`` of a frozen Linear weight, must not be counted)
        inputs = {x.untyped_storage()._cdata for x in tree_leaves((args, kwargs))
                  if isinstance(x, torch.Tensor) and x.device.type == "meta"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "meta" and t.untyped_storage()._cdata not in inputs:
                self._track(t)
        return out


class _FusedAttention(torch.autograd.Function):
    """Memory of a fused attention kernel (flash / memory-efficient; CPU flash): saves q, k, v, the
    output and a float32 log-sum-exp of shape (B, H, L); no L×L matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _autocast_emulation_base():
    from torch.overrides import TorchFunctionMode

    return TorchFunctionMode


class EmulatedAutocast(_autocast_emulation_base()):
    """``torch.autocast`` for meta tensors (which autocast ignores): floating inputs of the
    lower-precision ops are cast to ``dtype`` above autograd, so the casts are recorded and their
    copies saved exactly as under real autocast; on CUDA norms and softmax run in float32."""

    import torch.nn.functional as _F

    LOWER = {_F.linear, _F.conv1d, _F.conv2d, _F.conv3d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm, torch.mm,
             torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm, torch.Tensor.baddbmm}
    FP32_CUDA = {_F.group_norm, _F.layer_norm, _F.softmax, torch.softmax, torch.Tensor.softmax}

    def __init__(self, dtype: torch.dtype | None, device_type: str):
        super().__init__()
        self.dtype = dtype
        self.cuda = device_type == "cuda"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import torch.nn.functional as F

        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            if self.dtype is not None:
                q, k, v = (x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x for x in (q, k, v))
            return _FusedAttention.apply(q, k, v)
        if self.dtype is not None:
            if func in self.LOWER:
                args = tuple(a.to(self.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != self.dtype else a
                             for a in args)
                kwargs = {k: (a.to(self.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != self.dtype else a)
                          for k, a in kwargs.items()}
            elif self.cuda and func in self.FP32_CUDA:
                args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------ model configs
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(path, f"cannot read the model config: {e}") from None


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


@dataclass
class _Parts:
    arch: str
    unet: dict
    text_encoders: dict  # name -> CLIPTextConfig kwargs
    vae: dict | None
    max_length: int = 77


def _model_parts(cfg) -> _Parts:
    """UNet / text-encoder / VAE configs from ``teacher.arch`` or, when it is a diffusers folder,
    from ``teacher.path``'s config files (no weights are read)."""
    from ..lcm_core.model_configs import ARCHITECTURES, text_encoder_configs, unet_config
    from .single_file import vae_config

    path = Path(cfg.teacher.path) if cfg.teacher.path else None
    if path is not None and path.is_dir() and (path / "unet" / "config.json").is_file():
        unet = _clean(_read_json(path / "unet" / "config.json"))
        encoders = {}
        for name in ("text_encoder", "text_encoder_2"):
            if (path / name / "config.json").is_file():
                encoders[name] = _clean(_read_json(path / name / "config.json"))
        vae = _clean(_read_json(path / "vae" / "config.json")) if (path / "vae" / "config.json").is_file() else None
        max_length = 77
        tok = path / "tokenizer" / "tokenizer_config.json"
        if tok.is_file():
            max_length = int(_read_json(tok).get("model_max_length", 77))
        from .teacher import detect_folder_arch

        found = detect_folder_arch(unet)
        return _Parts(found, unet, encoders, vae, min(max_length, 77) if max_length < 10**6 else 77)
    arch = cfg.teacher.arch
    if arch == "auto" and path is not None and path.is_file():
        arch = _detect_single_file(path)
    if arch not in ARCHITECTURES:
        raise ConfigError(cfg.source, "key 'teacher.arch': --estimate-memory needs the architecture "
                          f"(one of {', '.join(ARCHITECTURES)}) or a diffusers teacher folder in teacher.path")
    vae = vae_config(arch) if not cfg.teacher.vae or not Path(cfg.teacher.vae, "config.json").is_file() \
        else _clean(_read_json(Path(cfg.teacher.vae, "config.json")))
    return _Parts(arch, unet_config(arch), text_encoder_configs(arch), vae)


def _detect_single_file(path: Path) -> str:
    """Architecture of a single-file checkpoint from its safetensors header (shapes only)."""
    from ..lcm_core.architecture import detect_checkpoint_architecture

    if path.suffix.lower() != ".safetensors":
        raise ConfigError(path, "set teacher.arch to estimate memory for a non-safetensors checkpoint")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < 100 * MIB:
            raise ConfigError(path, "not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return detect_checkpoint_architecture(shapes).arch


def _meta_unet(config: dict, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with torch.device("meta"):
            return UNet2DConditionModel(**config)
    finally:
        torch.set_default_dtype(previous)


def _count_text_encoder(name: str, config: dict) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    with torch.device("meta"):
        model = cls(CLIPTextConfig(**config))
    return sum(p.numel() for p in model.parameters())


def _count_vae(config: dict) -> tuple[int, int]:
    """(encoder-side, decoder-side) parameter counts of an ``AutoencoderKL``."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        import inspect

        accepted = inspect.signature(AutoencoderKL.__init__).parameters
        vae = AutoencoderKL(**{k: v for k, v in config.items() if k in accepted})
    enc = sum(p.numel() for m in (vae.encoder, vae.quant_conv) if m is not None for p in m.parameters())
    total = sum(p.numel() for p in vae.parameters())
    return enc, total - enc


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------ the step on meta
def simulate_step(unet, batch: int, latent_hw: tuple[int, int], seq_len: int, pooled_dim: int | None,
                  autocast_dtype: torch.dtype | None, device_type: str, prediction_type: str = "epsilon",
                  num_ddim_timesteps: int = 50, loss: str = "huber", *, objective: str = "lcm",
                  solver_guidance: bool = True, discriminator=None, adversarial_real: str = "target") -> int:
    """Peak live bytes of one LCD step (:class:`~.lcd_step.LcdLoss`: teacher at 2B — at B without
    ``solver_guidance`` —, student, target, loss, backward) of ``unet`` (meta, with LoRA) — everything but
    the weights and optimizer states. With a ``discriminator`` (:mod:`.adversarial`, heads on meta) both
    steps of the adversarial alternation run and the larger peak counts: the discriminator step (student and
    target without autograd, two frozen-UNet feature passes, heads forward/backward, head gradients) and the
    generator step (the LCD step plus a feature pass kept for the backward into the student)."""
    from .ddim_solver import DDIMSolver
    from .lcd_step import LcdLoss, sample_lcd_randomness
    from .student import AdapterSwitch
    from .teacher import sd_noise_scheduler, unet_forward

    meta = torch.device("meta")
    solver = DDIMSolver(sd_noise_scheduler().alphas_cumprod.float(), num_ddim_timesteps).to(meta)
    lcd = LcdLoss(solver, prediction_type, loss, 0.001, 10.0, objective, solver_guidance)
    switch = AdapterSwitch(unet)
    emulation = EmulatedAutocast(autocast_dtype, device_type)

    def student(x, t, c):
        return unet_forward(unet, x, t, c)

    def teacher(x, t, c):
        with switch.disabled():
            return unet_forward(unet, x, t, c)

    h, w = latent_hw
    channels = int(unet.config.in_channels)
    counter = LiveBytes()
    with emulation, counter:
        latents = torch.empty(batch, channels, h, w, device=meta)
        hidden = torch.empty(batch, seq_len, int(unet.config.cross_attention_dim), device=meta)
        cond = {"encoder_hidden_states": hidden}
        uncond = {"encoder_hidden_states": hidden.new_empty(1, *hidden.shape[1:]).expand(batch, *hidden.shape[1:])}
        if pooled_dim is not None:
            ids = torch.empty(batch, 6, device=meta)
            cond["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled_dim, device=meta), "time_ids": ids}
            uncond["added_cond_kwargs"] = {"text_embeds": torch.empty(1, pooled_dim, device=meta).expand(batch, pooled_dim),
                                           "time_ids": ids}
        gen = torch.Generator().manual_seed(0)
        rnd = sample_lcd_randomness((batch, channels, h, w), num_ddim_timesteps, 3.0, 15.0, gen)
        if objective != "lcm":  # the end timestep s: its value does not change any size
            rnd.tcd_s = torch.zeros(batch, dtype=torch.int64)
        if discriminator is None:
            value = lcd(student, teacher, student, latents, cond, uncond, rnd, autocast=nullcontext)
            value.backward()
            del value
            return counter.peak
        from .adversarial import AdversarialLoss, sample_adversarial_randomness

        adv_loss = AdversarialLoss(lcd, discriminator, 0.1, adversarial_real)
        adv = sample_adversarial_randomness((batch, channels, h, w), rnd.tcd_s, 1, 1000, gen)
        start = counter.live
        d_loss = adv_loss.discriminator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, switch.disabled)
        d_loss.backward()  # the head gradients stay live until the optimizer step: part of this peak
        del d_loss
        d_peak = counter.peak
        for p in discriminator.parameters():
            p.grad = None
        assert counter.live <= start + 1024  # nothing of the D step survives it (meta scalars aside)
        counter.reset_peak()
        _, surrogate = adv_loss.generator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, switch.disabled)
        surrogate.backward()
        del surrogate
        return max(d_peak, counter.peak)


def _lora_unet(parts: _Parts, base_dtype: torch.dtype, cfg):
    """Meta UNet in ``base_dtype`` with float32 LoRA layers (``student.add_lora``)."""
    from .student import add_lora

    unet = _meta_unet(parts.unet, base_dtype)
    named = add_lora(unet, cfg.lora.rank, cfg.lora.alpha, 0.0, cfg.lora.targets)
    return unet, named


# ------------------------------------------------------------------------------------------ the estimate
def _largest_bucket(cfg) -> tuple[int, int]:
    from .buckets import make_buckets

    r = cfg.data.resolution
    if not cfg.data.buckets:
        return (r, r)
    return max(make_buckets(r, cfg.data.bucket_step, cfg.data.max_aspect), key=lambda b: (b[0] * b[1], b))


def offload_active(cfg) -> bool:
    """Text encoders and VAE leave the device after caching (see :mod:`.offload`)."""
    return bool(cfg.train.offload_encoders and cfg.data.cache_text and (cfg.data.cache_latents or cfg.data.prompts))


def estimate_memory(cfg, device: str | None = None, *, activations: bool = True, text_cache_entries: int | None = None,
                    world: int = 1, both_modes: bool = True) -> MemoryEstimate:
    """Per-component peak memory of one training process for ``cfg`` (a :class:`~.config.TrainConfig`).

    ``device``: cpu | cuda (default: ``train.device``, auto → cuda when available). ``text_cache_entries``:
    captions held by the in-memory text cache (default: unknown → one batch). ``world``: processes sharing
    the global batch. ``both_modes``: also simulate the other gradient-checkpointing setting (for the table)."""
    device = device or cfg.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    parts = _model_parts(cfg)
    mp = cfg.train.mixed_precision
    compute = _DTYPES.get(mp)
    base_dtype = compute if (compute is not None and cfg.train.cast_base_weights) else torch.float32
    vae_dtype = torch.bfloat16 if (mp == "bf16" and cfg.train.cast_base_weights) else torch.float32
    width, height = _largest_bucket(cfg)
    world_batch = max(cfg.train.batch_size // max(world, 1), 1)
    est = MemoryEstimate(arch=parts.arch, device=device, resolution=(width, height), batch_size=world_batch,
                         gradient_checkpointing=cfg.train.gradient_checkpointing, offloaded=offload_active(cfg))

    unet, named = _lora_unet(parts, base_dtype, cfg)
    frozen = sum(p.numel() * p.element_size() for n, p in unet.named_parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in unet.buffers())
    est.components.append(Component("frozen UNet weights", frozen, f"{str(base_dtype).replace('torch.', '')}"))
    text_params = sum(_count_text_encoder(n, c) for n, c in parts.text_encoders.items())
    text_bytes = text_params * _nbytes(base_dtype)
    vae_enc, vae_dec = _count_vae(parts.vae) if parts.vae else (0, 0)
    if est.offloaded:
        est.components.append(Component("text encoders", 0, f"released after caching ({text_bytes / GIB:.2f} GiB before)"))
        vae_resident = vae_dec * _nbytes(vae_dtype) if device_type == "cpu" else 0
        note = ("decoder kept for validation (encoder released)" if device_type == "cpu"
                else "on the CPU; on the device only while validation decodes")
        est.components.append(Component("VAE", vae_resident, note))
    else:
        est.components.append(Component("text encoders", text_bytes, f"{text_params / 1e6:.0f} M parameters"))
        est.components.append(Component("VAE", (vae_enc + vae_dec) * _nbytes(vae_dtype), str(vae_dtype).replace("torch.", "")))
    lora_params = sum(p.numel() for _, p in named)
    est.components.append(Component("LoRA weights", lora_params * 4, f"{lora_params / 1e6:.1f} M parameters, float32"))
    if cfg.optim.optimizer == "adamw8bit":
        states, snote = lora_params * 2, "8-bit AdamW (2 x 1 byte)"
    else:
        states, snote = lora_params * 8, "AdamW (2 x float32)"
    if cfg.lcd.target == "ema":
        states += lora_params * 4
        snote += " + EMA target copy"
    if cfg.output.export_ema_decay > 0:
        states += lora_params * 4
        snote += " + exported-EMA copy"
    est.components.append(Component("LoRA gradients + optimizer states", lora_params * 4 + states,
                                    f"float32 gradients (backward to optimizer step) + {snote}"))
    discriminator = None
    if cfg.lcd.adversarial_weight > 0:  # PCM's adversarial loss: heads (float32) + their AdamW states (training/adversarial.py)
        from .adversarial import Discriminator

        with torch.device("meta"):
            discriminator = Discriminator(unet)
        heads = sum(p.numel() for p in discriminator.parameters())
        est.components.append(Component("discriminator heads + optimizer states", heads * 12,
                                        f"{heads / 1e6:.1f} M parameters ({discriminator.layout} layout), float32 + AdamW "
                                        "(their gradients: in the activations of the discriminator step)"))

    # cached tensors: one batch of inputs on the device, the in-memory text cache on the host
    ds = 2 ** (len(parts.vae["block_out_channels"]) - 1) if parts.vae else 1
    latent_hw = (height // ds, width // ds)
    channels = int(parts.unet.get("in_channels", 4))
    hidden_dim = int(parts.unet.get("cross_attention_dim") or 768)
    pooled = None
    if parts.unet.get("addition_embed_type") == "text_time":
        pooled = int(parts.text_encoders.get("text_encoder_2", {}).get("projection_dim", 1280))
    per_caption = (parts.max_length * hidden_dim + (pooled or 0)) * 4
    entries = min(text_cache_entries if text_cache_entries is not None else world_batch, 4096)
    batch_inputs = world_batch * (channels * latent_hw[0] * latent_hw[1] * 4 * 3 + per_caption)
    host_cache = entries * per_caption if cfg.data.cache_text else 0
    est.components.append(Component("cached tensors", batch_inputs + (host_cache if device_type == "cpu" else 0),
                                     f"one batch + {entries} cached captions"
                                     + ("" if device_type == "cpu" else f" (host: {host_cache / MIB:.0f} MiB)")))

    if activations:
        seq = parts.max_length

        def run(checkpointing: bool) -> int:
            if checkpointing:
                unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_fn)
            else:
                unet.disable_gradient_checkpointing()
            unet.train()
            for _, p in named:
                p.grad = None
            return simulate_step(unet, world_batch, latent_hw, seq, pooled, compute, device_type,
                                 objective=cfg.lcd.objective, solver_guidance=cfg.lcd.solver_guidance,
                                 discriminator=discriminator, adversarial_real=cfg.lcd.adversarial_real)

        dtype_of_autocast = compute

        def checkpoint_fn(module, *args):
            # the recompute runs in the backward, outside the emulation mode of the forward: re-enter it
            def call(*a):
                from torch.overrides import _get_current_function_mode_stack

                if any(isinstance(m, EmulatedAutocast) for m in _get_current_function_mode_stack()):
                    return module(*a)
                with EmulatedAutocast(dtype_of_autocast, device_type):
                    return module(*a)

            return torch.utils.checkpoint.checkpoint(call, *args, use_reentrant=False)

        lora_grads = lora_params * 4
        ckpt = cfg.train.gradient_checkpointing
        if ckpt or both_modes:
            est.activations_checkpointed = max(run(True) - lora_grads, 0)
        if not ckpt or both_modes:
            est.activations_plain = max(run(False) - lora_grads, 0)
        act = est.activations_checkpointed if cfg.train.gradient_checkpointing else est.activations_plain
        est.components.append(Component("activations (peak of one step)", act,
                                        f"{'with' if cfg.train.gradient_checkpointing else 'without'} gradient checkpointing, "
                                        f"{world_batch} x {width}x{height} px"))
    if device_type == "cpu":
        est.components.append(Component("process overhead", _process_overhead(unet), "model objects, kernels (CPU RSS)"))
    else:
        est.notes.append("CUDA context, kernels and allocator caching are not included (typically 0.5-1.5 GiB more)")
    if cfg.train.gradient_accumulation > 1:
        est.notes.append("gradient accumulation does not change the per-step peak")
    if cfg.validation.every > 0:
        est.notes.append(_validation_note(cfg))
    return est


def _validation_note(cfg) -> str:
    """What the estimate leaves out of a run with validation: the grid's sampling batch (see the module docstring)."""
    prompts = (f"{len(cfg.validation.prompts)} validation prompt(s)" if cfg.validation.prompts
               else "up to 4 data captions (validation.prompts null)")
    rows = ("2 UNet rows per prompt (real CFG at lcd.normal_cfg: cond + uncond)" if not cfg.lcd.solver_guidance
            else "1 UNet row per prompt")
    res = cfg.validation.resolution or cfg.data.resolution
    return (f"validation grids are not counted: no-grad sampling of {prompts} in one batch at {res} px, {rows}, "
            f"then the VAE decode; fewer validation.prompts or a lower validation.resolution lowers that pass")


def _process_overhead(unet) -> int:
    """RSS a CPU training process holds beyond tensor storages: module/parameter objects, peft
    wrappers, oneDNN primitives, lazily imported code. An allowance, not derived: 40 MiB plus 8 KiB per
    module; on the tiny-model rows of BENCHMARKS.md (where it is most of the estimate) it is ≈ 4-5 MiB high."""
    modules = sum(1 for _ in unet.modules())
    return 40 * MIB + modules * 8 * 1024


# ------------------------------------------------------------------------------------------ device check
def free_device_memory(device: torch.device) -> int | None:
    """Bytes the device reports free: ``torch.cuda.mem_get_info`` on CUDA, available RAM on CPU."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        return None
    return None


def check_fits(est: MemoryEstimate, free: int | None) -> str | None:
    """A warning when the device reports less free memory than the estimate needs, else None."""
    if free is None or est.total <= free:
        return None
    return (f"the memory estimate ({est.total / GIB:.2f} GiB) exceeds the free memory the device reports "
            f"({free / GIB:.2f} GiB); expect an out-of-memory error. Try a memory preset (configs/sdxl_24gb.yaml, "
            f"configs/sd15_8gb.yaml), a smaller train.batch_size, train.gradient_checkpointing=true, or caching both latents and text")
