"""Report writing and claim checking on a synthetic results dict (no models involved)."""
import json
from pathlib import Path
from html.parser import HTMLParser

import pytest

from lcm_lora.demo.report import build_report, write_report
from lcm_lora.demo.run import check_claims


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
    assert not check_claims(slow2["rows"], {})["goal_lcm2_vs_ddim8"]["passed"]
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
    from lcm_lora.demo.run import tcd_claims

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
    from lcm_lora.demo.run import acceleration_claims, negative_prompt_claims

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
