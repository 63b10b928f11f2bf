"""PCM on SDXL-type UNets against PCM's only SDXL script, G-U-N/Phased-Consistency-Model
``code/text_to_image_sdxl/train_pcm_lora_sdxl_adv.py`` (``$PCM_ADV_SDXL_REFERENCE_SCRIPT``; never committed; extract
it with ``discriminator_sdxl.py`` and ``scheduling_ddpm_modified.py`` of the same folder next to it), executed from its
own source by ``benchmarks/trainer/reference_step.py`` (:class:`ReferenceTrainerPcmSDXL`, kind ``pcm_adv_sdxl``) on a
tiny SDXL-type teacher (pooled text + time ids, two text encoders):

* **the project's PCM SDXL parity**: with ``--adv_weight 0`` the script's generator step is its consistency loss alone
  (``loss + 0·g_loss``; the zero-weighted G term adds exact zeros to the gradients); our plain ``lcd.objective: pcm``
  loss (no adversarial term) must give that loss (rel 1e-5) and every LoRA gradient (rel 1e-4), with and without
  solver guidance;
* **the adversarial steps** (``--adv_weight 0.1``): the discriminator step (hinge loss, head gradients) and the generator
  step (consistency + 0.1·G, LoRA gradients) as in ``test_train_reference_step_pcm_adv.py``, with the SDXL layout of
  our discriminator (down + mid features, one 1×1-conv head each: ``discriminator_sdxl.py``).

Adaptations (documented): ``main()`` builds all-zero unconditional embeddings with SDXL's full sizes (77 × 2048, 1280);
the harness builds them at the tiny teacher's sizes. The script's LoRA has peft's default ``lora_alpha`` (8); the test
gives it alpha = rank = 4 as ours (the LoRA's scale is set-up, not step code). The reference's heads use
``GroupNorm(32, C)``: the tiny teacher has 32/64 channels.
"""
from __future__ import annotations

import os

import pytest
import torch
from reference_step_support import GradTap, first_draw_with_both_targets, our_lcd_loss, pair_with_reference, reference_module
from test_train_reference_step_pcm_adv import (ADV_WEIGHT, CAPTIONS, RESOLUTION, check_d_step, check_g_step, models,
                                               our_side, randomness, rel, run_reference)

VAR = "PCM_ADV_SDXL_REFERENCE_SCRIPT"
needs_ref = pytest.mark.skipif(not os.environ.get(VAR), reason=f"{VAR} (G-U-N/Phased-Consistency-Model "
                               "code/text_to_image_sdxl/train_pcm_lora_sdxl_adv.py, with discriminator_sdxl.py and "
                               "scheduling_ddpm_modified.py next to it) not set: PCM SDXL parity NOT checked")


def _pair(tmp_path, name: str = "teacher", **kwargs):
    from lcm_lora.training.tiny_models import build_tiny_teacher

    torch.set_num_threads(1)
    teacher_dir = build_tiny_teacher(tmp_path / name, variant="sdxl", block_out_channels=(32, 64))
    ref = reference_module().ReferenceTrainerPcmSDXL(teacher_dir, rank=4, batch_size=len(CAPTIONS), resolution=RESOLUTION,
                                                     device="cpu", lora_alpha=4, phases=4, **kwargs)
    ours, named, tap, images = pair_with_reference(ref, teacher_dir, len(CAPTIONS), RESOLUTION)
    return ref, ours, named, tap, images


def _conds(ref, ns, dtype=torch.float32):
    extra = {k: v.to(dtype) for k, v in ns["encoded_text"].items()}
    cond = {"encoder_hidden_states": ns["prompt_embeds"].to(dtype), "added_cond_kwargs": extra}
    uncond = {"encoder_hidden_states": ref.ns["uncond_prompt_embeds"].to(dtype),
              "added_cond_kwargs": {**extra, "text_embeds": ref.ns["uncond_pooled_prompt_embeds"].to(dtype)}}
    return cond, uncond


@needs_ref
@pytest.mark.parametrize("loss_type,solver_guidance", [("huber", True), ("l2", True), ("huber", False)])
def test_pcm_sdxl_consistency_step_matches_the_reference_at_adv_weight_0(tmp_path, loss_type, solver_guidance):
    """The script's step run in float64 (``float64=True``: its own block with its models, schedules and ``.float()``
    casts in float64) against ours in float64: loss rel 1e-5, every LoRA gradient rel 1e-4 (measured ≈ 1e-14: the
    same step). Then the script as published (float32) against ours in float32: the loss at rel 1e-5, and with the L2
    loss every gradient at rel 1e-4. The pseudo-Huber gradients of two float32 runs are not compared: with c = 0.001
    float32 rounding of the prediction difference moves some of them by ≈ 1e-4, depending on the CPU's kernels
    (1.03e-4 apart with SSE kernels, 2026-12-07; see ``test_train_reference_step_tcd._assert_parity``)."""
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.phased import pcm_end_timesteps

    for float64 in (True, False):
        dtype = torch.float64 if float64 else torch.float32
        ref, ours, named, tap, images = _pair(tmp_path, f"teacher-{dtype}", loss_type=loss_type,
                                              solver_guidance=solver_guidance, adv_weight=0.0, float64=float64)
        ref.ns["discriminator_optimizer"] = GradTap(ref.ns["discriminator_optimizer"], {}, apply=False)  # never stepped at G
        solver = DDIMSolver(ours.alphas_cumprod, 50)
        ns = first_draw_with_both_targets(lambda seed: run_reference(ref, images, CAPTIONS, 1, seed)[0], solver)
        index, s = ns["index"].cpu(), ns["end_timesteps"].cpu()
        assert float(ns["g_loss"].detach()) == 0.0 and ns["loss"].dtype == dtype
        assert torch.equal(pcm_end_timesteps(index, solver, 4), s)  # ddim_style_multiphase's edges are ours
        cond, uncond = _conds(ref, ns, dtype)
        loss = our_lcd_loss(ours, ns, cond, uncond, loss_type, objective="pcm", solver_guidance=solver_guidance, dtype=dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)
        assert float(loss.detach()) == pytest.approx(float(ns["loss"].detach()), rel=1e-5), dtype
        if float64 or loss_type == "l2":
            worst = max((rel(p.grad, tap.grads[name]), name) for name, p in named.items())
            assert worst[0] <= 1e-4, (dtype, *worst)


@needs_ref
@pytest.mark.parametrize("float64", [False, True], ids=["as-published", "float64"])
def test_pcm_adversarial_d_and_g_steps_match_the_sdxl_reference(tmp_path, float64):
    """float32: the script as published; float64: its block and discriminator in float64 against ours in float64
    (the exact steps; same tolerances)."""
    dtype = torch.float64 if float64 else torch.float32
    ref, ours, named, tap, images = _pair(tmp_path, loss_type="huber", solver_guidance=True, adv_weight=ADV_WEIGHT,
                                          float64=float64)
    d_tap = GradTap(ref.ns["discriminator_optimizer"], dict(ref.discriminator.heads.named_parameters()), apply=False)
    ref.ns["discriminator_optimizer"] = d_tap
    student, teacher, off = models(ours, dtype)

    ns, draws = run_reference(ref, images, CAPTIONS, 0, seed=5)  # D step: noise, then real's and fake's transport noise
    assert len(draws) == 3 and torch.equal(draws[0], ns["noise"])
    assert ns["loss"].dtype == dtype and all(d.dtype == dtype for d in draws)
    adv_loss, disc = our_side(ours, ref, "huber", True, dtype=dtype)
    assert disc.layout == "sdxl" and len(disc.heads.heads) == 3 and disc.heads.heads_per_feature == 1
    adv_rnd = randomness(ns, draws[2], draws[1], None, dtype)
    cond, uncond = _conds(ref, ns, dtype)
    check_d_step(ref, ours, d_tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off)
    ours.unet.zero_grad(set_to_none=True)

    ns, draws = run_reference(ref, images, CAPTIONS, 1, seed=5)
    adv_loss, disc = our_side(ours, ref, "huber", True, dtype=dtype)
    adv_rnd = randomness(ns, draws[2], draws[1], None, dtype)
    cond, uncond = _conds(ref, ns, dtype)
    check_g_step(ours, named, tap, adv_loss, disc, ns, adv_rnd, cond, uncond, student, teacher, off)
    assert all(g.dtype == dtype for g in tap.grads.values())
    with torch.no_grad():
        rnd, adv = adv_rnd
        latents = ns["latents"].to(dtype)
        model_pred, target_pred = adv_loss.lcd.predictions(student, teacher, student, latents, cond, uncond, rnd)
        fake, real = adv_loss.fake_and_real(model_pred, target_pred, latents, rnd, adv, True)
    assert fake.dtype == real.dtype == dtype
    assert rel(fake, ns["fake_gan"].detach().to(dtype)) <= 1e-5 and rel(real, ns["real_gan"].detach().to(dtype)) <= 1e-5
