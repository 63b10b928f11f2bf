"""CPU threads and OpenMP wait policy under a competing load (issue 17, item 10).

    python benchmarks/threads/bench_threads.py [--rounds 2] [--steps 8] [--evals 12] [--json out.json]

Two workloads, each in a fresh process (the OpenMP runtime reads ``OMP_WAIT_POLICY`` when torch
loads), timed inside the process so start-up is excluded:

* ``train``: ``lcm-lora train --config configs/tiny_cpu.yaml`` on the demo's tiny teacher and data
  (``lcm-lora demo --export``), ``--steps`` optimizer steps of batch 8; time = first to last
  ``step`` event of ``events.jsonl``;
* ``demo``: the demo's evaluation work — the digit teacher's UNet (``demo/assets``) on a batch of
  256 16-px images with classifier-free guidance, ``--evals`` UNet evaluations (what every demo sampler runs).

Each runs with ``--threads`` 1 and 2, with libgomp's default wait policy (threads spin a while
before sleeping; what torch does unless told) and with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads
sleep; what ``lcm-lora`` sets since issue 17), with no extra load and next to two busy processes
(pure-Python spin loops, i.e. one per core on a 2-core box). Configurations are interleaved in
every round and the load average is printed with each row; ratios are against ``threads=2,
default policy`` of the same load in the same round.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (threads, wait policy): torch's default (2 threads, spinning), the alternatives, and what lcm-lora ships
# ("auto", "PASSIVE") = no --threads: the CLI's per-workload default (lcm_core/cpu_threads.py)
CONFIGS = [(2, "default"), (2, "PASSIVE"), (1, "PASSIVE"), ("auto", "PASSIVE")]

DEMO_SNIPPET = r"""
import json, sys, time, torch
from lcm_lora.demo.teacher_assets import DEFAULT_ASSET, materialize_teacher
from lcm_lora.training.teacher import load_teacher_folder
from pathlib import Path
folder, evals = Path(sys.argv[1]), int(sys.argv[2])
if sys.argv[3] == "auto":
    from lcm_lora.lcm_core.cpu_threads import apply_thread_default
    apply_thread_default(None)  # what `lcm-lora demo` does without --threads
else:
    torch.set_num_threads(int(sys.argv[3]))
threads_used = torch.get_num_threads()
t = load_teacher_folder(folder)
unet = t.unet.eval()
g = torch.Generator().manual_seed(0)
x = torch.randn(256, unet.config.in_channels, 16, 16, generator=g)
text = t.encode_text(["a handwritten digit 3"] * 256 + [""] * 256)
cond = text["hidden"]
with torch.no_grad():
    unet(torch.cat([x, x]), torch.tensor(500), encoder_hidden_states=cond)  # warm-up
    t0 = time.perf_counter()
    for i in range(evals):
        unet(torch.cat([x, x]), torch.tensor(999 - 50 * i), encoder_hidden_states=cond)
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": threads_used}))
"""


def loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run_train(assets: Path, threads: int, env: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as out:
        cmd = [sys.executable, "-m", "lcm_lora.cli.main", "train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
               f"teacher={assets / 'teacher'}", f"data={assets / 'data'}", "--output", out, "--no-progress",
               *(["--threads", str(threads)] if threads != "auto" else []), f"max_steps={steps}", "batch_size=8", "validation.every=0", "checkpoint.every=0",
               f"data.cache_dir={assets / 'cache'}"]
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=3600)
        events = [json.loads(line) for line in Path(out, "events.jsonl").read_text().splitlines()]
        times = [e["time"] for e in events if e["event"] == "step"]
        used = next((e.get("threads") for e in events if e["event"] == "start"), None)
        return (times[-1] - times[0]) * steps / max(1, steps - 1), used


def run_demo(assets: Path, threads: int, env: dict, evals: int) -> float:
    done = subprocess.run([sys.executable, "-c", DEMO_SNIPPET, str(assets / "teacher"), str(evals), str(threads)],
                          check=True, env=env, capture_output=True, text=True, timeout=3600)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["seconds"], out["threads"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--evals", type=int, default=12)
    ap.add_argument("--assets", default=None, help="folder of `lcm-lora demo --export` (made if missing)")
    ap.add_argument("--workloads", default="train,demo")
    ap.add_argument("--json", default=None)
    ap.add_argument("--configs", default=",".join(f"{t}:{p}" for t, p in CONFIGS),
                    help="THREADS:POLICY,... (policies: default, PASSIVE, SPIN10k)")
    a = ap.parse_args()
    assets = Path(a.assets or tempfile.mkdtemp(prefix="bench_threads_assets_"))
    if not (assets / "teacher").is_dir():
        subprocess.run([sys.executable, "-m", "lcm_lora.cli.main", "demo", "--export", str(assets)], check=True)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    policies = {"default": dict(base, OMP_WAIT_POLICY=""), "PASSIVE": dict(base, OMP_WAIT_POLICY="PASSIVE"),
                # libgomp spins GOMP_SPINCOUNT iterations, then sleeps (default policy: 300 000; PASSIVE: 0)
                "SPIN10k": dict(base, OMP_WAIT_POLICY="", GOMP_SPINCOUNT="10000")}
    configs = [(int(t) if t != "auto" else t, pol) for t, pol in (c.split(":") for c in a.configs.split(","))]
    # "default": an empty value stops the CLI setting PASSIVE and leaves libgomp at its default policy.
    rows = []
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load {loadavg()}", flush=True)
    for rnd in range(a.rounds):
        for load in (0, 2):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
            try:
                time.sleep(1.0 if load else 0.0)
                for workload in a.workloads.split(","):
                    for threads, policy in configs:
                            env = policies[policy]
                            la = loadavg()
                            fn = run_train if workload == "train" else run_demo
                            seconds, used = fn(assets, threads, env, a.steps if workload == "train" else a.evals)
                            row = dict(round=rnd, workload=workload, extra_load=load, threads=threads, policy=policy,
                                       seconds=round(seconds, 3), loadavg=la, threads_used=used)
                            rows.append(row)
                            print(json.dumps(row), flush=True)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    print("\n| workload | extra busy processes | threads | wait policy | median s | vs 2 threads, default policy "
          "| vs fair share | load avg at start |")
    print("|---|---|---|---|---|---|---|---|")
    cores = os.cpu_count() or 1
    for workload in a.workloads.split(","):
        idle = [r for r in rows if r["workload"] == workload and r["extra_load"] == 0]
        # the work W (core-seconds) is the idle single-thread time; a fair share of `cores` among
        # (k + 1) busy processes gives W * (k + 1) / cores, and on an idle machine the best time seen
        one = [r["seconds"] for r in idle if r["threads_used"] == 1]
        work = statistics.median(one) if one else None
        best_idle = min(statistics.median(r["seconds"] for r in idle if (r["threads"], r["policy"]) == c) for c in configs)
        for load in (0, 2):
            sel = [r for r in rows if r["workload"] == workload and r["extra_load"] == load]
            ref_rows = [r["seconds"] for r in sel if r["threads"] == 2 and r["policy"] == "default"]
            ref = statistics.median(ref_rows) if ref_rows else None
            fair = best_idle if load == 0 else (work * (load + 1) / cores if work else None)
            for threads, policy in configs:
                    rs = [r for r in sel if r["threads"] == threads and r["policy"] == policy]
                    med = statistics.median(r["seconds"] for r in rs)
                    label = threads if threads != "auto" else f"auto ({rs[0]['threads_used'] or 'CLI default'})"
                    vs_ref = f"{med / ref:.2f}" if ref else "–"
                    vs_fair = f"{med / fair:.2f}" if fair else "–"
                    print(f"| {workload} | {load} | {label} | {policy} | {med:.2f} | {vs_ref} | {vs_fair} | {rs[0]['loadavg']} |")
    print(f"\nfair share: idle = the best idle median; with k busy processes = W·(k+1)/{cores}, W = the idle "
          "median of the 1-thread runs (the workload's CPU work). 'vs fair share' ≤ 1 meets it.")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
