"""Write the demo's report: ``report.md`` and ``report.html`` from the same blocks, plus ``results.json``.

The report is assembled as a list of blocks (heading, paragraph, table, image, list) and rendered
twice, so the Markdown and HTML versions never disagree.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

from .teacher_samplers import MODEL_LABELS, SAMPLER_LABELS

README_ANCHOR = "why-a-claim-fails"  # the section of demo/README.md that explains FAIL claims


class Doc:
    """A minimal document: blocks rendered to Markdown and to standalone HTML."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def h(self, text: str, level: int = 2):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def bullets(self, items):
        self.blocks.append(("ul", list(items)))

    def table(self, header, rows):
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def img(self, src: str, alt: str):
        self.blocks.append(("img", src, alt))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif kind == "p":
                out += [b[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in b[1]] + [""]
            elif kind == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(str(c) for c in row) + " |" for row in b[2]]
                out.append("")
            elif kind == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif kind == "code":
                out += ["```", b[1], "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{_inline(c)}</th>" for c in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                body.append(f'<figure><img src="{e(b[1])}" alt="{e(b[2])}"><figcaption>{e(b[2])}</figcaption></figure>')
            elif kind == "code":
                body.append(f"<pre><code>{e(b[1])}</code></pre>")
        style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;line-height:1.45}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:right}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}"
                 "figcaption{color:#555;font-size:0.85em}code,pre{background:#f6f6f6}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _inline(text: str) -> str:
    """Escape, then render `code`, **bold** and [links](target) (the Markdown report's relative links)."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def _f(v, nd=2):
    return "–" if v is None else f"{v:.{nd}f}"


def _row_label(r) -> str:
    who = MODEL_LABELS.get(r["model"], r["model"])
    label = f"{who} {SAMPLER_LABELS.get(r['sampler'], r['sampler'])}"
    return label + (f" γ {r['gamma']:g}" if r.get("gamma") is not None else "")


def _claim_line(c: dict, readme: str) -> str:
    line = f"**{'PASS' if c['passed'] else 'FAIL'}** — {c['statement']}: {c['detail']}"
    if not c["passed"] and c.get("why"):
        line += f". Why: {c['why']} ([demo/README.md]({readme}#{README_ANCHOR}))"
    return line


def build_report(results: dict, readme_link: str = "../demo/README.md") -> Doc:
    """The report document for a ``results.json`` dict (see ``run.py`` for its fields); ``readme_link``:
    where demo/README.md is, relative to the report."""
    cfg, cal = results["config"], results["calibration"]
    doc = Doc("LCM-LoRA demo: teacher → LCM-LoRA → steps-vs-quality")
    env = results["environment"]
    load = ""
    if env.get("load_average_start") or env.get("load_average_end"):
        load = (f" Load average (1/5/15 min) at start {env.get('load_average_start')}, at end "
                f"{env.get('load_average_end')}: on a shared machine the timings are pessimistic.")
    doc.p(f"Preset **{cfg['preset']}**; {env['summary']}. Total time "
          f"{results['timings'].get('total', 0):.0f} s.{load} Every configuration is sampled from the same "
          f"{cfg['n_samples']} prompts (balanced over the 10 digits) and the same initial noise.")

    doc.h("Claims")
    doc.bullets([_claim_line(c, readme_link) for c in results["claims"].values()])

    doc.h("Quality vs steps")
    header = ["model / sampler", "steps", "UNet evals", "class accuracy", "FD ↓", "FD s.e.", "pixel FD ↓", "ms / image",
              "seconds"]
    rows = sorted(results["rows"], key=lambda r: (r["model"] != "teacher", r["sampler"], r["steps"]))
    doc.table(header, [[_row_label(r), r["steps"], r["nfe"], _f(r["accuracy"], 3), _f(r["fd"], 1), _f(r.get("fd_se"), 1),
                        _f(r["fd_pixel"], 2), _f(r["ms_per_image"], 1), _f(r["seconds"], 1)] for r in rows])
    doc.p(f"Real vs real (FD of {cal['real_vs_real_n']} real training images against the {cal['reference_n']} held-out "
          f"reference images): FD **{cal['fd_real_vs_real']:.1f}**, pixel FD {cal['fd_pixel_real_vs_real']:.2f} — the "
          f"floor a perfect generator would reach with this many samples. Teacher guidance scale {cfg['guidance_scale']}; "
          f"the distilled adapters run without CFG (one UNet evaluation per step). FD s.e.: bootstrap over the "
          f"row's own samples (100 resamples, reference fixed).")
    doc.p("Pixel FD tells a different story at the fewest steps: classifier FD rewards recognisable, varied "
          "digits, pixel FD also counts the speckle a 1–2-step student leaves (visible in its grid). So \"LCM-LoRA "
          "2 steps beats DDIM 8 steps\" holds in classifier FD but not in pixel FD, nor by eye.")
    gam = results.get("tcd_gamma_rows") or []
    if gam:
        doc.p(f"TCD γ sweep at {gam[0]['steps']} steps (γ = 0: deterministic; larger γ re-noises more between steps):")
        doc.table(["γ", "steps", "UNet evals", "class accuracy", "FD ↓", "FD s.e.", "pixel FD ↓"],
                  [[f"{r['gamma']:g}", r["steps"], r["nfe"], _f(r["accuracy"], 3), _f(r["fd"], 1), _f(r.get("fd_se"), 1),
                    _f(r["fd_pixel"], 2)] for r in gam])
    ga = results.get("goal_a")
    if ga:
        from .goal_a import row_label

        doc.p(f"Goal (a) on {ga['n']} samples: the {ga['n_main']} samples above and {ga['n'] - ga['n_main']} more (a plan of "
              f"their own, seed {ga['extra_seed']}), measured together; the accuracy reference is the teacher's DDIM "
              f"{ga['reference_steps']}. A 0.5-point accuracy margin is decided by one or two digits at 300 samples.")
        doc.table(["configuration", "samples", "UNet evals", "class accuracy", "FD ↓", "FD s.e.", "pixel FD ↓"],
                  [[row_label(r), r["n"], r["nfe"], _f(r["accuracy"], 3), _f(r["fd"], 1), _f(r.get("fd_se"), 1),
                    _f(r["fd_pixel"], 2)] for r in ga["rows"]])
    for name, alt in results.get("figures", {}).get("quality", []):
        doc.img(name, alt)

    doc.h("Samples")
    for name, alt in results.get("figures", {}).get("grids", []):
        doc.img(name, alt)

    st = results.get("style")
    if st:
        doc.h("Style LoRA merged with the LCM-LoRA")
        doc.p(f"Style LoRA: rank {st['settings']['rank']}, {st['settings']['steps']} steps of the ordinary diffusion "
              f"loss on the training digits rendered **{st['settings']['style']}**. Merged as τ' = λ1·τ_style + λ2·τ_LCM "
              f"with λ1 = {st['lambda1']}, λ2 = {st['lambda2']}. Style score = mean probability of \"styled\" under "
              f"a style classifier (real plain images {cal['style_score_real_plain']:.2f}, real styled "
              f"{cal['style_score_real_styled']:.2f}). FD here is against the plain reference digits, so it grows "
              f"with the style; it is shown to spot broken samples, not as a quality score.")
        doc.table(["configuration", "steps", "UNet evals", "style score", "class accuracy", "FD vs plain digits",
                   "merge error"],
                  [[r["label"], r["steps"], r["nfe"], _f(r["style_score"], 3), _f(r["accuracy"], 3), _f(r["fd"], 1),
                    "–" if r.get("merge_relative_error") is None else f"{r['merge_relative_error']:.2e}"]
                   for r in st["rows"]])
        hm = st.get("heatmap")
        if hm:
            doc.p(f"The λ1×λ2 heat maps sample {hm['n']} images per cell from their own noise draw (not the table's "
                  f"{cfg['n_samples']}), LCM {_steps(hm['steps'])}; a cell therefore differs from the table row at the same "
                  f"λ by about its sampling noise.")
        for name, alt in results.get("figures", {}).get("style", []):
            doc.img(name, alt)

    acc = results.get("universal_acceleration")
    if acc:
        ft = acc["finetune"]
        doc.h("Universal acceleration: the adapters on a fine-tune they never saw")
        doc.p(f"After distillation, every weight of a copy of the teacher is fine-tuned on **{ft['style']}** digits "
              f"({ft['steps']} steps, batch {ft['batch_size']}, lr {ft['learning_rate']:g}; ordinary ε loss). Each adapter "
              f"is fused into that fine-tune and sampled at {_steps(acc['steps'])} with its own sampler (no CFG); "
              f"FD is measured between those samples and the fine-tune's own DDIM {acc['reference_steps']}-step samples "
              f"(CFG {cfg['guidance_scale']}, an independent noise draw), in the digit classifier's features. The "
              f"\"floor\" row is the same sampler as the reference with other noise: the FD of a perfect match at this "
              f"sample count. Goal (d): below the fine-tune's own DDIM 8 steps.")
        doc.table(["configuration", "steps", "UNet evals", "FD to reference ↓", "s.e.", "class accuracy", "style score"],
                  [[r["label"], r["steps"], r["nfe"], _f(r.get("fd_vs_reference"), 1), _f(r.get("fd_vs_reference_se"), 1),
                    _f(r["accuracy"], 3), _f(r["style_score"], 3)] for r in acc["rows"]])
        po = acc.get("pooled")
        if po:
            doc.p(f"Goal (d) on {po['n']} samples: the reference, the fine-tune's DDIM 8 and each adapter on the fine-tune, "
                  f"the {po['n_main']} samples above and {po['n'] - po['n_main']} more each (the reference's from a plan "
                  f"of its own, seed {po['reference_seed']}; the rows' from goal (a)'s extra plan, seed "
                  f"{po['extra_seed']}), measured together. The floor row is not pooled (it would cost as much as the "
                  f"reference).")
            doc.table(["configuration", "samples", "UNet evals", "FD to reference ↓", "s.e.", "class accuracy",
                       "style score"],
                      [[r["label"], r["n"], r["nfe"], _f(r.get("fd_vs_reference"), 1), _f(r.get("fd_vs_reference_se"), 1),
                        _f(r["accuracy"], 3), _f(r["style_score"], 3)] for r in po["rows"]])

    neg = results.get("negative_prompts")
    if neg:
        doc.h("Negative prompts at few steps")
        doc.p(f"Positive prompt: the empty prompt (names no class; the teacher was trained with 10 % empty captions); "
              f"negative prompt: \"a handwritten digit c\", c balanced over {neg['n']} samples. Share = fraction of "
              f"samples the digit classifier reads as their c, with and without the negative prompt (same noise); "
              f"reduction = the difference. CFG with a negative prompt: ε = ε(neg) + g·(ε(pos) − ε(neg)); \"first k\" = "
              f"real CFG on the first k steps only, plain steps after. Goal: at least half the teacher's reduction "
              f"({neg['teacher_reduction'] * 100:.1f} points) at ≤ 2× the UNet evaluations of plain 4-step sampling.")
        doc.table(["model / sampler", "steps", "cfg", "CFG on", "UNet evals", "share without", "share with negative",
                   "reduction (points)"],
                  [[f"{MODEL_LABELS.get(r['model'], r['model'])} {SAMPLER_LABELS.get(r['sampler'], r['sampler'])}",
                    r["steps"], f"{r['cfg']:g}", "–" if r["cfg"] <= 1 else ("every step" if r["cfg_steps"] is None
                                                                         else f"first {r['cfg_steps']}"),
                    r["nfe"], _f(r["share_without"], 3), _f(r["share"], 3), f"{r['reduction'] * 100:.1f}"]
                   for r in neg["rows"]])

    models = results.get("models")
    if models:
        doc.h("Models")
        doc.p("Everything the demo made, copied next to this report (the cache may be cleared). Train your own "
              "adapter from the same teacher and data with the tiny config, as written:")
        doc.code("lcm-lora train --config configs/tiny_cpu.yaml --output RUN "
                 "teacher=DIR/models/teacher data=DIR/models/data\n"
                 "lcm-lora train --config configs/tiny_cpu.yaml --output RUN_TCD "
                 "teacher=DIR/models/teacher data=DIR/models/data lcd.objective=tcd\n"
                 + ("lcm-lora train --config configs/tiny_cpu.yaml --output RUN_PCM "
                    "teacher=DIR/models/teacher data=DIR/models/data lcd.objective=pcm\n" if results.get("pcm") else "")
                 + "(DIR: this report's folder)")
        doc.bullets([f"[`{m['path']}`]({m['path']}) — {m['what']}" for m in models])

    doc.h("Setup")
    t, lt = results["teacher"], results["lcm_lora"]
    doc.bullets([
        f"Data: scikit-learn digits (1797 real 8×8 scans, shipped inside the scikit-learn wheel), bilinearly upsampled "
        f"to {cfg['resolution']}×{cfg['resolution']}; stratified split: {cal['train_n']} train (generators), "
        f"{cal['classifier_train_n']} classifier, {cal['reference_n']} reference.",
        f"Teacher: {t['description']} ({t['source']}).",
        f"LCM-LoRA: `lcm-lora train` with {lt['config_file']} and overrides `{' '.join(lt['overrides'])}`; "
        f"{lt['seconds']:.0f} s{_load(lt)}.",
        *([f"TCD adapter: `lcm-lora train` with {results['tcd']['config_file']} and overrides "
           f"`{' '.join(results['tcd']['overrides'])}` (same teacher, data, ω, target and step budget); "
           f"{results['tcd']['seconds']:.0f} s{_load(results['tcd'])}."] if results.get("tcd") else []),
        *([f"PCM adapter: `lcm-lora train` with {results['pcm']['config_file']} and overrides "
           f"`{' '.join(results['pcm']['overrides'])}` (same teacher, data, ω, target and step budget), sampled by the "
           f"TCD sampler at γ 0 on its own phase edges (the adapter's recipe, `lcm_core.phased_timesteps`); "
           f"{results['pcm']['seconds']:.0f} s{_load(results['pcm'])}."] if results.get("pcm") else []),
        f"Digit classifier (small CNN, trained on the classifier split only): held-out accuracy "
        f"{cal['digit_accuracy_heldout']:.3f}; FD is computed in its 64-d penultimate features (not FID).",
    ])
    doc.p("Timings are wall-clock on this machine's CPU threads and include Python overhead; on a shared machine "
          "they are pessimistic. FD has a sample-size bias (compare rows with each other and with the real-vs-real "
          "floor, not with FID values elsewhere).")
    return doc


def _steps(k: int) -> str:
    return f"{k} step" if k == 1 else f"{k} steps"


def _load(info: dict) -> str:
    la = info.get("load_average")
    return f" (load average then {la[0]:.1f})" if la else ""


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and ``report.html`` into ``out_dir`` (atomic, overwriting)."""
    from ..lcm_core.atomic_write import atomic_file

    out_dir = Path(out_dir)
    readme = Path(__file__).resolve().parent / "README.md"
    doc = build_report(results, readme_link=Path(os.path.relpath(readme, out_dir.resolve())).as_posix())
    paths = {}
    for name, text in (("results.json", json.dumps(results, indent=1, sort_keys=False)),
                       ("report.md", doc.markdown()), ("report.html", doc.html())):
        with atomic_file(out_dir / name, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
        os.chmod(out_dir / name, 0o644)  # atomic_file's temporary file is private (0600); a report is not
        paths[name] = out_dir / name
    return paths
