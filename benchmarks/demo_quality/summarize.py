"""Markdown table of ``WORK/results.jsonl`` written by ``tcd_recipes.py`` (one row per recipe)."""
import json
import sys


def fmt(r):
    rows = {(x["steps"], x.get("gamma")): x for x in r["rows"]}
    t4, t8, t16 = rows[(4, r["gamma"])], rows[(8, r["gamma"])], rows[(16, r["gamma"])]
    ref = {x["model"]: x for x in r["refs"]}
    st = r["style"]
    c = r["claims"]
    acc = r["accel"]
    g = {x["gamma"]: x for x in r["gamma_rows"]}
    mg = {x["gamma"]: x for x in r.get("merged_gamma_rows", [])}
    ok = lambda k: "PASS" if c[k]["passed"] else "FAIL"
    d = " / ".join(f"{a['tcd']['fd_vs_reference']:.1f}±{a['tcd']['fd_vs_reference_se']:.1f} vs {a['ddim8']['fd_vs_reference']:.1f} "
                   f"(floor {a['floor']['fd_vs_reference']:.1f}; n {n}) {'PASS' if a['passed'] else 'FAIL'}" for n, a in sorted(acc.items(), key=lambda kv: int(kv[0])))
    la = r.get("lcm_accel") or {}
    if la:
        d += "; LCM-LoRA " + " / ".join(f"{v['lcm_lora']['fd_vs_reference']:.1f}±{v['lcm_lora']['fd_vs_reference_se']:.1f} (n {n})"
                                        for n, v in sorted(la.items(), key=lambda kv: int(kv[0])))
    ts = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "–"
    if r.get("lcm_steps"):
        ts += f" (LCM {r['lcm_steps']} steps: {r['lcm_train_seconds']:.0f})" if r.get("lcm_train_seconds") else ""
    return (f"| {r['recipe']} | `{' '.join(r['overrides']) or '–'}` | {ts} | "
            f"{t4['fd']:.1f}±{t4['fd_se']:.1f}, acc {t4['accuracy']:.3f} vs LCM {ref['lcm_lora']['fd']:.1f}, teacher acc {ref['teacher']['accuracy']:.3f} {ok('goal_tcd4_vs_lcm4')} | "
            f"{t8['fd']:.1f} / {t16['fd']:.1f} {ok('goal_tcd_more_steps')} | "
            f"{st[1]['style_score']:.3f} / acc {st[1]['accuracy']:.3f} vs {st[0]['style_score']:.3f} / {st[0]['accuracy']:.3f} {ok('goal_tcd_style_merge')} | "
            f"{d} | "
            + ", ".join(f"γ{k:g}: {v['fd']:.1f}/{v['accuracy']:.3f}" + (f" (merge style {mg[k]['style_score']:.3f})" if k in mg else "")
                        for k, v in sorted(g.items())) + f" | {r['load']} |")


print("| recipe | overrides (on top of the demo's TCD overrides) | train s | (a) TCD-4 FD±s.e., acc | (b) FD 8 / 16 | (c) merge style / acc vs ref | (d) FD on fine-tune vs its DDIM-8 | γ sweep at 4 steps FD/acc | load |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    print(fmt(json.loads(line)))
