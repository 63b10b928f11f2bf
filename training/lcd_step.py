"""The latent consistency distillation loss of one batch (LCM paper, Algorithm 1; LCM-LoRA §3).

For data z (latents), condition c, guidance ω ~ U[ω_min, ω_max], solver index i (uniform):

1. ``t_{n+k}, t_n`` from the DDIM grid (:class:`DDIMSolver`), ``z_{t_{n+k}} = α z + σ ε``;
2. student ``f_θ(z_{t_{n+k}}, t_{n+k}) = c_skip z_{t_{n+k}} + c_out x̂0_θ`` (Eq. 4 boundary
   parametrisation; ``lcm_core.boundary.boundary_scalings`` with timestep scaling 10);
3. teacher with guidance, in x0/ε form: ``x̂0 = x̂0(c) + ω (x̂0(c) − x̂0(∅))`` and the same for ε
   (= the paper's ``(1+ω)Ψ(c) − ωΨ(∅)``), then one DDIM step to ``ẑ_{t_n}``;
4. target ``f_{θ⁻}(ẑ_{t_n}, t_n)`` without gradient (θ⁻: EMA weights or the online weights);
5. ``d = Huber`` ``mean(sqrt((a − b)² + c²) − c)`` or L2 ``mean((a − b)²)``.

This matches diffusers' ``train_lcm_distill_lora_sd_wds.py`` training loop (ref. l. 1257-1396).
Departures, all numerically neutral or more precise:

* the conditional and unconditional teacher passes run as one batch of 2B (ref.: two calls);
* the noisy input, the guidance combination, the DDIM step and the boundary algebra stay in
  float32; only the network calls run under autocast (ref.: latents cast to the weight dtype
  before noising);
* randomness (i, ε, ω) is drawn from an explicit generator for the *global* batch
  (:func:`sample_lcd_randomness`), so resumed and multi-process runs draw the same numbers.

**Objective ``tcd``** (``lcd.objective``; Zheng et al. 2024, :mod:`.tcd`): steps 1, 3, 4, 5 are
unchanged; in 2 and 4 the boundary parametrisation is replaced by the trajectory consistency
function ``f(z, t, s)`` (DDIM-form jump to an end timestep s, no c_skip/c_out), with one s per
sample (``LcdRandomness.tcd_s``) shared by student and target — rootonchair's
``tcd/train_tcd_distill_lora_sd_wds.py`` / ``_sdxl.py`` training loop (steps 3, 7, 9).

**Objectives ``pcm`` and ``tscd``** (:mod:`.phased`): the same map as ``tcd``, with s the lower edge
of the solver index's phase (Phased Consistency Model) or uniform in the trajectory segment below
t_n (Hyper-SD's TSCD); s is again ``LcdRandomness.tcd_s``.

``solver_guidance=False`` (``lcd.solver_guidance``; PCM's ``--not_apply_cfg_solver``, its "normal
CFG" recipe): the teacher's DDIM step uses the conditional prediction only (one teacher pass of B
instead of 2B); ω is still drawn (the stream of draws is unchanged) but not used.

``guidance_interval=(lo, hi)`` (``lcd.guidance_interval``; Kynkäänniemi et al. 2024, "Applying Guidance in a
Limited Interval Improves Sample and Distribution Quality in Diffusion Models", arXiv 2404.07724): the teacher's
step is guided only where its start timestep ``t_{n+k}`` lies in ``[lo, hi]`` (ω → 0 elsewhere: the conditional
prediction alone): CFG at the highest noise levels mostly costs diversity, so such a teacher keeps its prompt
fidelity at a lower FD (the paper; measured for the digit teacher in demo/README.md, where its few-step students
still lose some class accuracy). ``None`` (the default) guides every step, as the references do.

Models are callables ``model(x, t, cond) -> raw network output`` (ε, v or x0 per
``prediction_type``); ``cond`` is whatever the model needs (a dict of UNet kwargs here), so the
same loss drives the tiny closed-form tests and the real UNet.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..lcm_core.boundary import consistency_output
from .ddim_solver import DDIMSolver
from .precision import at_least_float32
from .tcd import trajectory_jump

OBJECTIVES = ("lcm", "tcd", "pcm", "tscd")
TRAJECTORY_OBJECTIVES = ("tcd", "pcm", "tscd")  # f(x, t, s) (:func:`.tcd.trajectory_jump`) instead of c_skip/c_out

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass
class LcdRandomness:
    """The random draws of one step: solver index, noise ε and guidance ω (one row per sample)."""

    index: torch.Tensor  # (B,) int64
    noise: torch.Tensor  # (B, C, H, W) float32
    w: torch.Tensor  # (B,) float32
    tcd_s: torch.Tensor | None = None  # (B,) int64: end timestep s (objectives tcd, pcm, tscd; :mod:`.tcd`, :mod:`.phased`)

    def select(self, rows: slice) -> "LcdRandomness":
        tcd_s = None if self.tcd_s is None else self.tcd_s[rows]
        return LcdRandomness(self.index[rows], self.noise[rows], self.w[rows], tcd_s)

    def to(self, device) -> "LcdRandomness":
        tcd_s = None if self.tcd_s is None else self.tcd_s.to(device)
        return LcdRandomness(self.index.to(device), self.noise.to(device), self.w.to(device), tcd_s)


def sample_lcd_randomness(
    shape: tuple[int, ...], num_ddim_timesteps: int, w_min: float, w_max: float, generator: torch.Generator
) -> LcdRandomness:
    """Draw (i, ε, ω) on the CPU for a global batch of latents of ``shape`` (ref. l. 1260, 1276, 1282)."""
    batch = shape[0]
    index = torch.randint(0, num_ddim_timesteps, (batch,), generator=generator, dtype=torch.int64)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    w = (w_max - w_min) * torch.rand((batch,), generator=generator, dtype=torch.float32) + w_min
    return LcdRandomness(index, noise, w)


def concat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditionings along the batch (tensors, dicts of tensors, None)."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.dtype)], dim=0)
    if isinstance(a, dict):
        return {k: concat_cond(v, b[k]) for k, v in a.items()}
    raise TypeError(f"cannot batch conditioning of type {type(a).__name__}")


def distance(a: torch.Tensor, b: torch.Tensor, kind: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    """Pseudo-Huber (Song & Dhariwal 2023; ref. l. 1391-1396) or L2, averaged over all elements."""
    a, b = at_least_float32(a), at_least_float32(b)
    if kind == "huber":
        return torch.mean(torch.sqrt((a - b) ** 2 + huber_c**2) - huber_c)
    if kind == "l2":
        return torch.mean((a - b) ** 2)
    raise ValueError(f"loss must be 'huber' or 'l2', got {kind!r}")


class LcdLoss:
    """Computes the LCD loss of one (micro-)batch; holds the solver and the loss settings."""

    def __init__(
        self,
        solver: DDIMSolver,
        prediction_type: str = "epsilon",
        loss: str = "huber",
        huber_c: float = 0.001,
        timestep_scaling: float = 10.0,
        objective: str = "lcm",
        solver_guidance: bool = True,
        guidance_interval: tuple[int, int] | None = None,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.solver = solver
        self.solver_guidance = solver_guidance
        self.guidance_interval = guidance_interval
        self.prediction_type = prediction_type
        self.loss = loss
        self.huber_c = huber_c
        self.timestep_scaling = timestep_scaling
        self.objective = objective

    def consistency(self, raw: torch.Tensor, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """LCM: ``f(x, t) = c_skip(t) x + c_out(t) x̂0(raw)`` in float32 or float64 (Eq. 4 via ``lcm_core.boundary``;
        ref. l. 1265-1272, 1301). TCD: ``f(x, t, s)``, the DDIM-form jump to ``s`` (:func:`.tcd.trajectory_jump`;
        TCD ref. ``get_predicted_original_sample_tcd``, which supports ε only; x̂0 from v/x0 outputs
        goes through the same ``predicted_x0`` as LCM). PCM/TSCD: the same map (:mod:`.phased`)."""
        x0 = self.solver.predicted_x0(at_least_float32(raw), t, x, self.prediction_type)
        if self.objective in TRAJECTORY_OBJECTIVES:
            if s is None:
                raise ValueError(f"the {self.objective} objective needs the end timesteps s (LcdRandomness.tcd_s)")
            return trajectory_jump(x0, x, t, s, self.solver.alpha_schedule, self.solver.sigma_schedule)
        return consistency_output(x, x0, t, timestep_scaling=self.timestep_scaling)

    @torch.no_grad()
    def teacher_step(self, teacher: Model, noisy, start_t, index, w, cond, uncond, autocast=nullcontext) -> torch.Tensor:
        """Guided teacher estimate at ``t_{n+k}`` and one DDIM step to ``t_n`` (ref. l. 1311-1368); without
        ``solver_guidance`` the conditional estimate alone (PCM ref. ``--not_apply_cfg_solver``)."""
        batch = noisy.shape[0]
        if not self.solver_guidance:
            with autocast():
                raw = teacher(noisy, start_t, cond)
            raw = at_least_float32(raw)
            x0 = self.solver.predicted_x0(raw, start_t, noisy, self.prediction_type)
            eps = self.solver.predicted_eps(raw, start_t, noisy, self.prediction_type)
            return self.solver.ddim_step(x0, eps, index)
        with autocast():
            raw = teacher(torch.cat([noisy, noisy]), torch.cat([start_t, start_t]), concat_cond(cond, uncond))
        raw = at_least_float32(raw)
        both_x = torch.cat([noisy, noisy])
        both_t = torch.cat([start_t, start_t])
        x0 = self.solver.predicted_x0(raw, both_t, both_x, self.prediction_type)
        eps = self.solver.predicted_eps(raw, both_t, both_x, self.prediction_type)
        if self.guidance_interval is not None:  # ω only where t_{n+k} is in the interval (arXiv 2404.07724)
            lo, hi = self.guidance_interval
            w = w.to(start_t.device) * ((start_t >= lo) & (start_t <= hi)).to(torch.float32)
        w = w.reshape(batch, *((1,) * (noisy.ndim - 1)))
        x0_c, x0_u = x0[:batch], x0[batch:]
        eps_c, eps_u = eps[:batch], eps[batch:]
        guided_x0 = x0_c + w * (x0_c - x0_u)
        guided_eps = eps_c + w * (eps_c - eps_u)
        return self.solver.ddim_step(guided_x0, guided_eps, index)

    def __call__(
        self,
        student: Model,
        teacher: Model,
        target: Model,
        latents: torch.Tensor,
        cond: Any,
        uncond: Any,
        rnd: LcdRandomness,
        autocast: Callable[[], Any] = nullcontext,
    ) -> torch.Tensor:
        model_pred, target_pred = self.predictions(student, teacher, target, latents, cond, uncond, rnd, autocast)
        return distance(model_pred, target_pred, self.loss, self.huber_c)

    def predictions(self, student: Model, teacher: Model, target: Model, latents: torch.Tensor, cond: Any, uncond: Any,
                    rnd: LcdRandomness, autocast: Callable[[], Any] = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
        """(student prediction ``f_θ(z_{t_{n+k}})``, target ``f_{θ⁻}(ẑ_{t_n})``), both float32 (float64 for float64
        latents), the target without gradient: the two sides of the distance (the adversarial loss, :mod:`.adversarial`, reads both)."""
        latents = at_least_float32(latents)
        device = latents.device
        rnd = rnd.to(device)
        start_t, end_t = self.solver.start_and_target_timesteps(rnd.index)
        noisy = self.solver.add_noise(latents, rnd.noise, start_t)

        # The teacher pass runs first: with a shared UNet it toggles the LoRA layers off and on,
        # which must not happen between the student's forward and backward.
        x_prev = self.teacher_step(teacher, noisy, start_t, rnd.index, rnd.w, cond, uncond, autocast)

        s = rnd.tcd_s  # TCD/PCM/TSCD: one s per sample, shared by student and target (TCD ref. step 3); None for LCM
        with autocast():
            student_raw = student(noisy, start_t, cond)
        model_pred = self.consistency(student_raw, noisy, start_t, s)

        with torch.no_grad():
            with autocast():
                target_raw = target(x_prev, end_t, cond)
            target_pred = self.consistency(target_raw, x_prev, end_t, s)
        return model_pred, target_pred
