"""The paper's claims on the embedded demo, fast preset (one seeded end-to-end run, ~3+ min on 2 cores).

Claims (issue "Embedded end-to-end demo and fidelity benchmark"):

1. The distilled LCM-LoRA at 4 steps beats the teacher's DDIM at 4 steps on FD by a margin:
   FD(LCM 4) <= (1 - FD_MARGIN) * FD(DDIM 4), with class accuracy at most 1 point lower.
2. The merged style + LCM adapter (concat merge, λ1 0.8, λ2 1.0) at 4 steps is closer in style
   score to the style LoRA with the teacher's DDIM at 25 steps than the style LoRA with DDIM at 4 steps.
   Measured here it is not (it over-shoots the reference towards the real styled images): that form is
   an xfail(strict) test carrying the numbers; what holds — the merged adapter retains at least the
   reference's style at unchanged class accuracy — is asserted.

Both are measured against the same prompts and initial noise, by a classifier trained on real
images the generators never saw. The run is seeded; FD_MARGIN was set well inside the gap
observed (FD 35.9 vs 44.7, 20 % lower; demo/README.md), so the test does not hinge on noise.
"""
import pytest

from lcm_lora.demo.run import PRESETS, find_row, run_demo_pipeline

FD_MARGIN = 0.1
ACCURACY_DROP = 0.01

# In the default run: the issue asks for these claims to be checked by tests (fast preset, ≈3.5 min on 2 cores).


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo_out")
    return out, run_demo_pipeline(out, PRESETS["fast"], cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_lcm_lora_4_steps_beats_teacher_ddim_4_steps(fast_run):
    _, res = fast_run
    lcm4 = find_row(res["rows"], "lcm_lora", "lcm", 4)
    ddim4 = find_row(res["rows"], "teacher", "ddim", 4)
    assert lcm4["nfe"] == 4 and ddim4["nfe"] == 8
    assert lcm4["fd"] <= (1 - FD_MARGIN) * ddim4["fd"], (lcm4, ddim4)
    assert lcm4["accuracy"] >= ddim4["accuracy"] - ACCURACY_DROP, (lcm4, ddim4)


def _style_rows(res):
    rows = res["style"]["rows"]
    ref = next(r for r in rows if "(reference)" in r["label"])
    ddim4 = next(r for r in rows if r["label"].startswith("teacher + style") and r["sampler"] == "ddim" and r["steps"] == 4)
    merged = next(r for r in rows if r["label"].startswith("merged (concat)"))
    plain = next(r for r in rows if r["label"].startswith("teacher (no style)"))
    assert ref["steps"] == 25 and merged["steps"] == 4
    return ref, ddim4, merged, plain


@pytest.mark.xfail(strict=True, reason=(
    "measured: the merged adapter over-shoots the reference's style score (fast preset: merged 0.900, reference "
    "0.814, DDIM-4 0.872, real styled images 0.967) — it keeps the style, more strongly than the 25-step "
    "reference, so the issue's 'closer to the reference' form of the claim does not hold here; see "
    "test_merged_style_adapter_retains_the_style and demo/README.md"))
def test_merged_style_adapter_is_closer_to_reference_than_ddim4(fast_run):
    _, res = fast_run
    ref, ddim4, merged, _ = _style_rows(res)
    assert abs(merged["style_score"] - ref["style_score"]) < abs(ddim4["style_score"] - ref["style_score"])


def test_merged_style_adapter_retains_the_style(fast_run):
    _, res = fast_run
    ref, _, merged, plain = _style_rows(res)
    assert ref["style_score"] > plain["style_score"] + 0.3  # the style LoRA really changes the look
    assert merged["style_score"] >= ref["style_score"] - 0.05
    assert merged["accuracy"] >= ref["accuracy"] - ACCURACY_DROP


def test_report_and_cache(fast_run, tmp_path):
    out, res = fast_run
    for name in ("report.md", "report.html", "results.json", "fd_vs_steps.png", "heatmap_style_score.png",
                 "grid_lcm_lora_lcm.png"):
        assert (out / name).is_file(), name
    assert res["claims"]["lcm4_beats_ddim4"]["passed"] and res["claims"]["style_merge_retains_style"]["passed"]
