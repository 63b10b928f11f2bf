"""PCM's adversarial consistency loss (``lcd.adversarial_weight`` > 0 with ``lcd.objective: pcm``).

Phased Consistency Model (Wang et al. 2024, arXiv 2405.18407, §3.3 "adversarial consistency loss");
reference ``G-U-N/Phased-Consistency-Model`` ``code/text_to_image_sd15/train_pcm_lora_sd15_adv.py`` with
``discriminator_sd15.py`` (``Discriminator``, ``DiscriminatorHead``, ``modified_forward``) and
``code/text_to_image_sdxl/train_pcm_lora_sdxl_adv.py`` with ``discriminator_sdxl.py``; the noise transport
is ``DDPMScheduler.noise_travel`` of their ``scheduling_ddpm_modified.py``.

* **Discriminator**: the frozen teacher UNet as a feature extractor plus trainable heads. Features are the
  outputs of every down block, the mid block and (SD 1.5 layout) every up block — ``modified_forward``'s
  ``output_features``; here read with forward hooks on the UNet's own blocks (the real diffusers forward,
  so any ``UNet2DConditionModel`` works; the SDXL layout stops the forward after the mid block, as the
  reference's early ``return``). Each feature gets ``heads_per_feature`` heads
  ``conv → GroupNorm(32) → LeakyReLU → conv → GroupNorm → LeakyReLU (+ residual) → 1×1 conv to 1 channel``.
  Layouts (:data:`LAYOUTS`): ``sd15`` = down+mid+up, 4 heads each, 3×3 convs (``discriminator_sd15.py``);
  ``sdxl`` = down+mid, 1 head each, 1×1 convs (``discriminator_sdxl.py``). The layout follows the UNet:
  ``sdxl`` for SDXL-type UNets (``addition_embed_type == "text_time"``), ``sd15`` otherwise. Channel counts
  come from the UNet's ``block_out_channels`` (the reference hard-codes SD 1.5's / SDXL's). Our trainer's
  teacher is the student's UNet with the LoRA layers off (:mod:`.student`), so the discriminator sees the
  teacher, as the reference's ``Discriminator(teacher_unet)``.
* **Adversarial timestep** per sample, uniform over the integers ``[s, s + T // phases)`` with s the PCM
  end timestep of the sample's phase (ref.: ``torch.randint(end_timesteps[i], end_timesteps[i] +
  num_train_timesteps // multiphase)``); clamped to T − 1 (never reached with T = 1000 and N = 50). With
  ``lcd.phase_starts`` (uneven phases, which the reference does not have) t is uniform over the sample's own
  phase, ``[s, next edge)``.
* **fake** = the student's phase-end prediction transported from s to that timestep,
  ``sqrt(ᾱ_t/ᾱ_s)·x + sqrt(1 − ᾱ_t/ᾱ_s)·ε'`` (``noise_travel``); **real** = the consistency target
  transported the same way with its own noise (``adversarial_real: target``, the reference), or the
  training latents noised to that timestep (``data``; the reference computes these as ``real_adv`` and
  marks them "not used").
* **Losses** (hinge, averaged over all head outputs): D: ``mean(relu(1 + D(fake))) + mean(relu(1 − D(real)))``;
  G: ``mean(relu(1 − D(fake)))`` (``Discriminator.d_loss`` / ``g_loss`` with weight 1).
* **Alternation** (the reference's ``global_step % 2``): even optimizer steps update the heads only
  (AdamW, ``lcd.adversarial_lr``, betas (0, 0.999), eps as ``optim.eps``; weight decay ``optim.weight_decay``
  in the SD 1.5 layout, 1e-3 in the SDXL one, as each script; grad-norm clip ``optim.max_grad_norm``); odd
  steps update the LoRA with ``consistency + adversarial_weight · G``. The LR scheduler and the EMA
  target step on LoRA updates only (the reference steps its scheduler in the G branch only).

Departures (numerically neutral): on D steps the student runs without autograd (the reference builds a
graph it never uses); the G term's gradient is taken in two parts by the chain rule — ∂G/∂fake through the
discriminator while the LoRA layers are off, then ``fake.backward(∂G/∂fake)`` into the student — because
with gradient checkpointing a single backward would recompute the discriminator's blocks with the LoRA
layers back on. The heads' gradients of the G step, which the reference computes and then discards
(``zero_grad`` before its next D step), are not computed.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .lcd_step import distance
from .precision import at_least_float32

LAYOUTS = {
    # name: (include up-block features, heads per feature, head conv kernel, D weight decay (None = optim.weight_decay))
    "sd15": (True, 4, 3, None),
    "sdxl": (False, 1, 1, 1e-3),
}
HEAD_GROUPS = 32  # GroupNorm(32, C) as the reference's heads


def layout_of(unet) -> str:
    """``sdxl`` for SDXL-type UNets (pooled text + time ids), else ``sd15``."""
    return "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd15"


def feature_channels(unet, layout: str) -> list[int]:
    """Channels of the features the heads read: down blocks, mid block, (sd15) up blocks."""
    channels = list(unet.config.block_out_channels)
    out = channels + [channels[-1]]
    if LAYOUTS[layout][0]:
        out += list(reversed(channels))
    return out


class DiscriminatorHead(nn.Module):
    """``discriminator_sd15.py`` / ``_sdxl.py`` ``DiscriminatorHead``: two conv–GroupNorm–LeakyReLU blocks
    (the second residual), then a 1×1 conv to one logit channel. Channels not divisible by 32 (tiny test
    UNets only) use ``gcd(32, C)`` groups, where the reference cannot be built."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        groups = math.gcd(HEAD_GROUPS, channels)
        pad = kernel // 2
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, kernel, 1, pad), nn.GroupNorm(groups, channels),
                                   nn.LeakyReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, kernel, 1, pad), nn.GroupNorm(groups, channels),
                                   nn.LeakyReLU(inplace=True))
        self.conv_out = nn.Conv2d(channels, 1, 1, 1, 0)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv_out(x)


class DiscriminatorHeads(nn.Module):
    """The trainable part of the reference's ``Discriminator`` (its ``heads``: one ``ModuleList`` of
    ``heads_per_feature`` heads per feature; parameter names match the reference's ``heads.*``)."""

    def __init__(self, channels: list[int], heads_per_feature: int, kernel: int):
        super().__init__()
        self.heads_per_feature = heads_per_feature
        self.heads = nn.ModuleList([nn.ModuleList([DiscriminatorHead(c, kernel) for _ in range(heads_per_feature)])
                                    for c in channels])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"{len(features)} UNet features for {len(self.heads)} discriminator heads")
        return [h(f) for f, group in zip(features, self.heads) for h in group]


class _FeaturesDone(Exception):
    """Raised by the last needed hook to stop the UNet forward (SDXL layout: no up blocks)."""


def unet_features(unet, x: torch.Tensor, t: torch.Tensor, cond: dict, with_up: bool) -> list[torch.Tensor]:
    """``modified_forward``'s ``output_features``: the output of each down block (its hidden states, not the
    residuals), of the mid block and, with ``with_up``, of each up block — read by hooks on the real forward."""
    features: list[torch.Tensor] = []
    blocks = list(unet.down_blocks) + [unet.mid_block] + (list(unet.up_blocks) if with_up else [])
    last = blocks[-1]

    def hook(module, args, output):
        features.append(output[0] if isinstance(output, tuple) else output)
        if module is last and not with_up:
            raise _FeaturesDone

    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=cond.get("added_cond_kwargs"))
    except _FeaturesDone:
        pass
    finally:
        for h in handles:
            h.remove()
    return features


def hinge_d_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """``Discriminator.d_loss``: Σ_heads [mean relu(1 + D(fake)) + mean relu(1 − D(real))] / heads."""
    n = len(fake)
    return sum((torch.mean(torch.relu(at_least_float32(f) + 1)) + torch.mean(torch.relu(1 - at_least_float32(r)))) / n
               for f, r in zip(fake, real))


def hinge_g_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """``Discriminator.g_loss``: Σ_heads mean relu(1 − D(fake)) / heads."""
    n = len(fake)
    return sum(torch.mean(torch.relu(1 - at_least_float32(f))) / n for f in fake)


def noise_travel(x: torch.Tensor, noise: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``scheduling_ddpm_modified.DDPMScheduler.noise_travel``: move a sample at noise level s to t ≥ s,
    ``sqrt(ᾱ_t/ᾱ_s)·x + sqrt(1 − ᾱ_t/ᾱ_s)·noise`` (in x's dtype, as the reference)."""
    ac = alphas_cumprod.to(device=x.device, dtype=x.dtype)
    ratio = ac[t.to(x.device)] / ac[s.to(x.device)]
    shape = (-1,) + (1,) * (x.ndim - 1)
    return ratio.sqrt().reshape(shape) * x + (1 - ratio).sqrt().reshape(shape) * noise


@dataclass
class AdversarialRandomness:
    """The adversarial draws of one step: timestep, the fake's and the real's transport noise, and the
    noise of the data-real variant (one row per sample)."""

    t: torch.Tensor  # (B,) int64
    noise_fake: torch.Tensor
    noise_real: torch.Tensor
    noise_data: torch.Tensor

    def select(self, rows: slice) -> "AdversarialRandomness":
        return AdversarialRandomness(self.t[rows], self.noise_fake[rows], self.noise_real[rows], self.noise_data[rows])

    def to(self, device) -> "AdversarialRandomness":
        return AdversarialRandomness(self.t.to(device), self.noise_fake.to(device), self.noise_real.to(device),
                                     self.noise_data.to(device))


def sample_adversarial_randomness(shape: tuple[int, ...], s: torch.Tensor, phases: int, num_train_timesteps: int,
                                  generator: torch.Generator, edges: list[int] | None = None) -> AdversarialRandomness:
    """Draw, for a global batch, t uniform in ``[s, s + T // phases)`` (clamped to T − 1) and three noises;
    drawn after everything else of the step, so runs without the adversarial loss draw what they drew before.

    ``edges`` (the ascending phase edges of a PCM adapter with ``lcd.phase_starts``: uneven phases) makes t uniform
    over the sample's own phase, ``[s, next edge)`` (``[s, T)`` for the top one): the reference's even width would
    pile a quarter of the top phase's draws on T − 1 and leave parts of the lower phases undrawn."""
    if edges is None:
        width = num_train_timesteps // phases
        t = torch.randint(0, width, (shape[0],), generator=generator, dtype=torch.int64)
    else:
        upper = torch.tensor([*edges[1:], num_train_timesteps], dtype=torch.int64)
        width = upper[torch.searchsorted(torch.tensor(edges, dtype=torch.int64), s.cpu(), right=True) - 1] - s.cpu()
        t = (torch.rand(shape[0], generator=generator, dtype=torch.float64) * width).floor().to(torch.int64)
    t = (s.cpu() + t).clamp_max(num_train_timesteps - 1)
    noise_fake = torch.randn(shape, generator=generator, dtype=torch.float32)
    noise_real = torch.randn(shape, generator=generator, dtype=torch.float32)
    noise_data = torch.randn(shape, generator=generator, dtype=torch.float32)
    return AdversarialRandomness(t, noise_fake, noise_real, noise_data)


def is_discriminator_step(step: int) -> bool:
    """The reference's alternation: ``global_step % 2 == 0`` updates the discriminator."""
    return step % 2 == 0


class Discriminator:
    """Heads + their optimizer around a UNet whose base is frozen; :meth:`outputs` runs the UNet (the caller
    turns the LoRA layers off) and the heads."""

    def __init__(self, unet, layout: str | None = None, *, device=None, seed: int = 0):
        self.layout = layout or layout_of(unet)
        self.with_up, heads_per_feature, kernel, self.weight_decay = LAYOUTS[self.layout]
        with torch.random.fork_rng(devices=[]):  # the heads' init must not move the global generator
            torch.manual_seed(seed)
            self.heads = DiscriminatorHeads(feature_channels(unet, self.layout), heads_per_feature, kernel)
        if device is not None:
            self.heads.to(device)
        self.unet = unet

    def parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def named_tensors(self, prefix: str = "discriminator.") -> dict[str, torch.Tensor]:
        return {prefix + k: v for k, v in self.heads.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str = "discriminator.") -> None:
        own = self.heads.state_dict()
        missing = [k for k in own if prefix + k not in tensors]
        if missing:
            raise KeyError(f"checkpoint has no discriminator tensor {prefix + missing[0]}")
        self.heads.load_state_dict({k: tensors[prefix + k] for k in own})

    def outputs(self, x: torch.Tensor, t: torch.Tensor, cond: dict, *, features_grad: bool,
                autocast=nullcontext) -> list[torch.Tensor]:
        """Head outputs on ``x`` at timesteps ``t``. ``features_grad=False``: the frozen UNet runs without
        autograd (D step: only the heads need gradients)."""
        with autocast():
            with (nullcontext() if features_grad else torch.no_grad()):
                feats = unet_features(self.unet, x, t, cond, self.with_up)
            return self.heads(feats)

    def make_optimizer(self, lr: float, eps: float, weight_decay: float, fused: bool = False):
        wd = self.weight_decay if self.weight_decay is not None else weight_decay
        kwargs = dict(lr=lr, betas=(0.0, 0.999), weight_decay=wd, eps=eps)
        if fused:
            kwargs["fused"] = True
        return torch.optim.AdamW(self.parameters(), **kwargs)


class AdversarialLoss:
    """The two adversarial losses of one (micro-)batch on top of an :class:`~.lcd_step.LcdLoss` (PCM objective:
    ``rnd.tcd_s`` is the phase end s). ``adapters_off``: a context manager factory that turns the UNet's LoRA
    layers off (the discriminator's UNet is the frozen teacher)."""

    def __init__(self, lcd, disc: Discriminator, weight: float, real: str = "target"):
        if real not in ("target", "data"):
            raise ValueError(f"real must be 'target' or 'data', got {real!r}")
        self.lcd, self.disc, self.weight, self.real = lcd, disc, float(weight), real

    def fake_and_real(self, model_pred, target_pred, latents, rnd, adv: AdversarialRandomness, need_real: bool):
        s = rnd.tcd_s.to(model_pred.device)
        alphas = self.lcd.solver.alphas_cumprod
        fake = noise_travel(model_pred, adv.noise_fake, s, adv.t, alphas)
        if not need_real:
            return fake, None
        if self.real == "target":
            return fake, noise_travel(target_pred, adv.noise_real, s, adv.t, alphas)
        return fake, self.lcd.solver.add_noise(at_least_float32(latents), adv.noise_data, adv.t)

    def discriminator_loss(self, student, teacher, target, latents, cond, uncond, rnd, adv: AdversarialRandomness,
                           adapters_off, autocast=nullcontext) -> torch.Tensor:
        """D step: hinge loss on (fake, real); its backward reaches the heads only (the student runs without
        autograd; the reference detaches the fake)."""
        adv = adv.to(latents.device)
        with torch.no_grad():
            model_pred, target_pred = self.lcd.predictions(student, teacher, target, latents, cond, uncond, rnd, autocast)
        fake, real = self.fake_and_real(model_pred, target_pred, latents, rnd, adv, True)
        with adapters_off():
            fake_out = self.disc.outputs(fake, adv.t, cond, features_grad=False, autocast=autocast)
            real_out = self.disc.outputs(real, adv.t, cond, features_grad=False, autocast=autocast)
        return hinge_d_loss(fake_out, real_out)

    def generator_loss(self, student, teacher, target, latents, cond, uncond, rnd, adv: AdversarialRandomness,
                       adapters_off, autocast=nullcontext, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """G step: ``(consistency + weight·G`` (value, no graph), a surrogate whose gradient in the LoRA
        weights is that of the value)``; ``scale``: the fp16 loss scale for the discriminator's backward."""
        adv = adv.to(latents.device)
        model_pred, target_pred = self.lcd.predictions(student, teacher, target, latents, cond, uncond, rnd, autocast)
        consistency = distance(model_pred, target_pred, self.lcd.loss, self.lcd.huber_c)
        fake, _ = self.fake_and_real(model_pred, target_pred, latents, rnd, adv, False)
        with adapters_off():
            g_loss, grad = generator_grad_at(self.disc, fake, adv.t, cond, autocast, scale)
        surrogate = consistency + self.weight * (fake * grad).sum()  # chain rule through fake (module docstring)
        return consistency.detach() + self.weight * g_loss, surrogate


def generator_grad_at(disc: Discriminator, fake: torch.Tensor, t: torch.Tensor, cond: dict, autocast=nullcontext,
                      scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(G loss value, ∂(scale·G)/∂fake / scale) through the discriminator alone (module docstring:
    the caller holds the LoRA layers off; the heads get no gradient)."""
    leaf = fake.detach().requires_grad_(True)
    g = hinge_g_loss(disc.outputs(leaf, t, cond, features_grad=True, autocast=autocast))
    (grad,) = torch.autograd.grad(g * scale, leaf)
    return g.detach(), grad / scale
