"""Goal (d) on pooled samples (``demo/goal_d.py``): the pooling on a tiny random teacher against samples drawn
independently here, the claims' rule, the config check, the side-process balance, the report and the docs block."""
import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from lcm_lora.demo import metrics
from lcm_lora.demo import run as R
from lcm_lora.demo.claims import acceleration_claims, check_claims
from lcm_lora.demo.goal_a import pooled_images
from lcm_lora.demo.goal_d import REFERENCE_SEED_OFFSET, check_goal_d_config


class PixelInstruments:
    """Stands in for the classifiers: 3 features per image (mean, spread, centre pixel), accuracy = share of label 1."""

    def features(self, images):
        x = images.float().flatten(1)
        feats = torch.stack([x.mean(1), x.std(1), x[:, x.shape[1] // 2]], dim=1)
        return None, feats

    def measure(self, images, labels, fd_se=False):
        return {"accuracy": float((labels == 1).float().mean()), "style_score": float(images.mean())}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from lcm_lora.demo.evaluate import load_teacher
    from lcm_lora.training.tiny_models import build_tiny_teacher

    root = tmp_path_factory.mktemp("gd")
    folder = build_tiny_teacher(root / "teacher", image_channels=1, image_size=16, with_vae=False)
    cfg = dataclasses.replace(R.DemoConfig(), n_samples=6, goal_d_samples=10, batch_size=3, accel_reference_steps=3,
                              accel_ddim_steps=(2, 8), lcm_overrides=("train.max_steps=2", "train.batch_size=4"))
    data = R.export_training_data(root, cfg)
    torch.manual_seed(0)
    lcm, _ = R.distil_lcm_lora(root, cfg, folder, data, progress=False)
    teacher = load_teacher(folder)
    ft = copy.deepcopy(teacher.unet)  # a "fine-tune": the teacher's weights moved a little
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return cfg, teacher, ft, lcm


def test_pooled_images_append_the_extra_plan_in_batches():
    asked = []

    def extra_fn(sl, steps):
        asked.append((sl.start, sl.stop, steps))
        return SimpleNamespace(images=torch.full((sl.stop - sl.start, 1, 2, 2), 5.0), nfe=steps * 2)

    images, nfe = pooled_images(torch.zeros(3, 1, 2, 2), extra_fn, 5, 8, batch_size=2)
    assert asked == [(0, 2, 8), (2, 4, 8), (4, 5, 8)] and nfe == 16
    assert torch.equal(images, torch.cat([torch.zeros(3, 1, 2, 2), torch.full((5, 1, 2, 2), 5.0)]))


def test_pooled_rows_equal_the_main_and_extra_samples_drawn_independently(tiny_setup):
    """Every pooled row is the main row's samples plus the extra plan's, drawn here with the samplers called directly:
    the reference from its own plan (seed + 6), the rows from goal (a)'s extra plan (seed + 5)."""
    from lcm_lora.demo.evaluate import SamplePlan
    from lcm_lora.demo.fused_unet import unet_with
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.demo.student_sampling import sample_lcm_student
    from lcm_lora.demo.teacher_samplers import sample_teacher
    from lcm_lora.demo.universal_acceleration import universal_acceleration

    cfg, teacher, ft, lcm = tiny_setup
    inst = PixelInstruments()
    accel = universal_acceleration(cfg, teacher, ft, {"lcm_lora": (lcm, "lcm")}, inst, progress=False)
    po = accel["pooled"]
    assert (po["n"], po["n_main"], po["extra_seed"], po["reference_seed"]) == (10, 6, 5, REFERENCE_SEED_OFFSET)
    assert [r["model"] for r in po["rows"]] == ["finetune", "finetune", "lcm_lora"]
    assert [r["steps"] for r in po["rows"]] == [3, 8, 4] and all(r["n"] == 10 for r in po["rows"])
    assert "floor" not in " ".join(r["label"] for r in po["rows"])  # not pooled

    g, sc = cfg.guidance_scale, teacher.scheduler_config

    def plan_samples(plan, fn):
        c, u = teacher.embed(plan.labels)
        return fn(plan, c, u), plan.labels

    main, extra = SamplePlan.make(6, 16, 0), SamplePlan.make(4, 16, 5)
    ref_main, ref_extra = SamplePlan.make(6, 16, 3), SamplePlan.make(4, 16, 6)

    def ddim(steps):
        return lambda p, c, u: torch.cat([sample_teacher(ft, c[s], u[s], p.noise[s], "ddim", steps, sc, g).images
                                          for s in (slice(0, 3), slice(3, len(p.labels)))])

    fused = unet_with(ft, [(lcm, 1.0)])
    lcm_main = sample_lcm_student(fused, teacher.embed(main.labels)[0], main.noise, 4, seed=sampler_seed(0)).images
    c_extra = teacher.embed(extra.labels)[0]
    lcm_extra = torch.cat([sample_lcm_student(fused, c_extra[s], extra.noise[s], 4, seed=sampler_seed(5 + s.start)).images
                           for s in (slice(0, 3), slice(3, 4))])
    ref_main_images = sample_teacher(ft, *teacher.embed(ref_main.labels), ref_main.noise, "ddim", 3, sc, g).images
    ref = torch.cat([ref_main_images, plan_samples(ref_extra, ddim(3))[0]])
    ddim8 = torch.cat([sample_teacher(ft, *teacher.embed(main.labels), main.noise, "ddim", 8, sc, g).images,
                       plan_samples(extra, ddim(8))[0]])
    ref_stats = metrics.feature_statistics(inst.features(ref)[1])
    for row, images in ((po["rows"][1], ddim8), (po["rows"][2], torch.cat([lcm_main, lcm_extra]))):
        want = metrics.frechet_distance(*metrics.feature_statistics(inst.features(images)[1]), *ref_stats)
        assert row["fd_vs_reference"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert row["style_score"] == pytest.approx(float(images.mean()), abs=1e-4)
    labels = torch.cat([main.labels, extra.labels])
    assert po["rows"][2]["accuracy"] == pytest.approx(float((labels == 1).float().mean()), abs=1e-5)
    assert po["rows"][0]["role"] == "reference" and "fd_vs_reference" not in po["rows"][0]
    # the main rows are the ones of a run without the pooled study
    off = universal_acceleration(dataclasses.replace(cfg, goal_d_samples=0), teacher, ft, {"lcm_lora": (lcm, "lcm")},
                                 inst, progress=False)
    assert "pooled" not in off and off["rows"] == accel["rows"]


def _accel(pooled_tcd=17.0, pooled_ddim8=6.4):
    def row(label, model, steps, fd, se=1.0):
        return {"label": label, "model": model, "steps": steps, "fd_vs_reference": fd, "fd_vs_reference_se": se,
                "style_score": 0.97, "accuracy": 0.96, "n": 1000}

    main = [row("fine-tune, DDIM 8 steps", "finetune", 8, 20.2), row("fine-tune + TCD adapter", "tcd", 4, 19.8)]
    pooled = [{"label": "fine-tune, DDIM (reference, independent noise)", "model": "finetune", "steps": 25,
               "role": "reference", "style_score": 0.96, "accuracy": 0.97, "n": 1000},
              row("fine-tune, DDIM 8 steps", "finetune", 8, pooled_ddim8, 0.8),
              row("fine-tune + TCD adapter", "tcd", 4, pooled_tcd, 3.6)]
    return {"rows": main, "reference_steps": 25, "steps": 4,
            "pooled": {"n": 1000, "n_main": 300, "extra_seed": 5, "reference_seed": 6, "reference_steps": 25,
                       "steps": 4, "rows": pooled}}


def test_claims_judge_the_pooled_rows_beside_the_main_ones():
    c = acceleration_claims(_accel())
    assert c["goal_universal_acceleration_tcd"]["passed"]  # main rows: 19.8 < 20.2, as before
    p = c["goal_universal_acceleration_tcd_n1000"]
    assert not p["passed"] and p["detail"] == "FD 17.0 (s.e. 3.6) vs 6.4 (s.e. 0.8)"
    assert p["statement"].startswith("goal (d) on 1000 samples (300 + 700 more): TCD adapter applied to a full "
                                     "fine-tune it never saw, 4 steps")
    assert "style score 0.97" in p["why"]
    assert acceleration_claims(_accel(pooled_tcd=6.3))["goal_universal_acceleration_tcd_n1000"]["passed"]
    assert not acceleration_claims(_accel(pooled_tcd=6.4))["goal_universal_acceleration_tcd_n1000"]["passed"]  # below
    no_pool = {k: v for k, v in _accel().items() if k != "pooled"}
    assert set(acceleration_claims(no_pool)) == {"goal_universal_acceleration_tcd"}
    assert "goal_universal_acceleration_tcd_n1000" in check_claims([], {}, accel=_accel())


def test_full_preset_pools_and_a_config_without_ddim8_is_refused_before_any_work(tmp_path):
    from lcm_lora.demo.run import PRESETS, run_demo_pipeline
    from lcm_lora.lcm_core.errors import ConfigError

    full = PRESETS["full"]
    assert full.goal_d_samples == 1000 > full.n_samples and PRESETS["fast"].goal_d_samples == 0
    for preset in PRESETS.values():
        check_goal_d_config(preset)
    bad = dataclasses.replace(full, accel_ddim_steps=(4, 16))
    with pytest.raises(ConfigError, match="^accel_ddim_steps: must contain 8 while goal_d_samples is 1000"):
        check_goal_d_config(bad)
    with pytest.raises(ConfigError, match="^accel_ddim_steps: "):
        run_demo_pipeline(tmp_path / "out", bad, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    check_goal_d_config(dataclasses.replace(bad, goal_d_samples=0))


def test_the_pooled_study_counts_in_the_side_process_balance():
    from lcm_lora.demo.run import PRESETS, style_in_side_process

    full = PRESETS["full"]
    assert style_in_side_process(full)  # the side process still takes the style experiment at 1000
    assert not style_in_side_process(dataclasses.replace(full, goal_d_samples=3000))  # too much side work: main


def test_report_and_docs_show_the_pooled_rows(tmp_path):
    from lcm_lora.demo.docs import render_results_block
    from lcm_lora.demo.report import write_report
    from tests.test_demo_report import _results

    res = _results()
    accel = _accel()
    accel["finetune"] = {"style": "bold", "steps": 400, "batch_size": 64, "learning_rate": 2e-4}
    for r in accel["rows"]:
        r["nfe"] = 4
    for r in accel["pooled"]["rows"]:
        r["nfe"] = 16
    res["universal_acceleration"] = accel
    res["claims"] = check_claims(res["rows"], res["style"], accel=accel)
    md = write_report(res, tmp_path)["report.md"].read_text(encoding="utf-8")
    assert "Goal (d) on 1000 samples: the reference, the fine-tune's DDIM 8 and each adapter" in md
    assert "| fine-tune + TCD adapter | 1000 | 16 | 17.0 | 3.6 | 0.960 | 0.970 |" in md
    assert "**FAIL** — goal (d) on 1000 samples (300 + 700 more): TCD adapter" in md
    res.update(environment={"summary": "CPU"}, timings={"total": 1.0}, config={**res["config"], "seed": 0})
    block = render_results_block(res, "demo/results/x.json")
    assert ("Goal (d) on 1000 samples (300 above + 700 more, pooled), FD to the fine-tune's DDIM 25: fine-tune, DDIM 8 "
            "steps: FD 6.4 (s.e. 0.8), accuracy 0.960; fine-tune + TCD adapter: FD 17.0 (s.e. 3.6)") in block
