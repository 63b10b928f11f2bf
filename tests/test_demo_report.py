"""Report writing and claim checking on a synthetic results dict (no models involved)."""
import json
from pathlib import Path
from html.parser import HTMLParser

import pytest

from lcm_lora.demo.report import build_report, write_report
from lcm_lora.demo.claims import check_claims


def _row(model, sampler, steps, fd, acc, nfe=None):
    return {"model": model, "sampler": sampler, "steps": steps, "nfe": nfe or steps, "fd": fd, "fd_pixel": fd / 10,
            "accuracy": acc, "ms_per_image": 1.0 * steps, "seconds": 0.1 * steps, "n": 100, "style_score": 0.1, "ink": 0.3}


def _style_row(label, sampler, steps, score):
    r = _row(label, sampler, steps, 50.0, 0.9)
    r.update(label=label, style_score=score)
    return r


def _results(lcm4_fd=30.0, lcm4_acc=0.95, merged_score=0.8):
    rows = [_row("teacher", "ddim", s, fd, 0.95, 2 * s) for s, fd in ((2, 90.0), (4, 50.0), (8, 35.0))]
    rows += [_row("teacher", "dpmpp_2m", 8, 32.0, 0.96, 16)]
    rows += [_row("lcm_lora", "lcm", 2, 33.0, 0.95), _row("lcm_lora", "lcm", 4, lcm4_fd, lcm4_acc)]
    style_rows = [
        _style_row("teacher + style λ1=0.8, DDIM (reference)", "ddim", 25, 0.85),
        _style_row("teacher + style λ1=0.8, DDIM", "ddim", 4, 0.6),
        _style_row("merged (concat) λ1=0.8, λ2=1, LCM", "lcm", 4, merged_score),
    ]
    return {
        "config": {"preset": "fast", "n_samples": 100, "guidance_scale": 3.0, "resolution": 16},
        "environment": {"summary": "CPU, 1 thread"},
        "timings": {"total": 12.0},
        "calibration": {"real_vs_real_n": 100, "reference_n": 449, "fd_real_vs_real": 20.0, "fd_pixel_real_vs_real": 1.0,
                        "style_score_real_plain": 0.02, "style_score_real_styled": 0.97, "train_n": 898,
                        "classifier_train_n": 450, "digit_accuracy_heldout": 0.97},
        "rows": rows,
        "style": {"settings": {"rank": 8, "steps": 10, "style": "bold"}, "lambda1": 0.8, "lambda2": 1.0, "rows": style_rows},
        "teacher": {"description": "tiny", "source": "shipped"},
        "lcm_lora": {"config_file": "configs/tiny_cpu.yaml", "overrides": ["train.max_steps=10"], "seconds": 3.0},
        "figures": {"quality": [("fd_vs_steps.png", "FD vs steps")], "grids": [], "style": []},
    }


def test_claims_follow_their_definitions():
    res = _results()
    claims = check_claims(res["rows"], res["style"])
    assert claims["lcm4_beats_ddim4"]["passed"]  # 30 <= 0.9 * 50, accuracy equal
    assert claims["style_merge_keeps_style"]["passed"]  # |0.8-0.85| < |0.6-0.85|
    assert claims["goal_lcm4_vs_dpm8"]["passed"]  # 30 <= 32
    assert claims["goal_lcm2_vs_ddim8"]["passed"]  # 33 < 35
    slow2 = _results()
    slow2["rows"] = [r if (r["model"], r["steps"]) != ("lcm_lora", 2) else {**r, "fd": 36.0} for r in slow2["rows"]]
    c2 = check_claims(slow2["rows"], {})["goal_lcm2_vs_ddim8"]
    assert not c2["passed"] and "two LCM steps" in c2["why"]  # no fd_se on these rows
    within = [{**r, "fd_se": 2.0} if (r["model"], r["steps"]) == ("lcm_lora", 2) else r for r in slow2["rows"]]
    assert check_claims(within, {})["goal_lcm2_vs_ddim8"]["why"] == (
        "the gap (1.0) is within one bootstrap s.e. of the 2-step FD (2.0)")
    bad = _results(lcm4_fd=45.0, lcm4_acc=0.93, merged_score=0.5)
    c = check_claims(bad["rows"], bad["style"])
    assert not c["lcm4_beats_ddim4"]["passed"] and not c["style_merge_keeps_style"]["passed"]
    assert not check_claims(_results(lcm4_fd=30.0, lcm4_acc=0.93)["rows"], {})["lcm4_beats_ddim4"]["passed"]  # > 1 point lower


class _Checker(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.tables, self.imgs = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def test_report_files_agree(tmp_path):
    res = _results()
    res["claims"] = check_claims(res["rows"], res["style"])
    paths = write_report(res, tmp_path)
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "| teacher DDIM | 4 | 8 | 0.950 | 50.0 |" in md
    assert "| LCM-LoRA LCM | 4 | 4 | 0.950 | 30.0 |" in md
    assert "**PASS**" in md and "![FD vs steps](fd_vs_steps.png)" in md
    checker = _Checker()
    checker.feed(paths["report.html"].read_text(encoding="utf-8"))
    assert checker.stack == [] and checker.tables == 2 and checker.imgs == ["fd_vs_steps.png"]
    assert json.loads(paths["results.json"].read_text())["rows"] == res["rows"]
    write_report(res, tmp_path)  # a second run overwrites its own report


def test_markdown_escapes_nothing_it_should_not():
    doc = build_report({**_results(), "claims": {}})
    assert doc.markdown().startswith("# LCM-LoRA demo")
    with pytest.raises(KeyError):
        build_report({"config": {}})


def _with_tcd(tcd_fd=(40.0, 28.0, 29.0, 30.0), se=2.0, tcd_acc=0.996):
    res = _results()
    res["rows"].append(_row("teacher", "ddim", 32, 34.0, 1.0, 64))
    for steps, fd in zip((2, 4, 8, 16), tcd_fd):
        r = _row("tcd", "tcd", steps, fd, tcd_acc)
        r.update(gamma=0.3, fd_se=se)
        res["rows"].append(r)
    return res


def test_tcd_goals_a_and_b_follow_their_definitions():
    from lcm_lora.demo.claims import tcd_claims

    res = _with_tcd()  # TCD-4 28.0 <= LCM-4 30.0; accuracy 0.996 >= 1.000 - 0.005; 8/16: 29, 30 <= 28 + 2
    c = tcd_claims(res["rows"], res["style"])
    assert c["goal_tcd4_vs_lcm4"]["passed"] and c["goal_tcd_more_steps"]["passed"]
    c = tcd_claims(_with_tcd(tcd_fd=(40.0, 31.0, 29.0, 30.0))["rows"], {})
    assert not c["goal_tcd4_vs_lcm4"]["passed"] and "at γ 0.3: FD above" in c["goal_tcd4_vs_lcm4"]["why"]
    assert not tcd_claims(_with_tcd(tcd_acc=0.994)["rows"], {})["goal_tcd4_vs_lcm4"]["passed"]  # 0.6 point below
    c = tcd_claims(_with_tcd(tcd_fd=(40.0, 28.0, 29.0, 30.1))["rows"], {})
    assert not c["goal_tcd_more_steps"]["passed"] and "16 steps 30.1" in c["goal_tcd_more_steps"]["detail"]
    assert tcd_claims(_with_tcd(tcd_fd=(40.0, 28.0, 29.0, 30.1), se=2.2)["rows"], {})["goal_tcd_more_steps"]["passed"]


def test_negative_prompt_and_acceleration_goals():
    from lcm_lora.demo.claims import acceleration_claims, negative_prompt_claims

    def nrow(model, nfe, red, cfg=2.0, k=None):
        return {"model": model, "nfe": nfe, "reduction": red, "cfg": cfg, "cfg_steps": k, "share": 0.1 - red}

    rows = [nrow("lcm_lora", 4, 0.0, 1.0), nrow("lcm_lora", 8, 0.03), nrow("lcm_lora", 5, 0.05, 3.0, 1),
            nrow("lcm_lora", 12, 0.09)]
    neg = {"goal": {"lcm_lora": {"best": max([r for r in rows if r["nfe"] <= 8], key=lambda r: r["reduction"]),
                                 "teacher_reduction": 0.09, "nfe_budget": 8, "passed": True}}}
    c = negative_prompt_claims(neg)["goal_negative_prompt_lcm_lora"]
    assert c["passed"] and "cfg 3 on the first 1 step(s)" in c["detail"] and "5.0 points (5 evaluations)" in c["detail"]

    accel = {"reference_steps": 25, "rows": [
        {"label": "fine-tune, DDIM (reference, independent noise)", "model": "finetune", "steps": 25},
        {"label": "fine-tune, DDIM 8 steps", "model": "finetune", "steps": 8, "fd_vs_reference": 30.0},
        {"label": "fine-tune + LCM-LoRA, LCM 4 steps", "model": "lcm_lora", "steps": 4, "fd_vs_reference": 29.0},
        {"label": "fine-tune + TCD adapter, TCD 4 steps", "model": "tcd", "steps": 4, "fd_vs_reference": 31.0,
         "style_score": 0.97, "accuracy": 0.9}]}
    c = acceleration_claims(accel)
    assert c["goal_universal_acceleration_lcm_lora"]["passed"] and not c["goal_universal_acceleration_tcd"]["passed"]
    assert "style score 0.97" in c["goal_universal_acceleration_tcd"]["why"]


def test_fail_claims_are_explained_with_a_link_and_labels_are_honest(tmp_path):
    res = _with_tcd(tcd_fd=(40.0, 31.0, 29.0, 30.0))
    res["claims"] = check_claims(res["rows"], res["style"])
    md = write_report(res, tmp_path)["report.md"].read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if "goal (a)" in x)
    assert line.startswith("- **FAIL**") and "Why: at γ 0.3: FD above the LCM-LoRA's" in line
    assert "README.md#why-a-claim-fails)" in line
    readme = line.split("](")[1].split("#")[0]
    assert (tmp_path / readme).resolve() == (Path(__file__).resolve().parent.parent / "demo" / "README.md")
    assert "| TCD adapter TCD γ 0.3 | 4 | 4 | 0.996 | 31.0 | 2.0 |" in md
    assert "holds in classifier FD but not in pixel FD" in md
    page = (tmp_path / "report.html").read_text(encoding="utf-8")  # the HTML report links it too (it showed "](")
    assert f'<a href="{readme}#why-a-claim-fails">demo/README.md</a>' in page and "](" not in page


def _with_pcm(pcm_fd=(45.0, 29.5, 30.0, 31.0), se=2.0, pcm_acc=1.0, merged=(0.86, 1.0)):
    res = _with_tcd()
    for steps, fd in zip((2, 4, 8, 16), pcm_fd):
        r = _row("pcm", "pcm", steps, fd, pcm_acc)
        r.update(phases=4, fd_se=se)
        res["rows"].append(r)
    res["style"]["rows"][0]["accuracy"] = 1.0
    for label, score, acc in (("TCD: merged (concat) λ1=0.8, λ2=1, TCD γ 0.3", 0.90, 0.98),
                              ("PCM adapter only (λ2=1), phase edges, TCD γ 0", 0.05, pcm_acc),
                              ("PCM: merged (concat) λ1=0.8, λ2=1, phase edges, TCD γ 0", *merged)):
        r = _style_row(label, "tcd" if label.startswith("TCD") else "pcm", 4, score)
        r["accuracy"] = acc
        res["style"]["rows"].append(r)
    return res


def test_pcm_goals_are_the_tcd_goals_naming_the_pcm_adapter():
    """Goals (a)–(c) for the PCM adapter: same definitions and wording as the TCD adapter's, on its own rows."""
    from lcm_lora.demo.claims import pcm_claims, tcd_claims

    res = _with_pcm()  # PCM-4 29.5 ≤ LCM-4 30.0, accuracy 1.0; 8/16: 30, 31 ≤ 31.5; merge 0.86 vs ref 0.85, acc. 1.0
    c, t = pcm_claims(res["rows"], res["style"]), tcd_claims(res["rows"], res["style"])
    assert set(c) == {"goal_pcm4_vs_lcm4", "goal_pcm_more_steps", "goal_pcm_style_merge"}
    assert all(v["passed"] for v in c.values())
    for k in ("4_vs_lcm4", "_more_steps", "_style_merge"):  # worded like the TCD goal, naming the PCM adapter
        pcm, tcd = c["goal_pcm" + k]["statement"], t["goal_tcd" + k]["statement"]
        assert "PCM adapter" in pcm and "TCD adapter" not in pcm
        assert pcm.replace("PCM adapter", "TCD adapter").split(" (")[0] == tcd.split(" (")[0]
    assert c["goal_pcm4_vs_lcm4"]["statement"] == ("goal (a): PCM adapter 4 steps (4 phases, phase edges, γ 0): FD ≤ "
                                                   "LCM-LoRA 4 steps, and class accuracy ≥ teacher (DDIM 32 steps) − "
                                                   "0.5 point")
    assert c["goal_pcm_more_steps"]["statement"] == t["goal_tcd_more_steps"]["statement"].replace("TCD", "PCM")
    assert c["goal_pcm_style_merge"]["statement"] == t["goal_tcd_style_merge"]["statement"].replace("TCD", "PCM")

    bad = pcm_claims(_with_pcm(pcm_fd=(45.0, 30.1, 30.0, 32.2), pcm_acc=0.994, merged=(0.91, 0.98))["rows"],
                     _with_pcm(merged=(0.91, 0.98))["style"])
    assert not bad["goal_pcm4_vs_lcm4"]["passed"]  # FD 30.1 > 30.0 and 0.6 point below the teacher
    assert bad["goal_pcm4_vs_lcm4"]["why"] == ("at 4 phases, phase edges, γ 0: FD above the LCM-LoRA's and accuracy "
                                               "more than 0.5 point below the teacher's")
    assert not bad["goal_pcm_more_steps"]["passed"]  # 16 steps: 32.2 > 30.1 + 2
    assert not bad["goal_pcm_style_merge"]["passed"]  # style off by 0.06, accuracy 2 points below
    assert "the PCM adapter alone at 4 steps: accuracy 1.000" in bad["goal_pcm_style_merge"]["why"]
    # the TCD goals are computed from the TCD rows only: unchanged by the PCM rows
    assert tcd_claims(_with_pcm()["rows"], _with_pcm()["style"]) == tcd_claims(_with_pcm(pcm_fd=(99.0,) * 4)["rows"],
                                                                               _with_pcm()["style"])


def test_pcm_goal_d_and_negative_prompt_and_report(tmp_path):
    from lcm_lora.demo.claims import acceleration_claims, negative_prompt_claims

    accel = {"reference_steps": 25, "rows": [
        {"label": "fine-tune, DDIM 8 steps", "model": "finetune", "steps": 8, "fd_vs_reference": 30.0},
        {"label": "fine-tune + PCM adapter, PCM 4 steps", "model": "pcm", "steps": 4, "fd_vs_reference": 29.0,
         "style_score": 0.97, "accuracy": 1.0}]}
    c = acceleration_claims(accel)["goal_universal_acceleration_pcm"]
    assert c["passed"] and c["statement"].startswith("goal (d): PCM adapter applied to a full fine-tune it never saw")
    accel["rows"][1]["fd_vs_reference"] = 30.0
    assert not acceleration_claims(accel)["goal_universal_acceleration_pcm"]["passed"]  # "below", not equal
    best = {"model": "pcm", "nfe": 6, "reduction": 0.04, "cfg": 3.0, "cfg_steps": 2}
    neg = {"goal": {"pcm": {"best": best, "teacher_reduction": 0.09, "nfe_budget": 8, "passed": False}}}
    c = negative_prompt_claims(neg)["goal_negative_prompt_pcm"]
    assert not c["passed"] and "for the PCM adapter at ≤ 8 UNet evaluations" in c["statement"]

    res = _with_pcm()
    res["pcm"] = {"config_file": "configs/tiny_cpu.yaml", "overrides": ["train.max_steps=10", "lcd.objective=pcm"],
                  "seconds": 4.0}
    res["claims"] = check_claims(res["rows"], res["style"])
    md = write_report(res, tmp_path)["report.md"].read_text(encoding="utf-8")
    assert "| PCM adapter phase edges, TCD γ 0 | 4 | 4 | 1.000 | 29.5 | 2.0 |" in md
    assert "- **PASS** — goal (a): PCM adapter 4 steps (4 phases, phase edges, γ 0)" in md
    assert "PCM adapter: `lcm-lora train` with configs/tiny_cpu.yaml and overrides `train.max_steps=10 " \
           "lcd.objective=pcm`" in md
    from lcm_lora.demo.docs import render_results_block

    res.update(environment={"summary": "CPU"}, config={**res["config"], "seed": 0}, tcd={"seconds": 3.0})
    block = render_results_block(res, "x.json")
    assert "LCM-LoRA 3 s, TCD adapter 3 s, PCM adapter 4 s." in block
    assert "| PCM adapter phase edges, TCD γ 0 | 45.0 | 29.5 | 30.0 | 31.0 |  |" in block
    del res["pcm"]
    assert "TCD adapter 3 s. Real-vs-real" in render_results_block(res, "x.json")  # no PCM: the line as before


@pytest.mark.parametrize("kernels", ["avx2", "default"])
def test_results_environment_names_the_cpu_kernels(kernels):
    """The kernel set decides a cold run's numbers (BENCHMARKS.md, "The committed results reproduce on AVX2
    kernels"), so results.json records it; torch's ATEN_CPU_CAPABILITY switch is the reference."""
    import os
    import subprocess
    import sys
    code = "import json; from lcm_lora.demo.run import environment; print(json.dumps(environment(1)))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": kernels},
                         check=True, capture_output=True, text=True).stdout
    env = json.loads(out.strip().splitlines()[-1])
    assert env["cpu_capability"] == kernels.upper()
    assert f"({kernels.upper()} kernels)" in env["summary"]
