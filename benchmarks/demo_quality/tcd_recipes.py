"""Issue 13 quality goals (a)–(d) for candidate TCD distillation recipes, on the demo's own teacher.

Reuses a demo cache (``lcm-lora demo --cache-dir DIR`` of the fast preset: teacher, classifiers,
training data, LCM-LoRA, style LoRA, full fine-tune) read-only: the classifiers are copied into
``--work``. Each recipe is a list of trainer ``key=value`` overrides on top of the demo's own
(:func:`lcm_lora.demo.run.lcm_overrides`, i.e. the adapter the demo would train, plus
``lcd.objective=tcd``); it is distilled with ``training.train`` (the code behind ``lcm-lora train``)
and measured with the demo's evaluation functions (``SamplePlan``, ``sample_rows``, the samplers,
``merge_adapters``, ``tcd_claims`` / ``acceleration_claims``) at ``--n`` samples (the full preset's 300).

Goal (d) is also measured with ``--n-big`` samples (same construction: the fine-tune's own DDIM-25
reference from an independent noise draw) to tell whether a FAIL inside the 300-sample s.e. is real.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/tcd_recipes.py --cache /tmp/dcache_cold \
        --work /tmp/q13work --recipe baseline --adapter /tmp/dcache_cold/tcd-7e3dd7e1124f/tcd_lora.safetensors
    nice -n 5 .venv/bin/python benchmarks/demo_quality/tcd_recipes.py --cache /tmp/dcache_cold \
        --work /tmp/q13work --recipe k25 lcd.num_ddim_timesteps=25

Prints one JSON line per recipe and appends it to ``WORK/results.jsonl``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lcm_lora.demo import metrics
from lcm_lora.demo.claims import acceleration_claims, tcd_claims
from lcm_lora.demo.config import PRESETS
from lcm_lora.demo.evaluate import SamplePlan, build_instruments, load_teacher, sample_rows
from lcm_lora.demo.fused_unet import unet_with
from lcm_lora.demo.run import REPO_ROOT, lcm_overrides
from lcm_lora.demo.sampler_seeds import sampler_seed
from lcm_lora.demo.student_sampling import sample_lcm_student, sample_tcd_student
from lcm_lora.demo.teacher_samplers import sample_teacher
from lcm_lora.lcm_core.atomic_write import atomic_file
from lcm_lora.lcm_core.lora import read_adapter
from lcm_lora.lcm_core.merge import merge_adapters
from lcm_lora.lcm_core.safetensors_io import read_safetensors


def _one(cache: Path, pattern: str) -> Path:
    found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"error: {cache}: no {pattern}")
    return found[0]


def _load_avg():
    return [round(v, 2) for v in os.getloadavg()]



def _to_safe(obj):
    """numpy → torch / Python numbers, so the cache loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_safe(v) for v in obj)
    return obj


def _from_safe(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_safe(v) for v in obj)
    return obj


def _save_cache(obj, path: Path) -> None:
    with atomic_file(path, overwrite=True) as tmp:
        torch.save(_to_safe(obj), tmp)


def _load_cache(path: Path):
    return _from_safe(torch.load(path, weights_only=True))

class Bench:
    def __init__(self, cache: Path, work: Path, n: int, n_big: int, preset: str, base_as_finetune: bool = False):
        self.cfg = dataclasses.replace(PRESETS[preset], n_samples=n)
        self.cache, self.work, self.n, self.n_big = cache, work, n, n_big
        work.mkdir(parents=True, exist_ok=True)
        self.teacher_folder = _one(cache, "teacher-*")
        self.data_folder = _one(cache, "data-r*")
        self.teacher = load_teacher(self.teacher_folder)
        clf = work / "classifiers"
        if not clf.exists():
            shutil.copytree(cache / "classifiers", clf)
        self.inst = build_instruments(self.cfg.resolution, self.cfg.split_seed, self.cfg.style.style, clf, n)
        self.style = read_adapter(_one(cache, "style-*.safetensors"))
        state, _ = read_safetensors(_one(cache, "finetune-*.safetensors"))
        import copy

        self.ft = copy.deepcopy(self.teacher.unet)
        if not base_as_finetune:
            self.ft.load_state_dict(state)
        self.ft_tag = "-base" if base_as_finetune else ""
        self.ft.eval()
        self.plan = SamplePlan.make(n, self.cfg.resolution, self.cfg.seed)
        self.cond, self.uncond = self.teacher.embed(self.plan.labels)
        self.refs = self._references()

    # ------------------------------------------------------------------ references (cached on disk)
    def _references(self) -> dict:
        path = self.work / f"refs-n{self.n}.pt"
        if path.is_file():
            out = _load_cache(path)
            out["rows"] = [r for r in out["rows"] if r["model"] != "lcm_lora"]  # files of the first version held it
            out["accel"] = {n: self._accel_refs(n) for n in sorted({self.n, self.n_big} - {0})}
            return out
        cfg, t, inst, plan = self.cfg, self.teacher, self.inst, self.plan
        g, sc = cfg.guidance_scale, t.scheduler_config
        bs = cfg.batch_size
        cond, uncond = self.cond, self.uncond
        rows = []
        ts = max(cfg.teacher_steps)
        r, _ = sample_rows("teacher", "ddim", [ts], lambda sl, k: sample_teacher(
            t.unet, cond[sl], uncond[sl], plan.noise[sl], "ddim", k, sc, g), plan, inst, bs, keep_images=False)
        rows += r
        styled = unet_with(t.unet, [(self.style, cfg.lambda1)])
        r, _ = sample_rows("style_ref", "ddim", [cfg.style_reference_steps], lambda sl, k: sample_teacher(
            styled, cond[sl], uncond[sl], plan.noise[sl], "ddim", k, sc, g), plan, inst, bs, keep_images=False)
        r[0]["label"] = f"teacher + style λ1={cfg.lambda1:g}, DDIM (reference)"
        style_ref = r[0]
        _save_cache({"rows": rows, "style_ref": style_ref}, path)
        return {"rows": rows, "style_ref": style_ref,
                "accel": {n: self._accel_refs(n) for n in sorted({self.n, self.n_big} - {0})}}

    def lcm_row(self, lcm_path: Path, tag: str) -> dict:
        """The LCM-LoRA's 4-step row (goal (a)'s FD bar), cached per LCM adapter."""
        path = self.work / f"refs-lcm-{tag}-n{self.n}.pt"
        if path.is_file():
            return _load_cache(path)
        cfg, plan = self.cfg, self.plan
        student = unet_with(self.teacher.unet, [(read_adapter(lcm_path), 1.0)])
        r, _ = sample_rows("lcm_lora", "lcm", [4], lambda sl, k: sample_lcm_student(
            student, self.cond[sl], plan.noise[sl], k, seed=sampler_seed(cfg.seed + sl.start)), plan, self.inst,
            cfg.batch_size, keep_images=False)
        _save_cache(r[0], path)
        return r[0]

    def lcm_accel(self, lcm_path: Path, tag: str) -> dict:
        """Goal (d) for the LCM-LoRA (as the demo: LCM sampler, 4 steps, on the fine-tune), per n; cached."""
        path = self.work / f"refs-lcm-accel{self.ft_tag}-{tag}-n{self.n}-{self.n_big}.pt"
        if path.is_file():
            return _load_cache(path)
        cfg, out = self.cfg, {}
        unet = unet_with(self.ft, [(read_adapter(lcm_path), 1.0)])
        for n, a in self.refs["accel"].items():
            _, aplan = self._accel_plans(n)
            acond, _ = self.teacher.embed(aplan.labels)
            res = sample_lcm_student(unet, acond, aplan.noise, cfg.accel_steps, seed=sampler_seed(cfg.seed))
            row = self._accel_row(f"fine-tune + LCM-LoRA, LCM {cfg.accel_steps} steps", "lcm_lora", "lcm",
                                  cfg.accel_steps, res.images, aplan.labels, a["ref_stats"], n)
            c = acceleration_claims({"rows": a["rows"] + [row], "reference_steps": cfg.accel_reference_steps})
            out[str(n)] = {"lcm_lora": row, "passed": c["goal_universal_acceleration_lcm_lora"]["passed"]}
        _save_cache(out, path)
        return out

    def _accel_plans(self, n):
        cfg = self.cfg
        ref_plan = SamplePlan.make(n, cfg.resolution, cfg.seed + 3)
        plan = SamplePlan.make(n, cfg.resolution, cfg.seed)
        return ref_plan, plan

    def _accel_refs(self, n: int) -> dict:
        """As :func:`lcm_lora.demo.run.universal_acceleration`: reference (seed + 3), floor, DDIM 4/8 (cached per n)."""
        path = self.work / f"refs-accel{self.ft_tag}-n{n}.pt"
        if path.is_file():
            return _load_cache(path)
        cfg, t = self.cfg, self.teacher
        g, sc = cfg.guidance_scale, t.scheduler_config
        ref_plan, plan = self._accel_plans(n)
        rc, ru = t.embed(ref_plan.labels)
        cond, uncond = t.embed(plan.labels)
        ref = sample_teacher(self.ft, rc, ru, ref_plan.noise, "ddim", cfg.accel_reference_steps, sc, g)
        _, feats = self.inst.features(ref.images)
        ref_stats = metrics.feature_statistics(feats)
        rows = [{"label": "fine-tune, DDIM (reference, independent noise)", "model": "finetune", "sampler": "ddim",
                 "steps": cfg.accel_reference_steps, "n": n, "role": "reference"}]
        jobs = [(f"fine-tune, DDIM {cfg.accel_reference_steps} steps (floor: same sampler, other noise)",
                 cfg.accel_reference_steps)] + [(f"fine-tune, DDIM {k} steps", k) for k in cfg.accel_ddim_steps]
        for label, k in jobs:
            res = sample_teacher(self.ft, cond, uncond, plan.noise, "ddim", k, sc, g)
            rows.append(self._accel_row(label, "finetune", "ddim", k, res.images, plan.labels, ref_stats, n))
        out = {"ref_stats": ref_stats, "rows": rows}
        _save_cache(out, path)
        return out

    def _accel_row(self, label, model, sampler, steps, images, labels, ref_stats, n):
        _, feats = self.inst.features(images)
        m = self.inst.measure(images, labels)
        return {"label": label, "model": model, "sampler": sampler, "steps": steps, "n": n,
                "accuracy": round(m["accuracy"], 5), "style_score": round(m["style_score"], 5),
                "fd_vs_reference": round(metrics.frechet_distance(*metrics.feature_statistics(feats), *ref_stats), 5),
                "fd_vs_reference_se": round(metrics.frechet_distance_bootstrap_se(feats, *ref_stats), 5)}

    # ------------------------------------------------------------------ one recipe
    def train(self, name: str, overrides: list[str], kind: str = "tcd") -> tuple[Path, float]:
        from lcm_lora.training import train

        base = lcm_overrides(self.cfg, self.teacher_folder, self.data_folder)
        if kind == "tcd":
            base += list(self.cfg.tcd_overrides)
        out = self.work / f"{kind}-{name}"
        adapter = out / f"{kind}_lora.safetensors"
        timing = out / "q13_timing.json"
        if adapter.is_file() and timing.is_file():
            return adapter, json.loads(timing.read_text())["seconds"]
        if out.exists():
            shutil.rmtree(out)
        load0 = _load_avg()
        t0 = time.perf_counter()
        res = train(REPO_ROOT / self.cfg.lcm_config, out, overrides=base + overrides + [f"output.name={kind}_lora.safetensors"],
                    progress=False)
        sec = time.perf_counter() - t0
        if res.status != "finished":
            raise SystemExit(f"error: {name}: training {res.status}")
        timing.write_text(json.dumps({"seconds": sec, "load_start": load0, "load_end": _load_avg()}))
        return adapter, sec

    def evaluate(self, adapter_path: Path, lcm_row: dict, gamma: float = 0.3, gammas=(0.0, 0.3, 0.5),
                 schedule: str = "tcd", phases: int = 4, cfg_scale: float = 1.0, cfg_steps: int | None = None,
                 cfg_interval: tuple[int, int] | None = None, accel_strength: float = 1.0) -> dict:
        """``cfg_scale`` > 1: the adapter is sampled with real classifier-free guidance (the student's own
        unconditional branch; ``cfg_steps``: only on the first steps) — for adapters distilled without
        guidance in the solver (``lcd.solver_guidance=false``, PCM's "normal CFG" recipe)."""
        cfg, t, inst, plan, bs = self.cfg, self.teacher, self.inst, self.plan, self.cfg.batch_size
        cond, uncond = self.cond, self.uncond
        tcd = read_adapter(adapter_path)
        ts = _timesteps_fn(schedule, phases)
        guided = cfg_scale != 1.0

        def tcd_fn(unet, gm):
            return lambda sl, k: sample_tcd_student(unet, cond[sl], plan.noise[sl], k, gamma=gm,
                                                    seed=sampler_seed(cfg.seed + sl.start), timesteps=ts(k),
                                                    guidance_scale=cfg_scale, uncond=uncond[sl] if guided else None,
                                                    cfg_steps=cfg_steps, cfg_interval=cfg_interval)

        student = unet_with(t.unet, [(tcd, 1.0)])
        rows = list(self.refs["rows"]) + [lcm_row]
        r, _ = sample_rows("tcd", "tcd", [4, 8, 16], tcd_fn(student, gamma), plan, inst, bs, keep_images=False,
                           extra={"gamma": gamma})
        rows += r
        gamma_rows = []
        for gm in gammas:
            if gm == gamma:
                gamma_rows.append(r[0])
                continue
            gr, _ = sample_rows("tcd", "tcd", [4], tcd_fn(student, gm), plan, inst, bs, keep_images=False,
                                extra={"gamma": gm})
            gamma_rows += gr
        merged, _ = merge_adapters([self.style, tcd], [cfg.lambda1, cfg.lambda2], method="concat", progress=False,
                                   names=["style", "tcd"])
        mr, _ = sample_rows("tcd_merged", "tcd", [cfg.style_steps], tcd_fn(unet_with(t.unet, [(merged, 1.0)]), gamma),
                            plan, inst, bs, keep_images=False)
        mr[0]["label"] = f"TCD: merged (concat) λ1={cfg.lambda1:g}, λ2={cfg.lambda2:g}, TCD γ {gamma:g}"
        style = {"rows": [self.refs["style_ref"], mr[0]]}
        merged_unet = unet_with(t.unet, [(merged, 1.0)])
        merged_gamma = []  # extra evidence: the merge's style score across γ (the goal is at γ of the main rows)
        for gm in gammas:
            if gm == gamma:
                continue
            gr, _ = sample_rows("tcd_merged", "tcd", [cfg.style_steps], tcd_fn(merged_unet, gm), plan, inst, bs,
                                keep_images=False, extra={"gamma": gm})
            merged_gamma += gr
        claims = tcd_claims(rows, style)
        accel = {}
        for n, a in self.refs["accel"].items():
            ref_plan, aplan = self._accel_plans(n)
            acond, auncond = t.embed(aplan.labels)
            res = sample_tcd_student(unet_with(self.ft, [(tcd, accel_strength)]), acond, aplan.noise, cfg.accel_steps,
                                     gamma=gamma, seed=sampler_seed(cfg.seed), timesteps=ts(cfg.accel_steps),
                                     guidance_scale=cfg_scale, uncond=auncond if guided else None, cfg_steps=cfg_steps,
                                     cfg_interval=cfg_interval)
            row = self._accel_row(f"fine-tune + TCD adapter, TCD {cfg.accel_steps} steps", "tcd", "tcd",
                                  cfg.accel_steps, res.images, aplan.labels, a["ref_stats"], n)
            acc = {"rows": a["rows"] + [row], "reference_steps": cfg.accel_reference_steps}
            c = acceleration_claims(acc)["goal_universal_acceleration_tcd"]
            accel[n] = {"tcd": row, "ddim8": next(x for x in a["rows"] if x["steps"] == 8 and "floor" not in x["label"]),
                        "floor": next(x for x in a["rows"] if "floor" in x["label"]), "passed": c["passed"],
                        "detail": c["detail"]}
        return {"rows": [x for x in rows if x["model"] == "tcd"], "refs": self.refs["rows"] + [lcm_row],
                "gamma_rows": gamma_rows,
                "style": style["rows"], "merged_gamma_rows": merged_gamma, "claims": {k: {"passed": v["passed"], "detail": v["detail"]} for k, v in claims.items()},
                "accel": {str(k): v for k, v in accel.items()}}


def _timesteps_fn(schedule: str, phases: int):
    """``steps -> timesteps`` for the TCD sampler: ``None`` = TCD's own 50-grid pick; ``pcm`` / ``tscd`` =
    ``lcm_core.phased_timesteps`` (edge-to-edge for a phased adapter)."""
    if schedule == "tcd":
        return lambda k: None
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    return lambda k: phased_timesteps(int(k), phases, schedule)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/dcache_cold"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/q13work"))
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-big", type=int, default=0, help="also measure goal (d) with this many samples (0: no)")
    ap.add_argument("--preset", default="fast", help="demo preset whose cache --cache is (style/fine-tune settings)")
    ap.add_argument("--recipe", required=True, help="a name for the result row")
    ap.add_argument("--adapter", type=Path, help="evaluate this adapter instead of training one")
    ap.add_argument("--gamma", type=float, default=0.3)
    ap.add_argument("--schedule", choices=("tcd", "pcm", "tscd"), default="tcd",
                    help="sampling timesteps: TCD's (default) or a phased adapter's edge-to-edge ones")
    ap.add_argument("--phases", type=int, default=4, help="--schedule pcm/tscd: phases of the adapter")
    ap.add_argument("--cfg", type=float, default=1.0,
                    help="sample the adapter with real CFG at this scale (2 evaluations per guided step), e.g. for "
                         "an adapter trained with lcd.solver_guidance=false")
    ap.add_argument("--cfg-steps", type=int, default=None, help="with --cfg: guide only the first N steps")
    ap.add_argument("--cfg-interval", default=None, metavar="LO,HI",
                    help="with --cfg: guide only the steps whose timestep is in [LO, HI] (arXiv 2404.07724)")
    ap.add_argument("--lcm-steps", type=int, default=0,
                    help="goal (a)'s LCM-LoRA: 0 = the cache's; N = train one with train.max_steps=N (the demo's LCM overrides)")
    ap.add_argument("--lcm-override", action="append", default=[], metavar="KEY=VALUE",
                    help="with --lcm-steps: a trainer override for that LCM-LoRA too (e.g. lcd.w_min=0.5); repeatable")
    ap.add_argument("--accel-strength", type=float, default=1.0,
                    help="diagnostic: goal (d) fuses the adapter into the fine-tune at this strength (default 1)")
    ap.add_argument("overrides", nargs="*", help="trainer key=value overrides on top of the demo's TCD overrides")
    ap.add_argument("--base-as-finetune", action="store_true",
                    help="diagnostic: run goal (d)'s construction on the base teacher itself (no fine-tune)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    b = Bench(a.cache, a.work, a.n, a.n_big, a.preset, a.base_as_finetune)
    if a.adapter:
        path, sec = a.adapter, None
        for tj in (a.adapter.parent / "demo_timing.json", a.adapter.parent / "q13_timing.json"):
            if tj.is_file():
                sec = json.loads(tj.read_text())["seconds"]
    else:
        path, sec = b.train(a.recipe, a.overrides)
    lcm_tag = f"steps{a.lcm_steps}" + "".join("-" + o.replace("lcd.", "").replace("=", "") for o in a.lcm_override)
    if a.lcm_steps:
        lcm_path, lcm_sec = b.train(lcm_tag, [f"train.max_steps={a.lcm_steps}", *a.lcm_override], kind="lcm")
        lcm = b.lcm_row(lcm_path, lcm_tag)
    else:
        lcm_path, lcm_sec = _one(a.cache, "lcm-*/lcm_lora.safetensors"), None
        lcm = b.lcm_row(lcm_path, "cache")
    t0 = time.perf_counter()
    interval = tuple(int(v) for v in a.cfg_interval.split(",")) if a.cfg_interval else None
    res = b.evaluate(path, lcm, gamma=a.gamma, schedule=a.schedule, phases=a.phases, cfg_scale=a.cfg,
                     cfg_steps=a.cfg_steps, cfg_interval=interval, accel_strength=a.accel_strength)
    res["lcm_accel"] = b.lcm_accel(lcm_path, lcm_tag if a.lcm_steps else "cache")
    out = {"recipe": a.recipe + (" [goal (d) on the base teacher]" if a.base_as_finetune else ""), "overrides": a.overrides, "train_seconds": sec, "lcm_steps": a.lcm_steps or None, "lcm_overrides": a.lcm_override, "lcm_train_seconds": lcm_sec, "eval_seconds": round(time.perf_counter() - t0, 1),
           "load": _load_avg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": a.n, "gamma": a.gamma,
           "schedule": a.schedule, "phases": a.phases if a.schedule != "tcd" else None,
           "cfg": a.cfg, "cfg_steps": a.cfg_steps, "cfg_interval": interval,
           "accel_strength": a.accel_strength, **res}
    line = json.dumps(out)
    print(line, flush=True)
    with open(a.work / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
