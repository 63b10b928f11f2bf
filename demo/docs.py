"""Keep the demo's numbers in the docs equal to a run's ``results.json``.

``demo/README.md`` and ``BENCHMARKS.md`` carry a marked block rendered from a committed copy of a
run's ``results.json`` (``demo/results/``); nobody types those numbers by hand.
``tests/test_demo_docs.py`` fails when a block and its JSON disagree. After a new run::

    cp demo_out/results.json demo/results/full.json
    python -m lcm_lora.demo.docs demo/results/full.json demo/README.md BENCHMARKS.md

``--check`` only compares (exit 1 on a difference).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .teacher_samplers import MODEL_LABELS, SAMPLER_LABELS

BEGIN = "<!-- BEGIN demo-results: generated from {src} by `python -m lcm_lora.demo.docs`; do not edit by hand -->"
END = "<!-- END demo-results -->"
_BLOCK = re.compile(r"<!-- BEGIN demo-results: generated from (?P<src>\S+) by .*?-->\n.*?<!-- END demo-results -->",
                    re.DOTALL)


def _f(v, nd):
    return "–" if v is None else f"{v:.{nd}f}"


def _series_table(rows, metric: str, nd: int, label: str) -> list[str]:
    series: dict[str, dict[int, dict]] = {}
    for r in rows:
        name = f"{MODEL_LABELS.get(r['model'], r['model'])} {SAMPLER_LABELS.get(r['sampler'], r['sampler'])}"
        if r.get("gamma") is not None:
            name += f" γ {r['gamma']:g}"
        series.setdefault(name, {})[r["steps"]] = r
    steps = sorted({r["steps"] for r in rows})
    out = [f"| {label} | " + " | ".join(f"{s} step" if s == 1 else f"{s} steps" for s in steps) + " |",
           "|---|" + "---|" * len(steps)]
    for name, by in series.items():
        out.append(f"| {name} | " + " | ".join(_f(by[s][metric], nd) if s in by and by[s].get(metric) is not None
                                                 else "" for s in steps) + " |")
    return out


def render_results_block(results: dict, source: str) -> str:
    """Markdown for ``results`` (a ``results.json`` dict); ``source`` names the JSON file in the marker."""
    cfg, env, cal = results["config"], results["environment"], results["calibration"]
    t = results["timings"]
    lines = [BEGIN.format(src=source), ""]
    lt, tc = results.get("lcm_lora", {}), results.get("tcd") or {}
    la = env.get("load_average_start"), env.get("load_average_end")
    lines.append(f"Preset **{cfg['preset']}**, seed {cfg['seed']}, {cfg['n_samples']} samples per row; {env['summary']}; "
                 f"total {t.get('total', 0):.0f} s (load average at start {la[0]}, at end {la[1]}). Distillation with the "
                 f"same step budget: LCM-LoRA {lt.get('seconds', 0):.0f} s, TCD adapter {tc.get('seconds', 0):.0f} s"
                 + (f", PCM adapter {results['pcm'].get('seconds', 0):.0f} s" if results.get("pcm") else "") + ". "
                 f"Real-vs-real FD floor {cal['fd_real_vs_real']:.1f} (pixel {cal['fd_pixel_real_vs_real']:.2f}).")
    lines += ["", *_series_table(results["rows"], "fd", 1, "FD ↓ (classifier features)"), ""]
    lines += [*_series_table(results["rows"], "fd_se", 1, "FD bootstrap s.e."), ""]
    lines += [*_series_table(results["rows"], "fd_pixel", 2, "pixel FD ↓"), ""]
    lines += [*_series_table(results["rows"], "accuracy", 3, "class accuracy"), ""]
    gam = results.get("tcd_gamma_rows") or []
    if gam:
        lines += [f"TCD γ sweep at {gam[0]['steps']} steps: " + "; ".join(
            f"γ {r['gamma']:g}: FD {r['fd']:.1f} (s.e. {_f(r.get('fd_se'), 1)}), accuracy {r['accuracy']:.3f}" for r in gam)
            + ".", ""]
    ga = results.get("goal_a")
    if ga:
        from .goal_a import row_label

        lines += [f"Goal (a) on {ga['n']} samples ({ga['n_main']} above + {ga['n'] - ga['n_main']} more, pooled), 4 steps: "
                  + "; ".join(f"{row_label(r)}: FD {r['fd']:.1f} (s.e. {_f(r.get('fd_se'), 1)}), accuracy "
                              f"{r['accuracy']:.3f}" for r in ga["rows"]) + ".", ""]
    st = results.get("style")
    if st:
        lines += ["| style experiment | steps | style score | class accuracy |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['steps']} | {r['style_score']:.3f} | {r['accuracy']:.3f} |" for r in st["rows"]]
        lines.append("")
    acc = results.get("universal_acceleration")
    if acc:
        lines += [f"| universal acceleration (fine-tune on {acc['finetune']['style']} digits) | steps | FD to the fine-tune's "
                  f"DDIM {acc['reference_steps']} ↓ | s.e. | class accuracy |", "|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['steps']} | {_f(r.get('fd_vs_reference'), 1)} | {_f(r.get('fd_vs_reference_se'), 1)} "
                  f"| {r['accuracy']:.3f} |" for r in acc["rows"]]
        lines.append("")
        po = acc.get("pooled")
        if po:
            lines += [f"Goal (d) on {po['n']} samples ({po['n_main']} above + {po['n'] - po['n_main']} more, pooled), FD to "
                      f"the fine-tune's DDIM {po['reference_steps']}: " + "; ".join(
                          f"{r['label']}: FD {r['fd_vs_reference']:.1f} (s.e. {_f(r.get('fd_vs_reference_se'), 1)}), "
                          f"accuracy {r['accuracy']:.3f}" for r in po["rows"] if "fd_vs_reference" in r) + ".", ""]
    neg = results.get("negative_prompts")
    if neg:
        lines += ["| negative prompt (empty prompt, negative names class c) | steps | cfg | CFG on | UNet evals | share of c "
                  "without → with | reduction (points) |", "|---|---|---|---|---|---|---|"]
        for r in neg["rows"]:
            on = "–" if r["cfg"] <= 1 else ("every step" if r["cfg_steps"] is None else f"first {r['cfg_steps']}")
            lines.append(f"| {MODEL_LABELS.get(r['model'], r['model'])} {SAMPLER_LABELS.get(r['sampler'], r['sampler'])} | "
                         f"{r['steps']} | {r['cfg']:g} | {on} | {r['nfe']} | {r['share_without']:.3f} → {r['share']:.3f} | "
                         f"{r['reduction'] * 100:.1f} |")
        lines.append("")
    lines.append("Claims of this run:")
    lines.append("")
    lines += [f"- **{'PASS' if c['passed'] else 'FAIL'}** — {c['statement']}: {c['detail']}" for c in results["claims"].values()]
    lines += ["", END]
    return "\n".join(lines)


def update_text(text: str, results_by_source) -> str:
    """``text`` with every marked block re-rendered from its own source; ``results_by_source(src) -> dict``."""
    def sub(m):
        src = m.group("src")
        return render_results_block(results_by_source(src), src)

    return _BLOCK.sub(sub, text)


def blocks_in(text: str) -> list[str]:
    return [m.group("src") for m in _BLOCK.finditer(text)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lcm_lora.demo.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json to render (its repository-relative path is written in the marker)")
    p.add_argument("files", nargs="+", help="Markdown files with a marked block (or add one: --append)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if a block differs")
    p.add_argument("--append", action="store_true", help="append a block to files that have none")
    a = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]  # markers hold repository-relative paths, whatever the current folder
    src = Path(os.path.relpath(Path(a.results).resolve(), root)).as_posix()
    results = json.loads(Path(a.results).read_text(encoding="utf-8"))
    bad = 0
    for f in map(Path, a.files):
        text = f.read_text(encoding="utf-8")
        if not blocks_in(text):
            if not a.append:
                print(f"error: {f}: no demo-results block (use --append to add one)", file=sys.stderr)
                return 2
            new = text.rstrip("\n") + "\n\n" + render_results_block(results, src) + "\n"
        else:
            new = update_text(text, lambda s: results if s == src else json.loads((root / s).read_text(encoding="utf-8")))
        if new != text:
            if a.check:
                print(f"{f}: demo-results block differs from {src}", file=sys.stderr)
                bad = 1
            else:
                f.write_text(new, encoding="utf-8")
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
