"""The samplers of the demo's main sample plan, shared by the quality rows, the style experiment and goal (a)'s
1000-sample study, so that the same model on the same prompts and noise is drawn once."""
from __future__ import annotations

from .config import DemoConfig
from .sampler_seeds import sampler_seed


def sample_fns(cfg: DemoConfig, teacher, plan=None):
    """The main sample plan (or ``plan``) and the samplers on it: ``teacher_fn(unet, sampler)``, ``lcm_fn(unet, tag)``,
    ``tcd_fn(unet, gamma, tag)``, ``pcm_fn(unet, recipe, tag)`` (a phased adapter on its recipe's phase edges),
    each ``(slice, steps) -> SampleResult``; the students re-noise from ``sampler_seed(plan.seed + slice start)``."""
    from .evaluate import SamplePlan
    from .student_sampling import sample_lcm_student, sample_phased_student, sample_tcd_student
    from .teacher_samplers import sample_teacher

    if plan is None:
        plan = SamplePlan.make(cfg.n_samples, cfg.resolution, cfg.seed)
    cond, uncond = teacher.embed(plan.labels)
    g = cfg.guidance_scale
    sc = teacher.scheduler_config

    def teacher_fn(unet, sampler):
        return lambda sl, k: sample_teacher(unet, cond[sl], uncond[sl], plan.noise[sl], sampler, k, sc, g)

    # Samples of the same fused model, sampler, γ, steps, prompts and noise are drawn once and reused
    # (LCM-LoRA / TCD adapter alone at λ2 = 1 in the style table, γ = tcd_gamma in the γ sweep): the same
    # call on the same inputs, so the same images.
    drawn = {}

    def memo(tag, fn):
        if tag is None:
            return fn

        def sample(sl, k):
            key = (tag, sl.start, sl.stop, int(k))
            if key not in drawn:
                drawn[key] = fn(sl, k)
            return drawn[key]

        return sample

    def lcm_fn(unet, tag=None):
        return memo(tag and ("lcm",) + tag, lambda sl, k: sample_lcm_student(unet, cond[sl], plan.noise[sl], k,
                                                                            seed=sampler_seed(plan.seed + sl.start)))

    def tcd_fn(unet, gamma=cfg.tcd_gamma, tag=None):
        return memo(tag and ("tcd", float(gamma)) + tag,
                    lambda sl, k: sample_tcd_student(unet, cond[sl], plan.noise[sl], k, gamma=gamma,
                                                     seed=sampler_seed(plan.seed + sl.start)))

    def pcm_fn(unet, recipe, tag=None):
        return memo(tag and ("pcm",) + tag,
                    lambda sl, k: sample_phased_student(unet, cond[sl], plan.noise[sl], k, recipe=recipe,
                                                        seed=sampler_seed(plan.seed + sl.start), uncond=uncond[sl]))

    return plan, teacher_fn, lcm_fn, tcd_fn, pcm_fn
