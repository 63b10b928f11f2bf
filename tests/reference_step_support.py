"""Shared by the reference-step parity tests: load ``benchmarks/trainer/reference_step.py`` (not a
package module) and stand in for the reference's optimizer to capture its gradients."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_module():
    spec = importlib.util.spec_from_file_location("lcm_reference_step", ROOT / "benchmarks" / "trainer" / "reference_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GradTap:
    """Stands in for the reference's optimizer: records the LoRA gradients it applies at ``step()``
    (after the reference's own clipping, if any)."""

    def __init__(self, optimizer, params, apply: bool = True):
        self.optimizer, self.params, self.grads, self.apply = optimizer, params, None, apply

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.params.items()}
        if self.apply:  # apply=False: the weights stay as they are (a step may be repeated on other draws)
            self.optimizer.step()

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)


def share_random_lora(ours_lora: dict, ref_lora: dict, generator) -> None:
    """Give both sides the same non-trivial LoRA (B ≠ 0) so that the gradients are informative."""
    import torch

    with torch.no_grad():
        for name, p in ours_lora.items():
            value = torch.randn(p.shape, generator=generator) * (0.05 if "lora_B" in name else 0.3)
            p.copy_(value)
            ref_lora[name].copy_(value)


def our_lcd_loss(ours, ns: dict, cond: dict, uncond: dict, loss_type: str, objective: str = "lcm",
                 solver_guidance: bool = True, dtype=None):
    """Our LCD loss on the reference step's own draws (``ns``: its index, noise, ω and latents; for
    ``objective`` tcd/pcm/tscd also its end timesteps s), with the stop-gradient online target and the
    adapters-disabled teacher, as the LoRA reference scripts.

    ``dtype`` float64: the same step with our UNet (moved in place), the draws, the conditions and the schedule in
    float64 — the exact value that both float32 computations (ours and the reference's) round."""
    import torch

    from lcm_lora.training.ddim_solver import DDIMSolver
    from lcm_lora.training.lcd_step import LcdLoss, LcdRandomness

    dtype = dtype or torch.float32

    def cast(x):
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        return x.to(dtype) if torch.is_tensor(x) and torch.is_floating_point(x) else x

    lcd = LcdLoss(DDIMSolver(ours.alphas_cumprod.to(dtype), 50), "epsilon", loss_type, 0.001, 10.0, objective, solver_guidance)
    tcd_s = ns["end_timesteps"].cpu() if objective != "lcm" else None
    rnd = LcdRandomness(ns["index"].cpu(), ns["noise"].to(dtype).cpu(), ns["w"].reshape(-1).to(dtype).cpu(), tcd_s)
    student, teacher = student_and_teacher(ours.unet.to(dtype).train())
    return lcd(student, teacher, student, ns["latents"].to(dtype), cast(cond), cast(uncond), rnd)


def student_and_teacher(unet):
    """The LoRA student and the frozen teacher (the same UNet with its adapters disabled), as the trainer calls them."""
    from lcm_lora.training.student import adapters_disabled
    from lcm_lora.training.teacher import unet_forward

    def student(x, t, c):
        return unet_forward(unet, x, t, c)

    def teacher(x, t, c):
        with adapters_disabled(unet):
            return unet_forward(unet, x, t, c)

    return student, teacher


def tiny_reference_pair(tmp_path, captions: list, resolution: int, **reference_kwargs):
    """The reference trainer (``benchmarks/trainer/reference_step.py``) on a tiny SD-like teacher, paired with
    ours by :func:`pair_with_reference`. Returns ``(ref, ours, named_lora, tap, images)``."""
    import torch

    from lcm_lora.training.tiny_models import build_tiny_teacher

    torch.set_num_threads(1)
    teacher_dir = build_tiny_teacher(tmp_path / "teacher", block_out_channels=(16, 32))
    ref = reference_module().ReferenceTrainer(teacher_dir, rank=4, batch_size=len(captions), device="cpu",
                                              **reference_kwargs)
    return (ref, *pair_with_reference(ref, teacher_dir, len(captions), resolution))


def pair_with_reference(ref, teacher_dir, batch: int, resolution: int):
    """Our teacher from ``teacher_dir`` with the same random non-trivial rank-4 LoRA as the reference's,
    the reference's optimizer replaced by a :class:`GradTap` that leaves the weights unchanged (a step
    may be redrawn), and a batch of images. Returns ``(ours, named_lora, tap, images)``."""
    import torch

    from lcm_lora.training.student import add_lora
    from lcm_lora.training.teacher import load_teacher_folder

    ref_unet = ref.accelerator.unwrap_model(ref.ns["unet"])
    ref_lora = {n.replace("base_model.model.", "", 1): p for n, p in ref_unet.named_parameters() if "lora_" in n}
    ours = load_teacher_folder(Path(teacher_dir))
    named = dict(add_lora(ours.unet, 4, 4, 0.0, None))
    assert named.keys() == ref_lora.keys()
    gen = torch.Generator().manual_seed(0)
    share_random_lora(named, ref_lora, gen)
    tap = GradTap(ref.ns["optimizer"], ref_lora, apply=False)
    ref.ns["optimizer"] = tap
    images = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1
    return ours, named, tap, images


def first_draw_with_both_targets(draw, solver, tries: int = 40) -> dict:
    """``draw(seed)`` (the reference step's namespace) for the first seed whose batch has both kinds of PCM target:
    a phase start (the end point s is t_n itself, the target is x_prev) and a real jump (s < t_n)."""
    import pytest

    for seed in range(tries):
        ns = draw(seed)
        _, t_n = solver.start_and_target_timesteps(ns["index"].cpu())
        s = ns["end_timesteps"].cpu()
        if bool((s == t_n).any()) and bool((s < t_n).any()):
            return ns
    pytest.fail(f"no draw of {tries} had both a phase-start index and another one")


def assert_exact_parity(ours, ns: dict, cond: dict, uncond: dict, loss_type: str, named: dict, tap, objective: str = "lcm",
                        solver_guidance: bool = True, clip: float | None = None) -> float:
    """``ns``: the reference's step run in float64 (``float64=True`` in ``benchmarks/trainer/reference_step.py``: the
    exact value its float32 run rounds). Our step in float64 on the same draws must give its loss within rel 1e-5 and
    every LoRA gradient (clipped at ``clip`` as the script does) within rel 1e-4 — the issue tolerances, here free of
    float32 rounding, which the pseudo-Huber loss (c = 0.001) amplifies to ≈ 1e-4 in some gradients. ``cond`` /
    ``uncond``: built from the run's own (float64) embeddings. Returns the worst relative gradient error."""
    import pytest
    import torch

    assert ns["loss"].dtype == torch.float64 and all(g.dtype == torch.float64 for g in tap.grads.values())
    for p in named.values():
        p.grad = None
    loss = our_lcd_loss(ours, ns, cond, uncond, loss_type, objective=objective, solver_guidance=solver_guidance,
                        dtype=torch.float64)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(named.values()), clip)
    ours.unet.float()
    assert float(loss.detach()) == pytest.approx(float(ns["loss"].detach()), rel=1e-5)
    worst = max((float((p.grad - tap.grads[n]).norm() / tap.grads[n].norm().clamp_min(1e-30)), n) for n, p in named.items())
    assert worst[0] <= 1e-4, worst
    return worst[0]
