"""Our PCM loss (``lcd.objective: pcm``) and gradients equal the Phased Consistency Model's LoRA trainer
step, executed from its own source: G-U-N/Phased-Consistency-Model
``code/text_to_image_sd15/train_pcm_lora_sd15.py`` (``$PCM_REFERENCE_SCRIPT``; never committed; e.g.
``git -C PCM_CHECKOUT show HEAD:code/text_to_image_sd15/train_pcm_lora_sd15.py`` written to a file). ``benchmarks/trainer/reference_step.py`` (kind ``pcm_sd``) runs the script's training
step block on the same tiny SD-like teacher as the LCM/TCD parity tests.

What is compared:

* the phase edges: the reference's ``DDIMSolver.ddim_style_multiphase_pred`` returns the end timestep
  of every solver index for 1, 2, 4, 8, 50 phases; ours is :func:`~lcm_lora.training.phased.pcm_end_timesteps`;
  its jump (``sqrt(ᾱ_s)·x̂0 + sqrt(1 − ᾱ_s)·ε``) equals our map for an ε-prediction output, and its target
  boundary scaling (c_skip = 1 exactly where the index is a phase start) is where our map sees s = t_n and
  returns x bit for bit;
* one training step, huber and l2, with and without solver guidance (``--not_apply_cfg_solver``): the loss
  (rel 1e-5) and every LoRA gradient (rel 1e-4) on the reference's own draws (index, noise, ω, latents,
  end timesteps).

Departure (not exercised by an ε-prediction teacher): the reference jumps with the *raw* network output
as ε, which is wrong for v-prediction; we use ε̂ from x̂0 (:mod:`lcm_lora.training.phased`).
The reference's teacher autocast is hard-coded ``torch.autocast("cuda")``: a no-op on the CPU.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from reference_step_support import (assert_exact_parity, first_draw_with_both_targets, our_lcd_loss, reference_module,
                                    tiny_reference_pair)

VAR = "PCM_REFERENCE_SCRIPT"
needs_pcm = pytest.mark.skipif(not os.environ.get(VAR), reason=f"{VAR} (G-U-N/Phased-Consistency-Model "
                               "code/text_to_image_sd15/train_pcm_lora_sd15.py) not set: PCM parity NOT checked")

CAPTIONS = ["a red circle", "a blue square", "a green ring", "a white cross"]
RESOLUTION = 16


def _schedule():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@needs_pcm
@pytest.mark.parametrize("phases", [1, 2, 4, 8, 50])
def test_phase_edges_and_jump_match_the_reference_multiphase_pred(phases):
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.phased import pcm_end_timesteps, pcm_phase_starts
    from lcm_lora.training.tcd import trajectory_jump

    ns, _ = reference_module().load_reference(kind="pcm_sd")
    sched = _schedule()
    ref_solver = ns["DDIMSolver"](sched.alphas_cumprod.numpy(), timesteps=1000, ddim_timesteps=50)
    solver = DDIMSolver(sched.alphas_cumprod, 50)
    index = torch.arange(50)
    start, t_n = solver.start_and_target_timesteps(index)
    gen = torch.Generator().manual_seed(phases)
    x = torch.randn(50, 4, 4, 4, generator=gen)
    eps = torch.randn(50, 4, 4, 4, generator=gen)
    x0 = solver.predicted_x0(eps, start, x, "epsilon")
    ref_jump, ref_s = ref_solver.ddim_style_multiphase_pred(x0, eps, index, phases)
    ours_s = pcm_end_timesteps(index, solver, phases)
    assert torch.equal(ours_s, ref_s)
    ours_jump = trajectory_jump(x0, x, start, ours_s, solver.alpha_schedule, solver.sigma_schedule)
    torch.testing.assert_close(ours_jump, ref_jump.float(), rtol=1e-4, atol=1e-4)

    # target boundary: the reference's c_skip is 1 exactly at the phase starts, where s = t_n; our map
    # returns its input there bit for bit (and moves it everywhere else)
    c_skip, c_out = ns["scalings_for_boundary_conditions_target"](index, pcm_phase_starts(50, phases))
    at_start = c_skip.bool()
    assert torch.equal(at_start, ours_s == t_n) and torch.equal(c_out, 1 - c_skip)
    target = trajectory_jump(x0, x, t_n, ours_s, solver.alpha_schedule, solver.sigma_schedule)
    assert torch.equal(target[at_start], x[at_start])
    assert bool((target[~at_start] != x[~at_start]).any(dim=(1, 2, 3)).all())
    # the online (student) scalings are c_skip 0, c_out 1 everywhere: the plain jump
    c_skip_on, c_out_on = ns["scalings_for_boundary_conditions_online"](index, pcm_phase_starts(50, phases))
    assert not c_skip_on.any() and bool((c_out_on == 1).all())


@needs_pcm
@pytest.mark.parametrize("loss_type,solver_guidance", [("huber", True), ("l2", True), ("huber", False)])
@pytest.mark.parametrize("float64", [False, True], ids=["as-published", "float64"])
def test_pcm_loss_and_gradients_match_the_sd15_reference_step(tmp_path, loss_type, solver_guidance, float64):
    """float32 (the script as published) against our float32 step; float64: both steps in float64
    (``assert_exact_parity``), where float32 rounding cannot hide a difference."""
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.phased import pcm_end_timesteps
    ref, ours, named, tap, images = tiny_reference_pair(tmp_path, CAPTIONS, RESOLUTION, loss_type=loss_type, kind="pcm_sd",
                                                        phases=4, solver_guidance=solver_guidance, float64=float64)
    solver = DDIMSolver(ours.alphas_cumprod, 50)

    def draw(seed):
        torch.manual_seed(seed)  # the reference draws latents, noise, index and ω from torch's global generator
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")  # its torch.autocast("cuda")
            return ref.step(images, CAPTIONS)

    ns = first_draw_with_both_targets(draw, solver)
    index, s = ns["index"].cpu(), ns["end_timesteps"].cpu()
    ref_loss = float(ns["loss"].detach())
    ours_s = pcm_end_timesteps(index, solver, 4)
    assert torch.equal(ours_s, s)  # our rule gives the reference's s
    if float64:
        cond = {"encoder_hidden_states": ns["prompt_embeds"]}
        uncond = {"encoder_hidden_states": ref.ns["uncond_prompt_embeds"]}
        assert_exact_parity(ours, ns, cond, uncond, loss_type, named, tap, objective="pcm", solver_guidance=solver_guidance,
                            clip=1.0)  # the reference clips at max_grad_norm 1
        return

    cond = {"encoder_hidden_states": ns["prompt_embeds"].float()}
    uncond = {"encoder_hidden_states": ref.ns["uncond_prompt_embeds"].float()}
    loss = our_lcd_loss(ours, {**ns, "end_timesteps": ours_s}, cond, uncond, loss_type, objective="pcm",
                        solver_guidance=solver_guidance)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(named.values()), 1.0)  # the reference clips at max_grad_norm 1
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    for name, p in named.items():
        err = float((p.grad - tap.grads[name]).norm() / tap.grads[name].norm().clamp_min(1e-12))
        assert err <= 1e-4, (name, err)
