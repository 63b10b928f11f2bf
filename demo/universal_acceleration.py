"""Issue 13 goal (d), the TCD paper's "universal acceleration": each adapter fused into a full fine-tune it never
saw, against the fine-tune's own DDIM."""
from __future__ import annotations

from .config import DemoConfig
from .fused_unet import unet_with
from .sampler_seeds import sampler_seed
from .teacher_samplers import steps_text


def universal_acceleration(cfg: DemoConfig, teacher, ft_unet, adapters: dict, inst, progress: bool) -> dict:
    """The TCD paper's "universal acceleration" test on a full fine-tune the adapters never saw.

    Reference: the fine-tune's own DDIM at ``accel_reference_steps`` with CFG, sampled from an
    *independent* noise draw (seed + 3), so every configuration, the fine-tune's own 25-step DDIM
    included, pays the same finite-sample FD bias: that row ("floor") is what a sampler identical
    to the reference reaches. Rows: the fine-tune's DDIM at ``accel_ddim_steps`` (CFG), each
    adapter fused into the fine-tune at ``accel_steps`` (its own sampler, no CFG), and each adapter
    on the *base* teacher (no fine-tune: how far the style moves the samples). FD in the digit
    classifier's features between the row's samples and the reference samples; s.e. by bootstrap.
    With ``cfg.goal_d_samples`` above ``n_samples`` the rows that decide goal (d) are also measured on that many
    samples (``"pooled"``, :func:`.goal_d.goal_d_study`).
    """
    from tqdm.auto import tqdm

    from .evaluate import SamplePlan
    from .fd_to_reference import fd_to_reference_row
    from .goal_d import BAR_STEPS, goal_d_study
    from .student_sampling import phased_recipe, sample_lcm_student, sample_phased_student, sample_tcd_student
    from .teacher_samplers import MODEL_LABELS, sample_teacher

    g, sc, n = cfg.guidance_scale, teacher.scheduler_config, cfg.n_samples
    ref_plan = SamplePlan.make(n, cfg.resolution, cfg.seed + 3)
    plan = SamplePlan.make(n, cfg.resolution, cfg.seed)
    rc, ru = teacher.embed(ref_plan.labels)
    cond, uncond = teacher.embed(plan.labels)
    samplers = {"lcm": lambda u, k: sample_lcm_student(u, cond, plan.noise, k, seed=sampler_seed(cfg.seed)),
                "tcd": lambda u, k: sample_tcd_student(u, cond, plan.noise, k, gamma=cfg.tcd_gamma,
                                                       seed=sampler_seed(cfg.seed))}
    if "pcm" in adapters:  # the PCM adapter on its own phase edges (its recipe), fused into the fine-tune or not
        recipe = phased_recipe(adapters["pcm"][0])
        samplers["pcm"] = lambda u, k: sample_phased_student(u, cond, plan.noise, k, recipe=recipe,
                                                             seed=sampler_seed(cfg.seed), uncond=uncond)
    fused = {name: unet_with(ft_unet, [(adapter, 1.0)]) for name, (adapter, _) in adapters.items()}
    # (the row's key in the pooled goal-(d) study, demo/goal_d.py, or None; label, model, sampler, steps, sample)
    jobs = [("reference", "fine-tune, DDIM (reference, independent noise)", "finetune", "ddim", cfg.accel_reference_steps,
             lambda: sample_teacher(ft_unet, rc, ru, ref_plan.noise, "ddim", cfg.accel_reference_steps, sc, g))]
    jobs.append((None, f"fine-tune, DDIM {cfg.accel_reference_steps} steps (floor: same sampler, other noise)",
                 "finetune", "ddim", cfg.accel_reference_steps,
                 lambda: sample_teacher(ft_unet, cond, uncond, plan.noise, "ddim", cfg.accel_reference_steps, sc, g)))
    for k in cfg.accel_ddim_steps:
        jobs.append(("ddim8" if k == BAR_STEPS else None, f"fine-tune, DDIM {steps_text(k)}", "finetune", "ddim", k,
                     lambda k=k: sample_teacher(ft_unet, cond, uncond, plan.noise, "ddim", k, sc, g)))
    for name, (adapter, sampler) in adapters.items():
        who = MODEL_LABELS.get(name, name)
        jobs.append((name, f"fine-tune + {who}, {sampler.upper()} {steps_text(cfg.accel_steps)}", name, sampler,
                     cfg.accel_steps, lambda n=name, s=sampler: samplers[s](fused[n], cfg.accel_steps)))
        jobs.append((None, f"base teacher + {who} (no fine-tune), {sampler.upper()} {steps_text(cfg.accel_steps)}",
                     name + "_base", sampler, cfg.accel_steps,
                     lambda a=adapter, s=sampler: samplers[s](unet_with(teacher.unet, [(a, 1.0)]), cfg.accel_steps)))
    rows, ref_stats, kept = [], None, {}
    with tqdm(total=len(jobs), desc="universal acceleration", disable=not progress) as bar:
        for key, label, model, sampler, steps, fn in jobs:
            res = fn()
            labels = ref_plan.labels if ref_stats is None else plan.labels
            if key is not None:
                kept[key] = (label, model, sampler, steps, res.images, labels)
            row, ref_stats = fd_to_reference_row(inst, res.images, labels, ref_stats, {
                "label": label, "model": model, "sampler": sampler, "steps": steps, "nfe": res.nfe, "n": n})
            rows.append(row)
            bar.update(1)
    out = {"rows": rows, "finetune": cfg.finetune.to_dict(), "reference_steps": cfg.accel_reference_steps,
           "steps": cfg.accel_steps, "gamma": cfg.tcd_gamma}
    students = {name: (fused[name], sampler, recipe if sampler == "pcm" else None)
                for name, (_, sampler) in adapters.items()}
    pooled = goal_d_study(cfg, teacher, ft_unet, kept, students, inst, progress)
    if pooled:
        out["pooled"] = pooled
    return out
