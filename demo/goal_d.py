"""Goal (d) of issue 13 on more samples than the main rows: the acceleration rows pooled with an extra plan's.

Goal (d) asks an adapter fused into a fine-tune it never saw, at 4 steps, for an FD to the fine-tune's own DDIM 25
samples below the fine-tune's DDIM 8. The fine-tune's DDIM 8 is near the FD floor of a perfect match, so the goal
is decided by gaps of a few FD points, and at the full preset's 300 samples the FD s.e. is ≈ 9: the TCD adapter's
PASS there (19.8 vs 20.2) is not a real one, and at 1000 samples every adapter misses on every noise seed
(BENCHMARKS.md, "Goal (a) at the edge of measurement", goal (d) on six seeds). With ``DemoConfig.goal_d_samples`` =
N the rows that decide it are also measured on N samples, as goal (a)'s are (:mod:`.goal_a`):

* the reference — the fine-tune's DDIM 25 with CFG on an independent noise draw — gets N − n_samples more samples
  from a plan of its own (seed + :data:`REFERENCE_SEED_OFFSET`);
* the fine-tune's DDIM 8 and each adapter fused into the fine-tune get N − n_samples more from goal (a)'s extra plan
  (seed + ``goal_a.SEED_OFFSET``: the main plan's continuation), drawn with the main rows' samplers
  (:func:`.sample_fns.sample_fns`);
* each row's main images and extra images are measured as one set against the pooled reference.

The floor row (the reference's sampler on the rows' noise) is not pooled: it would cost as much as the reference
(≈ 35 k more UNet evaluations) and only tells how far a perfect match sits from the reference at this sample count
(5.2 at 1000 samples against the DDIM 8's 6.4, BENCHMARKS.md).

The main rows' goal (d) claims (300 samples) stay as they are; these claims are added beside them.
"""
from __future__ import annotations

import torch

REFERENCE_SEED_OFFSET = 6  # the extra reference plan: cfg.seed + 6 (main reference + 3, goal (a)'s extra plan + 5)
BAR_STEPS = 8  # goal (d)'s bar: the fine-tune's own DDIM at this many steps


def check_goal_d_config(cfg) -> None:
    """With ``goal_d_samples`` on, the fine-tune's DDIM 8 row the goal is judged against must exist: a
    ``ConfigError`` naming the key otherwise (called before any work, as :func:`.goal_a.check_goal_a_config`)."""
    from ..lcm_core.errors import ConfigError

    if int(cfg.goal_d_samples) > 0 and BAR_STEPS not in cfg.accel_ddim_steps:
        raise ConfigError("accel_ddim_steps", f"must contain {BAR_STEPS} while goal_d_samples is {cfg.goal_d_samples} "
                                              "(the pooled goal-(d) study extends that row); or set goal_d_samples=0")


def goal_d_study(cfg, teacher, ft_unet, main: dict, students: dict, inst, progress: bool = False) -> dict | None:
    """The pooled rows (module docstring). ``main``: the main acceleration rows' samples and labels by key —
    ``"reference"``, ``"ddim8"`` and each adapter name (other keys are ignored) — as ``(label, model, sampler, steps, images,
    labels)``; ``students``: per adapter name, ``(fine-tune + adapter UNet, sampler kind, phased recipe or None)``.
    Returns ``{"n", "n_main", "extra_seed", "reference_seed", "reference_steps", "steps", "rows"}`` or None (off)."""
    from tqdm.auto import tqdm

    from .evaluate import SamplePlan
    from .fd_to_reference import fd_to_reference_row
    from .goal_a import SEED_OFFSET, pooled_images
    from .sample_fns import sample_fns

    n_main = len(main["reference"][5])
    n_extra = int(cfg.goal_d_samples) - n_main
    if n_extra <= 0:
        return None
    extra_plan = SamplePlan.make(n_extra, cfg.resolution, cfg.seed + SEED_OFFSET)
    ref_plan = SamplePlan.make(n_extra, cfg.resolution, cfg.seed + REFERENCE_SEED_OFFSET)
    ref_teacher_fn = sample_fns(cfg, teacher, ref_plan)[1]
    _, teacher_fn, lcm_fn, tcd_fn, pcm_fn = sample_fns(cfg, teacher, extra_plan)
    extra_fns = {"reference": ref_teacher_fn(ft_unet, "ddim"), "ddim8": teacher_fn(ft_unet, "ddim")}
    for name, (unet, kind, recipe) in students.items():
        extra_fns[name] = (lcm_fn(unet) if kind == "lcm" else tcd_fn(unet, cfg.tcd_gamma) if kind == "tcd"
                           else pcm_fn(unet, recipe))
    rows, ref_stats = [], None
    keys = [k for k in ("reference", "ddim8", *students) if k in main]
    with tqdm(total=len(keys), desc=f"goal (d) on {cfg.goal_d_samples} samples", disable=not progress) as bar:
        for key in keys:
            label, model, sampler, steps, images, labels = main[key]
            extra_labels = ref_plan.labels if key == "reference" else extra_plan.labels
            images, nfe = pooled_images(images, extra_fns[key], n_extra, steps, cfg.batch_size)
            labels = torch.cat([labels, extra_labels])
            row, ref_stats = fd_to_reference_row(inst, images, labels, ref_stats, {
                "label": label, "model": model, "sampler": sampler, "steps": int(steps), "nfe": int(nfe),
                "n": len(images), "n_main": n_main})
            rows.append(row)
            bar.update(1)
    return {"n": int(cfg.goal_d_samples), "n_main": n_main, "extra_seed": extra_plan.seed, "reference_seed": ref_plan.seed,
            "reference_steps": cfg.accel_reference_steps, "steps": cfg.accel_steps, "rows": rows}
