"""The demo's claims: the issues' statements evaluated on a run's numbers (``results.json`` rows), each with a
``passed`` verdict and, when it fails, ``why``: one line on the cause (details: demo/README.md "Why a claim fails").

* :func:`check_claims`: the LCM-LoRA claims of the first issues, then issue 13's goals for every adapter of the run;
* :func:`adapter_goal_claims`: issue 13 goals (a)–(c) for one few-step adapter (:func:`tcd_claims`, :func:`pcm_claims`);
* :func:`acceleration_claims`: goal (d), the adapters on a fine-tune they never saw;
* :func:`negative_prompt_claims`: item 5, a negative prompt at few steps.

Goal (a) on 1000 samples has its own claims (:func:`.goal_a.goal_a_claims`). The tests assert the same claims.
"""
from __future__ import annotations


def find_row(rows, model, sampler, steps):
    for r in rows:
        if r["model"] == model and r["sampler"] == sampler and r["steps"] == steps:
            return r
    return None


def check_claims(rows, style: dict, fd_margin: float = 0.1, acc_drop: float = 0.01, accel: dict | None = None,
                 negative: dict | None = None, goal_a: dict | None = None) -> dict:
    """The issues' claims, evaluated on this run's numbers (tests assert the same ones).

    A failing claim carries ``why``: one line on the cause (details: demo/README.md)."""
    claims = {}
    lcm4, ddim4 = find_row(rows, "lcm_lora", "lcm", 4), find_row(rows, "teacher", "ddim", 4)
    if lcm4 and ddim4:
        ok = lcm4["fd"] <= (1 - fd_margin) * ddim4["fd"] and lcm4["accuracy"] >= ddim4["accuracy"] - acc_drop
        claims["lcm4_beats_ddim4"] = {
            "statement": f"LCM-LoRA 4 steps has ≥{fd_margin:.0%} lower FD than teacher DDIM 4 steps, accuracy at most "
                         f"{acc_drop * 100:g} point lower",
            "detail": f"FD {lcm4['fd']:.1f} vs {ddim4['fd']:.1f}; accuracy {lcm4['accuracy']:.3f} vs {ddim4['accuracy']:.3f}",
            "passed": bool(ok)}
        if not ok:
            n = lcm4.get("n") or 0
            se = (lcm4["accuracy"] * (1 - lcm4["accuracy"]) / n) ** 0.5 if n else float("nan")
            fd_ok = lcm4["fd"] <= (1 - fd_margin) * ddim4["fd"]
            claims["lcm4_beats_ddim4"]["why"] = (
                f"FD holds; the student misreads {round((1 - lcm4['accuracy']) * n)} of {n} digits (binomial s.e. "
                f"{se * 100:.1f} points): a few-step student trades a little class fidelity for FD" if fd_ok else
                "the 4-step student's FD is not 10 % below DDIM-4's")
    ref = next((r for r in style.get("rows", []) if "(reference)" in r["label"]), None)
    ddim_s = next((r for r in style.get("rows", []) if r["label"].startswith("teacher + style") and r["sampler"] == "ddim"
                   and "(reference)" not in r["label"]), None)
    merged = next((r for r in style.get("rows", []) if r["label"].startswith("merged (concat)")), None)
    if ref and ddim_s and merged:
        d_m, d_d = abs(merged["style_score"] - ref["style_score"]), abs(ddim_s["style_score"] - ref["style_score"])
        claims["style_merge_keeps_style"] = {
            "statement": f"merged style+LCM adapter at {merged['steps']} steps is closer in style score to the style LoRA "
                         f"with teacher DDIM {ref['steps']} steps than the style LoRA with DDIM {ddim_s['steps']} steps",
            "detail": f"|{merged['style_score']:.3f} − {ref['style_score']:.3f}| = {d_m:.3f} vs "
                      f"|{ddim_s['style_score']:.3f} − {ref['style_score']:.3f}| = {d_d:.3f}",
            "passed": bool(d_m < d_d)}
        if d_m >= d_d:
            claims["style_merge_keeps_style"]["why"] = (
                "few-step sampling (teacher DDIM-4 too) reads bolder to the style classifier than the 25-step "
                "reference; the merge over-shoots the reference's style, it does not lose it")
        claims["style_merge_retains_style"] = {
            "statement": f"merged style+LCM adapter at {merged['steps']} steps carries at least the style of the style LoRA "
                         f"with teacher DDIM {ref['steps']} steps (style score ≥ reference − 0.05, accuracy ≥ reference − 1 point)",
            "detail": f"style {merged['style_score']:.3f} vs {ref['style_score']:.3f}; accuracy {merged['accuracy']:.3f} vs "
                      f"{ref['accuracy']:.3f}",
            "passed": bool(merged["style_score"] >= ref["style_score"] - 0.05 and merged["accuracy"] >= ref["accuracy"] - 0.01)}
        if not claims["style_merge_retains_style"]["passed"]:
            claims["style_merge_retains_style"]["why"] = (
                "the style is kept; the LCM-LoRA's small accuracy loss (see the first claim) adds to the style LoRA's"
                if merged["style_score"] >= ref["style_score"] - 0.05 else "the merge loses part of the style")
    dpm8, ddim8, lcm2 = find_row(rows, "teacher", "dpmpp_2m", 8), find_row(rows, "teacher", "ddim", 8), find_row(rows, "lcm_lora", "lcm", 2)
    if lcm4 and dpm8:
        claims["goal_lcm4_vs_dpm8"] = {"statement": "goal: LCM-LoRA 4 steps ≤ teacher DPM++ 2M 8 steps on FD",
                                       "detail": f"FD {lcm4['fd']:.1f} vs {dpm8['fd']:.1f}", "passed": bool(lcm4["fd"] <= dpm8["fd"])}
        if lcm4["fd"] > dpm8["fd"]:
            se = lcm4.get("fd_se")
            claims["goal_lcm4_vs_dpm8"]["why"] = (
                f"the gap ({lcm4['fd'] - dpm8['fd']:.1f}) is within one bootstrap s.e. of the 4-step FD ({se:.1f})"
                if se is not None and lcm4["fd"] - dpm8["fd"] <= se else
                "teacher DPM++ 2M reaches the real-vs-real floor by 8 steps")
    if lcm2 and ddim8:
        claims["goal_lcm2_vs_ddim8"] = {
            "statement": "goal: LCM-LoRA 2 steps better than teacher DDIM 8 steps on FD",
            "detail": f"FD {lcm2['fd']:.1f} vs {ddim8['fd']:.1f}" + (
                f" (caveat: classifier FD only — pixel FD {lcm2['fd_pixel']:.2f} vs {ddim8['fd_pixel']:.2f}"
                + (", and the 2-step grid is visibly speckled)" if lcm2["fd_pixel"] > ddim8["fd_pixel"] else ")")
                if lcm2.get("fd_pixel") is not None and ddim8.get("fd_pixel") is not None else ""),
            "passed": bool(lcm2["fd"] < ddim8["fd"])}
        if lcm2["fd"] >= ddim8["fd"]:
            se = lcm2.get("fd_se")
            claims["goal_lcm2_vs_ddim8"]["why"] = (
                f"the gap ({lcm2['fd'] - ddim8['fd']:.1f}) is within one bootstrap s.e. of the 2-step FD ({se:.1f})"
                if se is not None and lcm2["fd"] - ddim8["fd"] <= se else
                "two LCM steps, re-noised from fresh noise as diffusers does, do not reach DDIM-8 (earlier runs "
                "re-noised from the initial noise, which lowered the 2-step FD)")
    claims.update(tcd_claims(rows, style, acc_drop))
    claims.update(pcm_claims(rows, style, acc_drop))
    if goal_a:
        from .goal_a import goal_a_claims

        claims.update(goal_a_claims(goal_a))
    if accel:
        claims.update(acceleration_claims(accel))
    if negative:
        claims.update(negative_prompt_claims(negative))
    return claims


def teacher_reference_row(rows):
    """The teacher's best-converged row: DDIM at its largest step count."""
    ddim = [r for r in rows if r["model"] == "teacher" and r["sampler"] == "ddim"]
    return max(ddim, key=lambda r: r["steps"]) if ddim else None


def tcd_claims(rows, style: dict, acc_drop: float = 0.01) -> dict:
    """Issue 13 goals (a)–(c) for the TCD adapter (γ of its main rows)."""
    tcd4 = find_row(rows, "tcd", "tcd", 4)
    return adapter_goal_claims(rows, style, acc_drop, model="tcd", sampler="tcd", who="TCD adapter", key="tcd",
                               setting=f"γ {tcd4.get('gamma', 0.3):g}" if tcd4 else "", style_prefix="TCD")


def pcm_claims(rows, style: dict, acc_drop: float = 0.01) -> dict:
    """Issue 13 goals (a)–(c) for the PCM adapter (sampled on its phase edges), worded as the TCD adapter's."""
    from .goal_a import phased_setting

    pcm4 = find_row(rows, "pcm", "pcm", 4)
    return adapter_goal_claims(rows, style, acc_drop, model="pcm", sampler="pcm", who="PCM adapter", key="pcm",
                               setting=phased_setting(pcm4 or {}), style_prefix="PCM")


def adapter_goal_claims(rows, style: dict, acc_drop: float, model: str, sampler: str, who: str, key: str,
                        setting: str, style_prefix: str) -> dict:
    """Issue 13 goals (a)–(c) for one few-step adapter: its main rows are ``(model, sampler)``, its style rows
    start with ``style_prefix`` (``"<prefix>: merged (concat)"``, ``"<who> only"``); ``setting`` is shown in (a)."""
    from .goal_a import goal_a_claim

    claims = {}
    a4, lcm4, teacher = find_row(rows, model, sampler, 4), find_row(rows, "lcm_lora", "lcm", 4), teacher_reference_row(rows)
    if a4 and lcm4 and teacher:
        claims[f"goal_{key}4_vs_lcm4"] = goal_a_claim(a4, lcm4, teacher, who, setting)
    more = [find_row(rows, model, sampler, k) for k in (8, 16)]
    if a4 and any(more):
        se = a4.get("fd_se") or 0.0
        bound = a4["fd"] + se
        ok = all(r["fd"] <= bound for r in more if r)
        claims[f"goal_{key}_more_steps"] = {
            "statement": f"goal (b): {who} does not get worse with more steps: FD at 8 and 16 steps ≤ its 4-step FD "
                         "+ one standard error (bootstrap)",
            "detail": "FD " + ", ".join(f"{r['steps']} steps {r['fd']:.1f}" for r in more if r)
                      + f" vs 4 steps {a4['fd']:.1f} + s.e. {se:.1f} = {bound:.1f}",
            "passed": bool(ok)}
        if not ok:
            claims[f"goal_{key}_more_steps"]["why"] = "FD rises with more steps beyond the 4-step FD's sampling noise"
    srows = style.get("rows", []) if style else []
    ref = next((r for r in srows if "(reference)" in r["label"]), None)
    tm = next((r for r in srows if r["label"].startswith(f"{style_prefix}: merged (concat)")), None)
    if ref and tm:
        ok_s = abs(tm["style_score"] - ref["style_score"]) <= 0.05
        ok_a = tm["accuracy"] >= ref["accuracy"] - acc_drop
        claims[f"goal_{key}_style_merge"] = {
            "statement": f"goal (c): style LoRA merged with the {who} at {tm['steps']} steps: style score within ±0.05 "
                         f"of the style LoRA with teacher DDIM {ref['steps']} steps, accuracy ≥ reference − 1 point",
            "detail": f"style {tm['style_score']:.3f} vs {ref['style_score']:.3f}; accuracy {tm['accuracy']:.3f} vs "
                      f"{ref['accuracy']:.3f}",
            "passed": bool(ok_s and ok_a)}
        if not (ok_s and ok_a):
            alone = next((r for r in srows if r["label"].startswith(f"{who} only")), None)
            claims[f"goal_{key}_style_merge"]["why"] = " and ".join(
                p for p, bad in (("style score off the reference by more than 0.05", not ok_s),
                                 ("accuracy more than 1 point below the reference", not ok_a)) if bad) + (
                f" (the {who} alone at {alone['steps']} steps: accuracy {alone['accuracy']:.3f})" if alone else "")
    return claims


def acceleration_claims(accel: dict) -> dict:
    """Issue 13 goal (d): each adapter on the unseen fine-tune at ``steps`` beats the fine-tune's DDIM-8 — on the main
    rows, and on the pooled rows of ``accel["pooled"]`` (demo/goal_d.py) when there are any."""
    claims = _acceleration_claims(accel["rows"], accel["reference_steps"])
    pooled = accel.get("pooled")
    if pooled:
        claims.update(_acceleration_claims(pooled["rows"], pooled["reference_steps"], pooled["n"], pooled["n_main"]))
    return claims


def _acceleration_claims(rows: list, reference_steps: int, n: int | None = None, n_main: int | None = None) -> dict:
    """Goal (d) for every adapter row of ``rows``; ``n`` / ``n_main``: a pooled study's sample counts (key suffix
    ``_n{n}``, "on N samples" in the statement)."""
    claims = {}
    ddim8 = next((r for r in rows if r["model"] == "finetune" and r["steps"] == 8 and "fd_vs_reference" in r
                  and "floor" not in r["label"]), None)
    if not ddim8:
        return claims
    scope = f" on {n} samples ({n_main} + {n - n_main} more)" if n else ""
    for name, who in (("lcm_lora", "LCM-LoRA"), ("tcd", "TCD adapter"), ("pcm", "PCM adapter")):
        r = next((r for r in rows if r["model"] == name), None)
        if r is None:
            continue
        ok = r["fd_vs_reference"] < ddim8["fd_vs_reference"]
        key = f"goal_universal_acceleration_{name}" + (f"_n{n}" if n else "")
        detail = f"FD {r['fd_vs_reference']:.1f} vs {ddim8['fd_vs_reference']:.1f}"
        if n:
            detail = (f"FD {r['fd_vs_reference']:.1f} (s.e. {r.get('fd_vs_reference_se', 0):.1f}) vs "
                      f"{ddim8['fd_vs_reference']:.1f} (s.e. {ddim8.get('fd_vs_reference_se', 0):.1f})")
        claims[key] = {
            "statement": f"goal (d){scope}: {who} applied to a full fine-tune it never saw, {r['steps']} steps: FD to the "
                         f"fine-tune's own DDIM {reference_steps}-step samples below the fine-tune's DDIM 8 steps",
            "detail": detail,
            "passed": bool(ok)}
        if not ok:
            floor = next((x for x in rows if "floor" in x["label"]), None)
            claims[key]["why"] = (
                (f"the fine-tune's own DDIM already sits at the FD floor of a perfect match at 8 steps "
                 f"({ddim8['fd_vs_reference']:.1f} vs {floor['fd_vs_reference']:.1f}, s.e. "
                 f"{floor.get('fd_vs_reference_se', 0):.1f}); " if floor else "")
                + f"the adapter keeps the new style (style score {r['style_score']:.2f}) but not the fine-tune's "
                  f"exact samples (accuracy {r['accuracy']:.3f})")
    return claims


def negative_prompt_claims(negative: dict) -> dict:
    """Issue 13 item 5: at least half the teacher's reduction of the negated class, ≤ 2× the UNet evaluations."""
    claims = {}
    for name, who in (("lcm_lora", "LCM-LoRA"), ("tcd", "TCD adapter"), ("pcm", "PCM adapter")):
        g = negative["goal"].get(name)
        if not g:
            continue
        b = g["best"]
        cfg_txt = "–" if b is None else (f"cfg {b['cfg']:g}" + ("" if b["cfg_steps"] is None else f" on the first "
                                                                   f"{b['cfg_steps']} step(s)"))
        claims[f"goal_negative_prompt_{name}"] = {
            "statement": f"goal: a negative prompt naming a class works for the {who} at ≤ {g['nfe_budget']} UNet "
                         f"evaluations: at least half the teacher's reduction of that class's share",
            "detail": (f"best {cfg_txt}: reduction {b['reduction'] * 100:.1f} points ({b['nfe']} evaluations) vs teacher "
                       f"{g['teacher_reduction'] * 100:.1f} points" if b else "no configuration within the budget"),
            "passed": bool(g["passed"])}
        if not g["passed"]:
            claims[f"goal_negative_prompt_{name}"]["why"] = "no configuration within the budget reaches half the teacher's reduction"
    return claims
