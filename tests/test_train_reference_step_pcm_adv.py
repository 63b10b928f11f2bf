"""PCM's adversarial consistency loss (``lcd.adversarial_weight``, :mod:`lcm_lora.training.adversarial`) equals the
Phased Consistency Model's adversarial LoRA trainer step, executed from its own source: G-U-N/Phased-Consistency-Model
``code/text_to_image_sd15/train_pcm_lora_sd15_adv.py`` (``$PCM_ADV_REFERENCE_SCRIPT``; never committed; extract it
with ``discriminator_sd15.py`` and ``scheduling_ddpm_modified.py`` next to it, as the script imports them:
``git -C PCM_CHECKOUT show HEAD:code/text_to_image_sd15/<file>``). ``benchmarks/trainer/reference_step.py`` (kind
``pcm_adv_sd``) runs the script's training-step block with its own ``Discriminator(teacher_unet)``.

Both branches of the block run on the same draws (torch's global generator reseeded; the transport noises the block
draws with ``torch.randn_like`` are recorded and handed to our loss):

* ``global_step`` even — the discriminator step: the hinge loss (rel 1e-5) and every head gradient after the
  reference's clipping (rel 1e-4), ours on our heads loaded with the reference's head weights;
* ``global_step`` odd — the generator step: consistency + adv_weight·G (rel 1e-5), G alone, and every LoRA gradient
  after clipping (rel 1e-4); our G gradient goes through the chain-rule split of :mod:`~lcm_lora.training.adversarial`;
* the fake and the unused "real" of noised data (our ``adversarial_real: data``) equal the block's tensors.

Adaptation (documented): the reference's ``Discriminator`` hard-codes SD 1.5's feature channels as the default of its
``adapter_channel_dims`` argument; the tiny teacher's channels are passed there. The reference's heads use
``GroupNorm(32, C)``, so the tiny teacher has 32/64 channels (the other parity tests use 16/32). The module's
top level imports a diffusers path removed in current releases (``diffusers.models.unet_2d_condition``), so its
definitions are compiled from its source (:func:`reference_step.load_pcm_adversarial`). Its teacher autocast is
``torch.autocast("cuda")``: a no-op on the CPU.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from reference_step_support import GradTap, pair_with_reference, reference_module, student_and_teacher

VAR = "PCM_ADV_REFERENCE_SCRIPT"
needs_ref = pytest.mark.skipif(not os.environ.get(VAR), reason=f"{VAR} (G-U-N/Phased-Consistency-Model "
                               "code/text_to_image_sd15/train_pcm_lora_sd15_adv.py, with discriminator_sd15.py and "
                               "scheduling_ddpm_modified.py next to it) not set: PCM adversarial parity NOT checked")

CAPTIONS = ["a red circle", "a blue square", "a green ring", "a white cross"]
RESOLUTION = 16
ADV_WEIGHT = 0.1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def grad_errors(ours: dict, ref: dict) -> dict:
    """Relative error per tensor. A tensor whose true gradient is zero is measured against the whole gradient's
    norm: the conv bias just before a ``GroupNorm`` whose groups are single channels (the tiny teacher's
    32-channel heads) is cancelled exactly by the normalisation, so both sides hold float rounding there
    (≈1e-9 of the total) and a per-tensor ratio would compare noise with noise."""
    total = float(torch.cat([g.flatten() for g in ref.values()]).norm())
    return {n: float((g - ref[n]).norm()) / max(float(ref[n].norm()), 1e-3 * total) for n, g in ours.items()}


def run_reference(ref, images, captions, global_step: int, seed: int):
    """The block once as ``global_step`` (D on even, G on odd) on torch's generator at ``seed``; its namespace
    and the ``torch.randn_like`` draws it made, in order."""
    ref.set_global_step(global_step)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        warnings.filterwarnings("ignore", message=".*scale.*deprecated.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        ns = ref.step(images, captions)
    return ns, list(ref.recording_torch.draws)


def our_side(ours, ref, loss_type: str, solver_guidance: bool, real: str = "target", dtype=torch.float32):
    """Our :class:`AdversarialLoss` with heads holding the reference's head weights (float64: heads and schedule in
    float64, for the exact step)."""
    from lcm_lora.training.adversarial import AdversarialLoss, Discriminator
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.lcd_step import LcdLoss

    disc = Discriminator(ours.unet)
    disc.heads.to(dtype)
    disc.heads.heads.load_state_dict(ref.discriminator.heads.state_dict())
    lcd = LcdLoss(DDIMSolver(ours.alphas_cumprod.to(dtype), 50), "epsilon", loss_type, 0.001, 10.0, "pcm", solver_guidance)
    return AdversarialLoss(lcd, disc, ADV_WEIGHT, real), disc


def models(ours, dtype=torch.float32):
    from lcm_lora.training.student import adapters_disabled

    unet = ours.unet.to(dtype).train()
    student, teacher = student_and_teacher(unet)
    return student, teacher, (lambda: adapters_disabled(unet))


def randomness(ns, fake_noise, real_noise, data_noise, dtype=torch.float32):
    from lcm_lora.training.adversarial import AdversarialRandomness
    from lcm_lora.training.lcd_step import LcdRandomness

    rnd = LcdRandomness(ns["index"].cpu(), ns["noise"].to(dtype).cpu(), ns["w"].reshape(-1).to(dtype).cpu(),
                        ns["end_timesteps"].cpu())
    t = ns["adv_timesteps"] if "adv_timesteps" in ns else ns["gan_timesteps"]
    unused = torch.full_like(fake_noise, float("nan"))  # a draw the step does not make must not be read
    return rnd, AdversarialRandomness(t.cpu(), fake_noise, unused if real_noise is None else real_noise,
                                      unused if data_noise is None else data_noise)


def check_d_step(ref, ours, d_tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off):
    """Our D loss and head gradients (clipped at 1, as the reference's ``clip_grad_norm_(discriminator.parameters())``)."""
    rnd, adv = adv_rnd
    latents = ns["latents"].to(cond["encoder_hidden_states"].dtype)
    loss = adv_loss.discriminator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, off)
    loss.backward()
    params = dict(disc.heads.heads.named_parameters())
    assert all(p.grad is not None for p in params.values())
    torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
    assert float(loss.detach()) == pytest.approx(float(ns["loss"].detach()), rel=1e-5)
    worst = max(grad_errors({n: p.grad for n, p in params.items()}, d_tap.grads).values())
    assert worst <= 1e-4, worst
    # the discriminator step leaves the LoRA without gradients, the teacher UNet's weights too
    assert all(p.grad is None for n, p in ours.unet.named_parameters())


def check_g_step(ours, named, tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off):
    rnd, adv = adv_rnd
    latents = ns["latents"].to(cond["encoder_hidden_states"].dtype)
    value, surrogate = adv_loss.generator_loss(student, teacher, student, latents, cond, uncond, rnd, adv, off)
    surrogate.backward()
    torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)  # the reference clips unet.parameters() at max_grad_norm 1
    assert float(value) == pytest.approx(float(ns["loss"].detach()), rel=1e-5)
    g_ref = float(ns["g_loss"].detach())
    assert float(value) - (float(ns["loss"].detach()) - g_ref) == pytest.approx(g_ref, rel=1e-4, abs=1e-7)
    worst = max((rel(p.grad, tap.grads[name]), name) for name, p in named.items())
    assert worst[0] <= 1e-4, worst
    # the heads get no gradient in the generator step; the frozen base weights never do
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.grad is None for n, p in ours.unet.named_parameters() if "lora_" not in n)


@needs_ref
@pytest.mark.parametrize("loss_type,solver_guidance", [("huber", True), ("l2", False)])
@pytest.mark.parametrize("float64", [False, True], ids=["as-published", "float64"])
def test_pcm_adversarial_d_and_g_steps_match_the_sd15_reference(tmp_path, loss_type, solver_guidance, float64):
    """float32: the script as published against our float32 steps. float64: the script's block and its discriminator
    (models, heads, schedules, ``.float()`` casts) in float64 against ours in float64 — the exact steps, where no CPU's
    float32 rounding can hide a difference or make one; same tolerances."""
    from lcm_lora.training.tiny_models import build_tiny_teacher

    dtype = torch.float64 if float64 else torch.float32
    torch.set_num_threads(1)
    teacher_dir = build_tiny_teacher(tmp_path / "teacher", block_out_channels=(32, 64))
    ref = reference_module().ReferenceTrainer(teacher_dir, rank=4, batch_size=len(CAPTIONS), device="cpu", kind="pcm_adv_sd",
                                              phases=4, solver_guidance=solver_guidance, loss_type=loss_type,
                                              adv_weight=ADV_WEIGHT, float64=float64)
    ours, named, tap, images = pair_with_reference(ref, teacher_dir, len(CAPTIONS), RESOLUTION)
    d_tap = GradTap(ref.ns["optimizer_discriminator"], dict(ref.discriminator.heads.named_parameters()), apply=False)
    ref.ns["optimizer_discriminator"] = d_tap
    student, teacher, off = models(ours, dtype)
    uncond = {"encoder_hidden_states": ref.ns["uncond_prompt_embeds"].to(dtype)}

    # D step (global_step 0): draws noise, [unused data noise, fake noise], then the real's noise
    ns, draws = run_reference(ref, images, CAPTIONS, 0, seed=3)
    assert len(draws) == 4 and torch.equal(draws[0], ns["noise"])
    assert ns["loss"].dtype == dtype and all(d.dtype == dtype for d in draws)
    adv_loss, disc = our_side(ours, ref, loss_type, solver_guidance, dtype=dtype)
    adv_rnd = randomness(ns, draws[2], draws[3], draws[1], dtype)
    cond = {"encoder_hidden_states": ns["prompt_embeds"].to(dtype)}
    s, t = adv_rnd[0].tcd_s, adv_rnd[1].t
    assert bool(((t >= s) & (t < s + 250)).all())  # [end_t, end_t + T // phases)
    check_d_step(ref, ours, d_tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off)
    ours.unet.zero_grad(set_to_none=True)

    # G step (global_step 1) on the same draws (the reference's heads are unchanged: its D optimizer is tapped)
    ns, draws = run_reference(ref, images, CAPTIONS, 1, seed=3)
    assert len(draws) == 3
    adv_loss, disc = our_side(ours, ref, loss_type, solver_guidance, dtype=dtype)
    adv_rnd = randomness(ns, draws[2], None, draws[1], dtype)
    cond = {"encoder_hidden_states": ns["prompt_embeds"].to(dtype)}
    check_g_step(ours, named, tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off)
    assert all(g.dtype == dtype for g in tap.grads.values())

    # the tensors themselves: our fake is the block's fake_adv, our data-real is its unused real_adv
    with torch.no_grad():
        from lcm_lora.training.adversarial import AdversarialLoss

        rnd, adv = adv_rnd
        latents = ns["latents"].to(dtype)
        model_pred, target_pred = adv_loss.lcd.predictions(student, teacher, student, latents, cond, uncond, rnd)
        data_loss = AdversarialLoss(adv_loss.lcd, disc, ADV_WEIGHT, "data")
        fake, real = data_loss.fake_and_real(model_pred, target_pred, latents, rnd, adv, True)
    assert fake.dtype == real.dtype == dtype
    assert rel(fake, ns["fake_adv"].detach().to(dtype)) <= 1e-5
    assert rel(real, ns["real_adv"].to(dtype)) <= 1e-6
