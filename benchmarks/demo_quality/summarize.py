"""Markdown table of ``WORK/results.jsonl`` written by ``tcd_recipes.py``: one row per recipe (its last
record, which carries the ``--n-big`` goal (d) numbers when a later run added them).

    .venv/bin/python benchmarks/demo_quality/summarize.py /tmp/q13work/results.jsonl
"""
import json
import sys


def _d(acc: dict, key: str, n: str) -> str:
    a = acc.get(n)
    if not a:
        return "–"
    row = a[key]
    return f"{row['fd_vs_reference']:.1f}±{row['fd_vs_reference_se']:.1f}"


def fmt(r: dict) -> str:
    rows = {(x["steps"], x.get("gamma")): x for x in r["rows"]}
    t4, t8, t16 = rows[(4, r["gamma"])], rows[(8, r["gamma"])], rows[(16, r["gamma"])]
    ref = {x["model"]: x for x in r["refs"]}
    st, c, acc, la = r["style"], r["claims"], r["accel"], r.get("lcm_accel") or {}
    g = {x["gamma"]: x for x in r["gamma_rows"]}
    mg = {x["gamma"]: x for x in r.get("merged_gamma_rows", [])}
    mg.setdefault(r["gamma"], r["style"][1])
    ok = lambda k: "✓" if c[k]["passed"] else "✗"  # noqa: E731
    ts = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "–"
    steps = next((o.split("=")[1] for o in r["overrides"] if o.startswith("train.max_steps=")), "300")
    d300 = acc["300"]
    tags = [] if r["gamma"] == 0.3 else ["γ %g" % r["gamma"]]
    if r.get("schedule", "tcd") != "tcd":
        tags.append(f"{r['schedule'].upper()} {r['phases']}-phase timesteps")
    if r.get("cfg", 1.0) != 1.0:
        guided = (f"first {r['cfg_steps']} steps" if r.get("cfg_steps") else
                  "steps at t in [{}, {}]".format(*r["cfg_interval"]) if r.get("cfg_interval") else "every step")
        tags.append(f"real CFG {r['cfg']:g} on {guided}: {t4['nfe']} evaluations at 4 steps")
    if r.get("lcm_overrides"):
        tags.append("LCM-LoRA with " + " ".join(r["lcm_overrides"]))
    gtag = f" ({', '.join(tags)})" if tags else ""
    d1k = acc.get("1000")
    return (f"| {r['recipe']}{gtag} | `{' '.join(o for o in r['overrides'] if not o.startswith('train.max_steps=')) or '–'}` | "
            f"{steps} | {ts} | "
            f"{t4['fd']:.1f}±{t4['fd_se']:.1f} vs {ref['lcm_lora']['fd']:.1f}; {t4['accuracy']:.3f} vs "
            f"{ref['teacher']['accuracy']:.3f} {ok('goal_tcd4_vs_lcm4')} | "
            f"{t8['fd']:.1f} / {t16['fd']:.1f} {ok('goal_tcd_more_steps')} | "
            f"{st[1]['style_score']:.3f} / {st[1]['accuracy']:.3f} {ok('goal_tcd_style_merge')} | "
            f"{_d(acc, 'tcd', '300')} vs {d300['ddim8']['fd_vs_reference']:.1f} {'✓' if d300['passed'] else '✗'} | "
            + (f"{_d(acc, 'tcd', '1000')} vs {d1k['ddim8']['fd_vs_reference']:.1f} (floor {d1k['floor']['fd_vs_reference']:.1f}) "
               f"{'✓' if d1k['passed'] else '✗'}; LCM {_d(la, 'lcm_lora', '1000')}" if d1k else "–")
            + f" | {g[0.0]['fd']:.1f} / {g[0.0]['accuracy']:.3f} / {mg[0.0]['style_score']:.3f}"
            + f" | {g[0.5]['fd']:.1f} / {g[0.5]['accuracy']:.3f} |")


def main():
    last = {}
    for line in open(sys.argv[1], encoding="utf-8"):
        r = json.loads(line)
        last[(r["recipe"], r["gamma"], r.get("schedule", "tcd"), r.get("cfg", 1.0), r.get("cfg_steps"),
              tuple(r.get("cfg_interval") or ()))] = r
    print("| recipe | overrides on the demo's TCD ones | steps | train s | (a) TCD-4 FD±s.e. (γ 0.3 unless named) vs LCM-4; accuracy vs "
          "teacher | (b) FD 8 / 16 steps | (c) merge style / accuracy (ref. 0.831 / 1.000) | (d) n 300: FD on fine-tune vs "
          "its DDIM-8 | (d) n 1000 | γ 0: FD / acc / merge style | γ 0.5: FD / acc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in last.values():
        print(fmt(r))


if __name__ == "__main__":
    main()
