"""README "Which objective to train" quotes the full preset's results: every number there must be the one in
``demo/results/full.json`` (regenerating the results without updating the table fails here)."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### Which objective to train")
    return text[start:text.index("\n### ", start + 1)]


def _row(rows, model, sampler, steps, **extra):
    return next(r for r in rows if r["model"] == model and r["sampler"] == sampler and r["steps"] == steps
                and all(r.get(k) == v for k, v in extra.items()))


def test_objective_table_quotes_the_committed_full_preset_results():
    res = json.loads((ROOT / "demo" / "results" / "full.json").read_text(encoding="utf-8"))
    rows, section = res["rows"], _section()
    fd = {(m, s, k): _row(rows, m, s, k)["fd"] for m, s, k in
          [("lcm_lora", "lcm", k) for k in (2, 4, 8)] + [("tcd", "tcd", k) for k in (4, 8, 16)] + [("pcm", "pcm", 4)]
          + [("teacher", "ddim", 32)]}
    expected = [
        f"FD {fd['lcm_lora', 'lcm', 2]:.1f} / {fd['lcm_lora', 'lcm', 4]:.1f} / {fd['lcm_lora', 'lcm', 8]:.1f} at 2 / 4 / 8 steps; "
        f"accuracy {_row(rows, 'lcm_lora', 'lcm', 4)['accuracy']:.3f} at 4",
        f"FD {fd['tcd', 'tcd', 4]:.1f} / {fd['tcd', 'tcd', 8]:.1f} at 4 / 8 steps (16: {fd['tcd', 'tcd', 16]:.1f}, within one s.e. of 4 steps)",
        f"FD {fd['pcm', 'pcm', 4]:.1f} at 4 steps, near the CFG-2 teacher's ({fd['teacher', 'ddim', 32]:.1f})",
        f"teacher's own DDIM at 32 steps reads FD {fd['teacher', 'ddim', 32]:.1f}, accuracy "
        f"{_row(rows, 'teacher', 'ddim', 32)['accuracy']:.3f}",
    ]
    tcd4 = _row(rows, "tcd", "tcd", 4)
    assert fd["tcd", "tcd", 16] <= tcd4["fd"] + tcd4["fd_se"]  # the table says "within one s.e. of 4 steps"
    pooled = res["goal_a"]["rows"]
    tcd3, tcd5 = (_row(pooled, "tcd", "tcd", 4, gamma=g) for g in (0.3, 0.5))
    expected.append(f"on {res['goal_a']['n']} samples at 4 steps FD {tcd3['fd']:.1f} (γ 0.3) / {tcd5['fd']:.1f} (γ 0.5) "
                    f"vs the LCM-LoRA's {_row(pooled, 'lcm_lora', 'lcm', 4)['fd']:.1f}, accuracy "
                    f"{tcd3['accuracy']:.3f} / {tcd5['accuracy']:.3f}")
    style = {r["label"]: r for r in res["style"]["rows"]}

    def merged(prefix):
        return next(r for label, r in style.items() if label.startswith(prefix) and "fused separately" in label)

    ref = next(r for label, r in style.items() if label.endswith("(reference)"))
    pcm, lcm, tcd = merged("PCM: style"), merged("style λ1"), merged("TCD: style")
    expected.append(f"style {pcm['style_score']:.3f} vs the 25-step reference's {ref['style_score']:.3f}, accuracy "
                    f"{pcm['accuracy']:.3f} (the LCM-LoRA: {lcm['style_score']:.3f} / {lcm['accuracy']:.3f}, the TCD "
                    f"adapter: {tcd['style_score']:.3f} / {tcd['accuracy']:.3f})")
    neg = res["negative_prompts"]
    best = {m: _row(neg["rows"], m, s, 4, cfg=2.0, cfg_steps=None) for m, s in (("lcm_lora", "lcm"), ("tcd", "tcd"))}
    expected.append(f"{100 * best['lcm_lora']['reduction']:.1f} points for the LCM-LoRA and "
                    f"{100 * best['tcd']['reduction']:.1f} for the TCD adapter at cfg 2 on every step, "
                    f"{best['tcd']['nfe']} UNet evaluations; the teacher at\n25 steps: {100 * neg['teacher_reduction']:.1f}")
    flat = " ".join(section.split())
    for quote in expected:
        assert " ".join(quote.split()) in flat, quote
