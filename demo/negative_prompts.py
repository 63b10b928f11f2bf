"""Negative prompts at few steps, measured in the digit world.

Setup (issue 13, item 5): the positive prompt names no class (the empty prompt, which the teacher
was trained with: 10 % of its captions were dropped) and the negative prompt names one class c
("a handwritten digit c", c balanced over the samples). A sample "shows c" when the digit
classifier reads c. Without a negative prompt about 10 % of the samples show their c; a negative
prompt that counts lowers that share. The *reduction* of a configuration is its share without the
negative prompt minus its share with it (same model, sampler, steps and noise).

Classifier-free guidance with a negative prompt: ``ε = ε(neg) + g·(ε(pos) − ε(neg))`` (two UNet
evaluations per step). The distilled adapters run at cfg 1 (ε(pos) only, the negative prompt
cannot act), at cfg > 1 on every step, or with real CFG on the first k steps only
(``student_sampling.cfg_steps``).
"""
from __future__ import annotations

import torch


def class_share(inst, images: torch.Tensor, classes: torch.Tensor) -> float:
    """Fraction of ``images`` the digit classifier reads as their ``classes``."""
    logits, _ = inst.features(images)
    return float((logits.argmax(dim=1) == classes).float().mean())


def negative_prompt_study(teacher, students: dict, inst, n: int, resolution: int, seed: int, teacher_steps: int,
                          teacher_cfg: float, student_steps: int, student_configs, progress=None) -> dict:
    """Share of the negated class for the teacher and each student.

    ``students``: ``{name: (unet, sample_fn)}`` with ``sample_fn(unet, cond, noise, steps, seed=,
    guidance_scale=, uncond=, cfg_steps=)`` (``student_sampling``); ``student_configs``: tuples
    ``(cfg, cfg_steps)`` (``cfg_steps`` None = every step). Returns ``{"rows": [...], "teacher_reduction",
    "goal": ...}``; each row has model, sampler, steps, cfg, cfg_steps, nfe, share (with the negative
    prompt), share_without (same configuration without it) and reduction.
    """
    from .evaluate import SamplePlan
    from .sampler_seeds import sampler_seed
    from .teacher_samplers import sample_teacher

    plan = SamplePlan.make(n, resolution, seed)
    classes = plan.labels  # the class each sample's negative prompt names
    cond, empty = teacher.embed(classes)  # cond[i] = "a handwritten digit c_i"; empty = ""
    rows = []

    def add(model, sampler, steps, cfg, cfg_steps, run, plain):
        """``run(neg)``: the configuration with negative prompt ``neg``; ``plain()``: the same model, sampler
        and noise without CFG. Without a negative prompt the negative is the empty prompt, which is also the
        positive one: CFG's ε(neg) + g·(ε(pos) − ε(neg)) is then ε(empty) + g·0 = ε(empty), the plain
        prediction, so the "without" run is the plain run, drawn once per model and step count (equal to
        running CFG with equal prompts up to float rounding — bit-identical in the demo's one-thread runs —
        checked in tests/test_demo_samplers.py)."""
        with_neg = run(cond)  # negative = the class prompt
        without = plain()
        s_with, s_without = class_share(inst, with_neg.images, classes), class_share(inst, without.images, classes)
        rows.append({"model": model, "sampler": sampler, "steps": steps, "cfg": cfg, "cfg_steps": cfg_steps,
                     "nfe": with_neg.nfe, "n": n, "share": round(s_with, 5), "share_without": round(s_without, 5),
                     "reduction": round(s_without - s_with, 5)})
        if progress is not None:
            progress.update(1)

    plain_runs = {}

    def once(key, fn):
        def get():
            if key not in plain_runs:
                plain_runs[key] = fn()
            return plain_runs[key]
        return get

    sc = teacher.scheduler_config
    for steps in (teacher_steps, student_steps):
        add("teacher", "ddim", steps, teacher_cfg, None,
            lambda neg, steps=steps: sample_teacher(teacher.unet, empty, neg, plan.noise, "ddim", steps, sc, teacher_cfg),
            once(("teacher", steps), lambda steps=steps: sample_teacher(teacher.unet, empty, None, plan.noise, "ddim",
                                                                        steps, sc, teacher_cfg)))
    for name, (unet, fn, sampler) in students.items():
        plain = once(name, lambda unet=unet, fn=fn: fn(unet, empty, plan.noise, student_steps, seed=sampler_seed(seed)))
        for cfg, k in student_configs:
            add(name, sampler, student_steps, cfg, k,
                (lambda neg: plain()) if cfg <= 1.0 else  # cfg 1: the negative prompt is never evaluated
                lambda neg, unet=unet, fn=fn, cfg=cfg, k=k: fn(unet, empty, plan.noise, student_steps, seed=sampler_seed(seed),
                                                              guidance_scale=cfg, uncond=neg, cfg_steps=k), plain)
    teacher_red = rows[0]["reduction"]
    budget = 2 * student_steps
    goal = {}
    for name in students:
        cands = [r for r in rows if r["model"] == name and r["nfe"] <= budget]
        best = max(cands, key=lambda r: r["reduction"]) if cands else None
        goal[name] = {"best": best, "teacher_reduction": teacher_red, "nfe_budget": budget,
                      "passed": bool(best is not None and teacher_red > 0 and best["reduction"] >= 0.5 * teacher_red)}
    return {"rows": rows, "teacher_reduction": teacher_red, "n": n, "goal": goal,
            "positive_prompt": "", "negative_prompt": "a handwritten digit c (c balanced over the samples)"}
