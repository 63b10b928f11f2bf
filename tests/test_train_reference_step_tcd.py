"""Our TCD loss (``lcd.objective: tcd``) and gradients equal the public TCD-LoRA trainer's step, executed
from its own source: rootonchair/consistency_models_distill ``tcd/train_tcd_distill_lora_sd_wds.py``
(``$TCD_REFERENCE_SCRIPT``) and ``tcd/train_tcd_distill_lora_sdxl.py`` (``$TCD_REFERENCE_SCRIPT_SDXL``);
never committed. ``benchmarks/trainer/reference_step.py`` executes the script's training-step block
(kinds ``tcd_sd`` / ``tcd_sdxl``) on the same tiny SD-like / SDXL-like teachers as the LCM parity tests.

What is compared: the loss (rel 1e-5) and every LoRA gradient (rel 1e-4) on the reference's own draws
(solver index, noise, ω, latents and its end timesteps s); the reference's s draw itself
(``end_index = randint(0, index + 1)``, ``end_timesteps = max(τ[end_index] − k, 0)``) against our
:func:`~lcm_lora.training.tcd.sample_end_timesteps` (same numbers from the same seed).

A reference bug, repaired inside the harness only: the published SDXL script calls
``get_predicted_original_sample_tcd`` for the *target* without ``end_timesteps`` (six arguments for
seven), so it raises ``TypeError`` on its first step. ``reference_step.py`` inserts the missing
argument (as in the student call and in the four sibling TCD scripts) and records the repair in
``ns["reference_repairs"]``; the SDXL test asserts that exactly this one repair was made, so a fixed
upstream script makes it fail loudly rather than silently compare something else.

Reference quirks, matched by configuration only here: the SDXL script's gradient clipping is a no-op
(``params_to_optimize`` is an exhausted ``filter``; see ``test_train_reference_step_sdxl.py``), so the
SDXL gradients are compared unclipped (our ``optim.max_grad_norm: 0``). The SD script's teacher
autocast is turned off so both sides run in float32, as in the LCM parity test.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from reference_step_support import GradTap, assert_exact_parity, our_lcd_loss, reference_module, share_random_lora

SD_VAR, SDXL_VAR = "TCD_REFERENCE_SCRIPT", "TCD_REFERENCE_SCRIPT_SDXL"
needs_sd = pytest.mark.skipif(not os.environ.get(SD_VAR), reason=f"{SD_VAR} (rootonchair tcd/train_tcd_distill_lora_sd_wds.py) not set")
needs_sdxl = pytest.mark.skipif(not os.environ.get(SDXL_VAR),
                                reason=f"{SDXL_VAR} (rootonchair tcd/train_tcd_distill_lora_sdxl.py) not set")

CAPTIONS = ["a red circle", "a blue square", "a green ring", "a white cross"]
RESOLUTION = 16
ORIGINAL_SIZES = [(16, 16), (24, 20), (40, 16), (16, 32)]
CROP_TOP_LEFTS = [(0, 0), (4, 2), (12, 0), (0, 8)]


def _check_s_draw(ns, solver) -> None:
    """The reference's s comes from its own index by the rule we implement, and is informative here
    (some s < t_n, so the target is not merely the teacher's DDIM point)."""
    from lcm_lora.training.tcd import end_timesteps_of_index

    index, end_index, s = ns["index"].cpu(), ns["end_index"].cpu(), ns["end_timesteps"].cpu()
    assert bool((end_index >= 0).all() and (end_index <= index).all())
    assert torch.equal(end_timesteps_of_index(end_index, solver), s)
    _, t_n = solver.start_and_target_timesteps(index)
    assert bool((s <= t_n).all()) and bool((s < t_n).any()), (s, t_n)


def _assert_parity(ours, ns, cond, uncond, loss_type, named, tap, clip: float | None = None):
    """``ns``: one run of the reference's step. The exact step is ours in float64 on the run's draws.

    * A **float64 run** of the reference (``float64=True``: the script's own block with its models, schedules and
      ``.float()`` casts in float64) must give the exact step's loss within rel 1e-5 and every LoRA gradient within
      rel 1e-4 — issue 13's tolerances for the parity of the two steps (``assert_exact_parity``; measured ≈ 1e-14).
    * A **float32 run** (the script as published): its loss and our float32 loss within rel 1e-5 of the exact one;
      with the L2 loss also every LoRA gradient of both within rel 1e-4 of the exact ones.

    Why the pseudo-Huber float32 gradients are not held to 1e-4: with c = 0.001 the gradient divides by √(d² + c²)
    for prediction differences d of the order of c, so float32 rounding of d (≈ 1e-7) moves some LoRA gradients by
    ≈ 1e-4 in any float32 computation of this step, by how much depending on the draw and the CPU's kernels. SDXL
    case, worst gradient vs the exact step (2026-12-07, 2-core AMD EPYC): AVX2 kernels ours 4.7e-5, the reference's
    1.34e-4; SSE kernels (``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2``)
    ours 2.2e-4, the reference's 1.39e-4; ours on the float64 run's draws 4.2e-4 (L2: 1.2e-5 to 2.4e-5 throughout).
    The float64 run compares the two steps where arithmetic cannot hide a difference. Returns the worst relative
    gradient errors."""
    if ns["loss"].dtype == torch.float64:
        return {"reference (float64)": assert_exact_parity(ours, ns, cond, uncond, loss_type, named, tap, objective="tcd",
                                                           clip=clip)}
    grads = {}
    for dtype in (torch.float32, torch.float64):
        for p in named.values():
            p.grad = None
        loss = our_lcd_loss(ours, ns, cond, uncond, loss_type, objective="tcd", dtype=dtype)
        loss.backward()
        if clip is not None:  # the SD script's clipping works (the SDXL one clips nothing)
            torch.nn.utils.clip_grad_norm_(list(named.values()), clip)
        grads[dtype] = (float(loss.detach()), {n: p.grad.detach().double().clone() for n, p in named.items()})
    ours.unet.float()
    exact_loss, exact = grads[torch.float64]

    def errors(got):
        return {n: float((g.double() - exact[n]).norm() / exact[n].norm().clamp_min(1e-30)) for n, g in got.items()}

    ref_loss, ref_err = float(ns["loss"].detach()), errors(tap.grads)
    assert ref_loss == pytest.approx(exact_loss, rel=1e-5), "reference"
    our_loss, our_err = grads[torch.float32][0], errors(grads[torch.float32][1])
    assert our_loss == pytest.approx(exact_loss, rel=1e-5), "ours"
    if loss_type == "l2":
        for who, err in (("ours", our_err), ("reference", ref_err)):
            worst = max((e, n) for n, e in err.items())
            assert worst[0] <= 1e-4, (who, *worst)
    return {"ours (float32)": max(our_err.values()), "reference (float32)": max(ref_err.values())}


def _without_float64_casts(repairs: list[str]) -> list[str]:
    """The harness's repairs other than the float64 run's casts, which must be the last and have touched some."""
    assert repairs and re.fullmatch(r"float64 run: \.float\(\) -> \.double\(\) in [1-9][0-9]* place\(s\)", repairs[-1]), repairs
    return repairs[:-1]


def _same_lora_and_images(ours, ref, ref_lora, batch):
    """Rank-4 LoRA on our UNet with the reference's random LoRA values, a gradient tap on the reference's
    optimizer, and one batch of images in [-1, 1] (both drawn from the same seeded generator)."""
    from lcm_lora.training.student import add_lora

    named = dict(add_lora(ours.unet, 4, 4, 0.0, None))
    assert named.keys() == ref_lora.keys()
    gen = torch.Generator().manual_seed(0)
    share_random_lora(named, ref_lora, gen)
    tap = GradTap(ref.ns["optimizer"], ref_lora)
    ref.ns["optimizer"] = tap
    images = torch.rand(batch, 3, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1
    return named, tap, images

@needs_sd
def test_s_draw_matches_the_reference_randint():
    """Our uniform s draw gives the reference's numbers: its ``randint`` helper (compiled from its source)
    on torch's global generator vs ours on a generator with the same seed."""
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.tcd import end_timesteps_of_index, sample_end_timesteps

    ns, _ = reference_module().load_reference(kind="tcd_sd")
    solver = DDIMSolver(torch.linspace(0.999, 0.005, 1000), 50)
    index = torch.arange(50).repeat(20)
    torch.manual_seed(123)
    ref_end_index = ns["randint"](0, index + 1, (index.shape[0],)).long()
    ours = sample_end_timesteps(index, solver, "uniform", torch.Generator().manual_seed(123))
    assert torch.equal(ours, end_timesteps_of_index(ref_end_index, solver))
    assert len(set(ours.tolist())) > 40  # the draw covers the grid, not one point


@needs_sd
@pytest.mark.parametrize("loss_type", ["huber", "l2"])
def test_tcd_loss_and_gradients_match_the_sd_reference_step(tmp_path, loss_type):
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.teacher import load_teacher_folder
    from lcm_lora.training.tiny_models import build_tiny_teacher

    torch.set_num_threads(1)
    ref_mod = reference_module()
    teacher_dir = build_tiny_teacher(tmp_path / "teacher", block_out_channels=(16, 32))
    batch = len(CAPTIONS)
    for float64 in (True, False):  # the exact parity, then the script as published (see _assert_parity)
        ref = ref_mod.ReferenceTrainer(teacher_dir, rank=4, batch_size=batch, loss_type=loss_type, teacher_autocast=False,
                                       device="cpu", kind="tcd_sd", float64=float64)
        ref_unet = ref.accelerator.unwrap_model(ref.ns["unet"])
        ref_lora = {n.replace("base_model.model.", "", 1): p for n, p in ref_unet.named_parameters() if "lora_" in n}

        ours = load_teacher_folder(Path(teacher_dir))
        named, tap, images = _same_lora_and_images(ours, ref, ref_lora, batch)
        torch.manual_seed(1)  # the reference draws index, s, noise and ω from torch's global generator
        ns = ref.step(images, CAPTIONS)
        repairs = _without_float64_casts(ns["reference_repairs"]) if float64 else ns["reference_repairs"]
        assert repairs == []  # otherwise the SD script runs exactly as published
        _check_s_draw(ns, DDIMSolver(ours.alphas_cumprod, 50))

        cond = {"encoder_hidden_states": ns["prompt_embeds"]}
        uncond = {"encoder_hidden_states": ref.ns["uncond_prompt_embeds"]}
        _assert_parity(ours, ns, cond, uncond, loss_type, named, tap, clip=1.0)  # the SD script's clipping works


@needs_sdxl
@pytest.mark.parametrize("loss_type", ["huber", "l2"])
def test_tcd_loss_and_gradients_match_the_sdxl_reference_step(tmp_path, loss_type):
    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.teacher import build_cond, load_teacher_folder
    from lcm_lora.training.tiny_models import build_tiny_teacher

    torch.set_num_threads(1)
    ref_mod = reference_module()
    teacher_dir = build_tiny_teacher(tmp_path / "teacher", variant="sdxl", image_size=RESOLUTION, block_out_channels=(16, 32))
    batch = len(CAPTIONS)
    for float64 in (True, False):  # the exact parity, then the script as published (see _assert_parity)
        ref = ref_mod.ReferenceTrainerSDXL(teacher_dir, rank=4, resolution=RESOLUTION, loss_type=loss_type, device="cpu",
                                           max_grad_norm=0.01, kind="tcd_sdxl", float64=float64)
        ref_unet = ref.accelerator.unwrap_model(ref.ns["unet"])
        ref_lora = {n: p for n, p in ref_unet.named_parameters() if "lora_" in n}

        ours = load_teacher_folder(Path(teacher_dir))
        assert ours.uses_pooled and len(ours.text_encoders) == 2
        named, tap, images = _same_lora_and_images(ours, ref, ref_lora, batch)
        torch.manual_seed(1)
        ns = ref.step(images, CAPTIONS, ORIGINAL_SIZES, CROP_TOP_LEFTS)
        assert list(ns["params_to_optimize"]) == []  # the reference's clip received an exhausted iterator
        repairs = _without_float64_casts(ns["reference_repairs"]) if float64 else ns["reference_repairs"]
        assert repairs == ["get_predicted_original_sample_tcd: end_timesteps inserted in 1 call(s)"]
        _check_s_draw(ns, DDIMSolver(ours.alphas_cumprod, 50))

        text = ours.encode_text(CAPTIONS)  # our text encoding is the reference's
        torch.testing.assert_close(text["hidden"], ns["prompt_embeds"].float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(text["pooled"], ns["encoded_text"]["text_embeds"].float(), rtol=1e-6, atol=1e-6)
        time_ids = torch.tensor([[*o, *c, RESOLUTION, RESOLUTION] for o, c in zip(ORIGINAL_SIZES, CROP_TOP_LEFTS)],
                                dtype=ns["prompt_embeds"].dtype)
        torch.testing.assert_close(time_ids, ns["encoded_text"]["time_ids"], rtol=0, atol=0)
        # the step itself on the reference's own text, so that the exact step has the run's exact inputs
        cond = build_cond({"hidden": ns["prompt_embeds"], "pooled": ns["encoded_text"]["text_embeds"]}, time_ids)
        uncond_one = ours.uncond_text("auto")
        assert all(bool((v == 0).all()) for v in uncond_one.values())  # SDXL's empty prompt is zeros, as the script's
        uncond = build_cond({k: v.expand(batch, *v.shape[1:]).to(time_ids.dtype) for k, v in uncond_one.items()}, time_ids)

        _assert_parity(ours, ns, cond, uncond, loss_type, named, tap)  # unclipped: the reference's clip is a no-op
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in tap.grads.values()]))
        assert total > 10 * ref.ns["args"].max_grad_norm
