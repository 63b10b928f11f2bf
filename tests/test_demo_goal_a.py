"""Goal (a) on pooled samples (``demo/goal_a.py``): the pooling, the claims' rule, the report and the docs block."""
import dataclasses
from types import SimpleNamespace

import torch

from lcm_lora.demo.goal_a import check_goal_a_config, goal_a_claims, goal_a_study, pooled_row, row_label
from lcm_lora.demo.claims import check_claims
from lcm_lora.demo.run import PRESETS


class RecordingInstruments:
    """Stands in for the classifiers: records what it is asked to measure and returns simple closed-form numbers."""

    def __init__(self):
        self.calls = []

    def measure(self, images, labels, fd_se=False):
        self.calls.append((images.clone(), labels.clone(), fd_se))
        return {"accuracy": float((labels == 1).float().mean()), "fd": float(images.mean()), "fd_pixel": 0.0,
                "style_score": 0.0, "ink": 0.0, "fd_se": 1.0}


def test_pooled_row_measures_the_main_images_and_the_extra_samples_as_one_set():
    main_images = torch.zeros(3, 1, 2, 2)
    main_labels, extra_labels = torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0, 0, 1])
    asked = []

    def extra_fn(sl, steps):
        asked.append((sl.start, sl.stop, steps))
        return SimpleNamespace(images=torch.full((sl.stop - sl.start, 1, 2, 2), 5.0), nfe=steps + 1)

    inst = RecordingInstruments()
    row = pooled_row("tcd", "tcd", 4, main_images, extra_fn, main_labels, extra_labels, inst, batch_size=2,
                     extra={"gamma": 0.5})
    assert asked == [(0, 2, 4), (2, 4, 4), (4, 5, 4)]  # the extra plan in batches, at the row's steps
    images, labels, fd_se = inst.calls[0]
    assert torch.equal(images, torch.cat([main_images, torch.full((5, 1, 2, 2), 5.0)]))
    assert torch.equal(labels, torch.cat([main_labels, extra_labels])) and fd_se
    assert row["n"] == 8 and row["n_main"] == 3 and row["nfe"] == 5 and row["gamma"] == 0.5
    assert row["accuracy"] == 0.5 and row["fd"] == 25 / 8  # 4 of 8 labels are 1; mean of 3 zeros and 5 fives


def _study(tcd=((0.3, 18.0, 0.994), (0.5, 21.0, 0.996)), pcm=(27.0, 1.0), teacher_acc=1.0, lcm_fd=24.0):
    rows = [{"model": "teacher", "sampler": "ddim", "steps": 8, "nfe": 16, "fd": 30.0, "accuracy": teacher_acc},
            {"model": "lcm_lora", "sampler": "lcm", "steps": 4, "nfe": 4, "fd": lcm_fd, "accuracy": 0.993}]
    rows += [{"model": "tcd", "sampler": "tcd", "steps": 4, "nfe": 4, "gamma": g, "fd": fd, "accuracy": acc}
             for g, fd, acc in tcd]
    rows.append({"model": "pcm", "sampler": "pcm", "steps": 4, "nfe": 8, "cfg": 2.0, "phases": 4, "fd": pcm[0],
                 "accuracy": pcm[1]})
    for r in rows:
        r["n"] = 1000
    return {"n": 1000, "n_main": 300, "extra_seed": 5, "reference_steps": 8, "rows": rows}


def test_claims_judge_every_setting_by_goal_a_rule():
    c = goal_a_claims(_study())
    assert set(c) == {"goal_tcd4_vs_lcm4_n1000_gamma0.3", "goal_tcd4_vs_lcm4_n1000_gamma0.5", "goal_pcm4_vs_lcm4_n1000"}
    good, low, pcm = c["goal_tcd4_vs_lcm4_n1000_gamma0.5"], c["goal_tcd4_vs_lcm4_n1000_gamma0.3"], c["goal_pcm4_vs_lcm4_n1000"]
    assert good["passed"] and "why" not in good  # 21 ≤ 24 and 0.996 ≥ 1.000 − 0.005
    assert good["statement"].startswith("goal (a) on 1000 samples (300 + 700 more): TCD adapter 4 steps (γ 0.5)")
    assert "teacher (DDIM 8 steps) − 0.5 point" in good["statement"]
    assert not low["passed"] and low["why"] == "at γ 0.3, 1000 samples: accuracy more than 0.5 point below the teacher's"
    assert not pcm["passed"] and pcm["why"].endswith("FD above the LCM-LoRA's") and "real CFG 2: 8 UNet" in pcm["statement"]
    # the bar moves with the teacher and the LCM-LoRA of the same study
    assert goal_a_claims(_study(teacher_acc=0.998))["goal_tcd4_vs_lcm4_n1000_gamma0.3"]["passed"]  # 0.994 ≥ 0.993
    assert not goal_a_claims(_study(lcm_fd=20.0))["goal_tcd4_vs_lcm4_n1000_gamma0.5"]["passed"]
    assert goal_a_claims(None) == {} and goal_a_claims({**_study(), "rows": _study()["rows"][1:]}) == {}


def test_check_claims_adds_them_beside_the_main_rows_claims():
    assert "goal_tcd4_vs_lcm4_n1000_gamma0.5" in check_claims([], {}, goal_a=_study())
    assert not any("_n1000" in k for k in check_claims([], {}))


def test_both_presets_pool_and_a_study_below_the_main_sample_count_is_off():
    for preset in PRESETS.values():
        assert preset.goal_a_samples == 1000 and preset.goal_a_samples > preset.n_samples
    plan = SimpleNamespace(labels=torch.zeros(300))
    off = dataclasses.replace(PRESETS["fast"], goal_a_samples=0)
    assert goal_a_study(off, None, plan, {}, None, {}, sample_fns=None) is None
    below = dataclasses.replace(PRESETS["fast"], goal_a_samples=300)  # not more than the main rows: nothing to pool
    assert goal_a_study(below, None, plan, {}, None, {}, sample_fns=None) is None


def test_a_config_without_the_rows_the_study_extends_is_refused_before_any_work(tmp_path):
    import dataclasses

    import pytest

    from lcm_lora.demo.run import run_demo_pipeline
    from lcm_lora.lcm_core.errors import ConfigError

    full = PRESETS["full"]
    for preset in PRESETS.values():
        check_goal_a_config(preset)
    check_goal_a_config(dataclasses.replace(full, goal_a_samples=0, teacher_steps=(1, 2, 4)))  # study off: no need
    for change, key in (({"teacher_steps": (1, 2, 4, 16)}, "teacher_steps"), ({"samplers": ("euler",)}, "samplers"),
                        ({"lcm_steps": (1, 2, 8)}, "lcm_steps"), ({"pcm_steps": (2, 8)}, "pcm_steps")):
        bad = dataclasses.replace(full, **change)
        with pytest.raises(ConfigError, match=f"^{key}: must contain .* goal_a_samples is 1000"):
            check_goal_a_config(bad)
        with pytest.raises(ConfigError, match=f"^{key}: "):  # the pipeline's first step: nothing trained or written
            run_demo_pipeline(tmp_path / "out", bad, cache_dir=tmp_path / "cache", progress=False)
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    check_goal_a_config(dataclasses.replace(full, pcm=False, pcm_steps=(2, 8)))  # no PCM adapter: no PCM row needed


def test_report_and_docs_show_the_pooled_rows(tmp_path):
    from lcm_lora.demo.docs import render_results_block
    from lcm_lora.demo.report import write_report
    from tests.test_demo_report import _results

    res = _results()
    study = _study()
    for r in study["rows"]:
        r.update(fd_se=3.0, fd_pixel=2.0)
    res["goal_a"] = study
    res["claims"] = check_claims(res["rows"], res["style"], goal_a=study)
    md = write_report(res, tmp_path)["report.md"].read_text(encoding="utf-8")
    assert "Goal (a) on 1000 samples: the 300 samples above and 700 more" in md
    assert "| TCD adapter 4 steps γ 0.5 | 1000 | 4 | 0.996 | 21.0 | 3.0 | 2.00 |" in md
    res.update(environment={"summary": "CPU"}, timings={"total": 1.0}, config={**res["config"], "seed": 0})
    block = render_results_block(res, "demo/results/x.json")
    assert "Goal (a) on 1000 samples (300 above + 700 more, pooled), 4 steps: teacher DDIM 8: FD 30.0 (s.e. 3.0)" in block
    assert row_label(study["rows"][-1]) == "PCM adapter 4 steps (cfg 2)"
