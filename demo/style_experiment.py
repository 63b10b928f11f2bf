"""The style merge experiment (LCM-LoRA paper, Fig. 4; issue 13 goal (c)): a style LoRA merged with each
few-step adapter, θ' = θ_pre + λ1·τ_style + λ2·τ_adapter, against the style LoRA on the teacher's own DDIM."""
from __future__ import annotations

from .config import DemoConfig
from .fused_unet import unet_with
from .sample_fns import sample_fns
from .teacher_samplers import steps_text


def style_experiment(cfg: DemoConfig, teacher, lcm_adapter, style_adapter, tcd_adapter, inst, progress: bool,
                     fns=None, pcm_adapter=None):
    """The style merge experiment (τ' = λ1·τ_style + λ2·τ_LCM, with each adapter) on the main sample plan;
    ``fns``: :func:`sample_fns`' result to share (its drawn samples), else its own (same plan, same samples).
    Returns ``(rows, grids, merge_reports, merged_adapters)``."""
    from tqdm.auto import tqdm

    from ..lcm_core.merge import merge_adapters
    from .evaluate import sample_rows

    plan, teacher_fn, lcm_fn, tcd_fn, pcm_fn = fns or sample_fns(cfg, teacher)
    l1, l2 = cfg.lambda1, cfg.lambda2
    styled_teacher = unet_with(teacher.unet, [(style_adapter, l1)])
    style_rows, style_grids, merge_reports, merged_adapters = [], {}, {}, {}
    n_style = 8 + (4 if tcd_adapter is not None else 0) + (4 if pcm_adapter is not None else 0)
    with tqdm(total=n_style, desc="evaluate style merge", disable=not progress) as bar:
        def add(label, short, kind, steps, fn, extra=None):
            r, imgs = sample_rows(label, kind, [steps], fn, plan, inst, cfg.batch_size, bar, extra=extra)
            r[0]["label"] = label
            style_rows.append(r[0])
            style_grids[f"{short}, {steps_text(steps)}"] = imgs[steps]

        ref_steps, k = cfg.style_reference_steps, cfg.style_steps
        add(f"teacher + style λ1={l1:g}, DDIM (reference)", "style, DDIM (ref.)", "ddim", ref_steps,
            teacher_fn(styled_teacher, "ddim"))
        add(f"teacher + style λ1={l1:g}, DDIM", "style, DDIM", "ddim", k, teacher_fn(styled_teacher, "ddim"))
        add(f"teacher + style λ1={l1:g}, DPM++ 2M", "style, DPM++ 2M", "dpmpp_2m", k, teacher_fn(styled_teacher, "dpmpp_2m"))
        add("teacher (no style), DDIM", "no style, DDIM", "ddim", ref_steps, teacher_fn(teacher.unet, "ddim"))
        add(f"LCM-LoRA only (λ2={l2:g}), LCM", "LCM-LoRA only", "lcm", k,
            lcm_fn(unet_with(teacher.unet, [(lcm_adapter, l2)]), (float(l2),)))
        add(f"style λ1={l1:g} + LCM λ2={l2:g} fused separately, LCM", "fused separately", "lcm", k,
            lcm_fn(unet_with(teacher.unet, [(style_adapter, l1), (lcm_adapter, l2)])))
        for method in ("concat", "svd"):
            merged, report = merge_adapters([style_adapter, lcm_adapter], [l1, l2], method=method, rank=cfg.svd_rank,
                                            progress=False, names=["style", "lcm"])
            err = float(report.total_relative_error)
            merge_reports[method] = {"total_relative_error": err, "rank": sorted(merged.ranks())}
            merged_adapters[f"style_lcm_{method}"] = merged
            add(f"merged ({method}) λ1={l1:g}, λ2={l2:g}, LCM", f"merged ({method}), LCM", "lcm", k,
                lcm_fn(unet_with(teacher.unet, [(merged, 1.0)])), extra={"merge_relative_error": err})

        def adapter_rows(name: str, key: str, adapter, sample, how: str):
            """The adapter alone, fused separately with the style LoRA, and merged (concat / SVD) with it."""
            add(f"{name} adapter only (λ2={l2:g}), {how}", f"{name} only", key, k,
                sample(unet_with(teacher.unet, [(adapter, l2)]), tag=(float(l2),)))
            add(f"{name}: style λ1={l1:g} + {name} λ2={l2:g} fused separately, {how}", f"{name} fused separately", key, k,
                sample(unet_with(teacher.unet, [(style_adapter, l1), (adapter, l2)])))
            for method in ("concat", "svd"):
                merged, report = merge_adapters([style_adapter, adapter], [l1, l2], method=method, rank=cfg.svd_rank,
                                                progress=False, names=["style", key])
                err = float(report.total_relative_error)
                merge_reports[f"{key}_{method}"] = {"total_relative_error": err, "rank": sorted(merged.ranks())}
                merged_adapters[f"style_{key}_{method}"] = merged
                add(f"{name}: merged ({method}) λ1={l1:g}, λ2={l2:g}, {how}", f"{name} merged ({method})", key, k,
                    sample(unet_with(teacher.unet, [(merged, 1.0)])), extra={"merge_relative_error": err})

        if tcd_adapter is not None:
            adapter_rows("TCD", "tcd", tcd_adapter, lambda unet, tag=None: tcd_fn(unet, tag=tag), f"TCD γ {cfg.tcd_gamma:g}")
        if pcm_adapter is not None:  # same rows and forms as the TCD adapter's, on the PCM adapter's phase edges
            from .student_sampling import phased_recipe
            from .teacher_samplers import SAMPLER_LABELS

            recipe = phased_recipe(pcm_adapter)
            adapter_rows("PCM", "pcm", pcm_adapter, lambda unet, tag=None: pcm_fn(unet, recipe, tag=tag),
                         SAMPLER_LABELS["pcm"])

    return style_rows, style_grids, merge_reports, merged_adapters
