"""The demo pipeline: teacher → LCM-LoRA (``lcm-lora train``) → style LoRA + merge → evaluation → report.

Stages and their caches (under ``cache_dir``, keyed by everything that determines them, so a
second run reuses models and a changed setting retrains only what it affects):

1. teacher: the shipped ``demo/assets/digits_teacher.safetensors`` unpacked into a diffusers
   folder (or, with ``retrain_teacher``, trained here with a CPU-sized budget);
2. measuring classifiers (digit + style), trained on the classifier split;
3. the training data exported for the trainer (PNG + ``metadata.jsonl``, train split only);
4. the LCM-LoRA, distilled by the project's trainer (``training.train``, i.e. ``lcm-lora train``)
   from ``configs/tiny_cpu.yaml`` plus the preset's ``key=value`` overrides;
5. the style LoRA (ordinary diffusion loss on the styled train split);
6. evaluation of every sampler × step count, the style merges and the λ1×λ2 grid;
7. ``report.md`` / ``report.html`` / ``results.json`` / figures in ``out_dir``.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .style_lora import StyleLoraSettings

CACHE_VERSION = "1"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class DemoConfig:
    """A demo preset. ``full`` is the README's main job (≤ 15 min on 2 cores); ``fast`` ≤ 3 min."""

    preset: str = "full"
    n_samples: int = 300
    resolution: int = 16
    samplers: tuple = ("ddim", "euler", "dpmpp_2m")
    teacher_steps: tuple = (1, 2, 4, 8, 16, 32)
    lcm_steps: tuple = (1, 2, 4, 8)
    guidance_scale: float = 2.0  # teacher CFG scale g; the LCM-LoRA is distilled at ω = g − 1 (see lcm_overrides)
    lcm_config: str = "configs/tiny_cpu.yaml"
    lcm_overrides: tuple = ()
    style: StyleLoraSettings = field(default_factory=StyleLoraSettings)
    lambda1: float = 0.8
    lambda2: float = 1.0
    style_reference_steps: int = 25
    style_steps: int = 4
    svd_rank: int | None = None  # None: max of the input ranks
    heat_lambda1: tuple = (0.0, 0.4, 0.8, 1.2)
    heat_lambda2: tuple = (0.0, 0.5, 1.0, 1.5)
    heat_samples: int = 150
    batch_size: int = 600
    seed: int = 0
    split_seed: int = 0
    teacher_retrain_steps: int | None = None  # None: TeacherSettings' default, i.e. the shipped teacher's recipe

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# LCD settings for the digit teacher, on top of configs/tiny_cpu.yaml (what was tried: demo/README.md).
# The EMA target network θ⁻ ← μθ⁻ + (1 − μ)θ (LCM paper Algorithm 1, μ = 0.95) instead of the LoRA
# scripts' stop-gradient online target: at lr 1e-3 the online target drifts (FD at 4 steps 84 vs 36).
DEMO_LCD_OVERRIDES = ("lcd.target=ema",)

PRESETS = {
    "full": DemoConfig(lcm_overrides=("train.max_steps=600",)),
    "fast": DemoConfig(
        preset="fast", n_samples=200, teacher_steps=(1, 2, 4, 8), samplers=("ddim", "dpmpp_2m"), lcm_steps=(1, 2, 4),
        style=StyleLoraSettings(steps=300, batch_size=32), heat_lambda1=(0.0, 0.8), heat_lambda2=(0.0, 1.0),
        heat_samples=100,
    ),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lcm-lora" / "demo"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Stages:
    """Timing + progress printing for the pipeline's stages."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        if self.progress:
            print(f"[demo] {name} …", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 2)
        if self.progress:
            print(f"[demo] {name}: {self.timings[name]:.1f} s", flush=True)
        return out

    def total(self) -> float:
        return round(time.perf_counter() - self._start, 2)


# ---------------------------------------------------------------------------------------- stages
def prepare_teacher(cache_dir: Path, cfg: DemoConfig, retrain: bool, progress: bool) -> tuple[Path, dict]:
    """The teacher folder (cached) and a description for the report."""
    from .teacher_assets import DEFAULT_ASSET, asset_fingerprint, materialize_teacher, read_teacher_asset

    if retrain:
        from .teacher_training import TeacherSettings, train_teacher

        settings = TeacherSettings(resolution=cfg.resolution, split_seed=cfg.split_seed)
        if cfg.teacher_retrain_steps:
            settings.steps = cfg.teacher_retrain_steps
        folder = cache_dir / f"teacher-trained-{_key(settings.to_json(), CACHE_VERSION)}"
        source = "trained here"
        if not (folder / "unet").is_dir():
            train_teacher(folder, settings, progress=progress, overwrite=True)
        else:
            source = "trained here earlier, cached"
        info = json.loads(settings.to_json())
    else:
        fp = asset_fingerprint(DEFAULT_ASSET)
        folder = cache_dir / f"teacher-{fp}"
        source = f"shipped weights {DEFAULT_ASSET.name} ({fp})"
        if not (folder / "unet").is_dir():
            materialize_teacher(folder, DEFAULT_ASSET, overwrite=True)
        _, meta = read_teacher_asset(DEFAULT_ASSET)
        info = json.loads(meta.get("demo_teacher.json", "{}"))
        info["reproduce"] = meta.get("reproduce", "")
    return folder, {"source": source, "folder": str(folder), "settings": info}


def export_training_data(cache_dir: Path, cfg: DemoConfig) -> Path:
    """The ``train`` split as an image folder for ``lcm-lora train`` (PNG + ``metadata.jsonl``)."""
    from PIL import Image

    from ..lcm_core.atomic_write import atomic_dir
    from .dataset import load_digit_images, prompt_for, split_indices, to_uint8

    folder = cache_dir / f"data-r{cfg.resolution}-s{cfg.split_seed}"
    if (folder / "metadata.jsonl").is_file():
        return folder
    images, labels = load_digit_images(cfg.resolution)
    split = split_indices(labels, seed=cfg.split_seed)
    with atomic_dir(folder, overwrite=True) as tmp:
        lines = []
        for i, (img, lab) in enumerate(zip(to_uint8(images[split.train]), labels[split.train].tolist())):
            name = f"{i:04d}_{lab}.png"
            Image.fromarray(img, mode="L").save(tmp / name)
            lines.append(json.dumps({"file_name": name, "text": prompt_for(lab)}))
        (tmp / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def lcm_overrides(cfg: DemoConfig, teacher_folder: Path, data_folder: Path) -> list[str]:
    """``key=value`` overrides on top of ``cfg.lcm_config``: inputs, then the demo's LCD settings, then the preset's.

    ``validation.every=0`` / ``checkpoint.every=0`` only skip side outputs (the demo evaluates the result itself).
    The guidance ω of the distillation (LCM paper Eq. 9; the trainer's ``x0 = cond + ω(cond − uncond)``)
    is fixed to the teacher baseline's CFG scale g = 1 + ω, so student and baselines aim at the same
    distribution. (tiny_cpu's ω ∈ [3, 15] is the reference's range for SD, where g = 7.5 is usual.)
    """
    w = cfg.guidance_scale - 1.0
    return [f"teacher.path={teacher_folder}", f"data.path={data_folder}", f"data.resolution={cfg.resolution}",
            f"train.seed={cfg.seed}", "validation.every=0", "checkpoint.every=0", f"lcd.w_min={w:g}", f"lcd.w_max={w:g}",
            *DEMO_LCD_OVERRIDES, *cfg.lcm_overrides]


def distil_lcm_lora(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, progress: bool):
    """Run the project's trainer (``training.train``, the code behind ``lcm-lora train CONFIG key=value …``)
    with the preset's config and overrides; cached by config text + overrides + teacher."""
    import shutil

    from ..lcm_core.lora import read_adapter
    from ..training import train

    config_file = (REPO_ROOT / cfg.lcm_config).resolve()
    overrides = lcm_overrides(cfg, teacher_folder, data_folder)
    key = _key(config_file.read_text(encoding="utf-8"), overrides, CACHE_VERSION)
    out = cache_dir / f"lcm-{key}"
    result = out / "lcm_lora.safetensors"
    seconds, cached = None, result.is_file()
    if not cached:
        work = cache_dir / f".lcm-{key}.partial"
        if work.exists():  # an interrupted earlier run: start over (the demo run is short)
            shutil.rmtree(work)
        t0 = time.perf_counter()
        res = train(config_file, work, overrides=overrides + ["output.name=lcm_lora.safetensors"], progress=progress)
        seconds = time.perf_counter() - t0
        if res.status != "finished" or res.adapter_path is None:
            from ..lcm_core.errors import LcmLoraError

            raise LcmLoraError(work, f"LCM-LoRA distillation did not finish (status {res.status})")
        (work / "demo_timing.json").write_text(json.dumps({"seconds": seconds, "final_step": res.final_step}), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    elif (out / "demo_timing.json").is_file():
        seconds = json.loads((out / "demo_timing.json").read_text())["seconds"]
    shown = [o for o in overrides if not o.startswith(("teacher.path=", "data.path=", "data.cache_dir="))]
    info = {"config_file": cfg.lcm_config, "overrides": shown, "path": str(result), "seconds": seconds or 0.0,
            "cached": cached}
    return read_adapter(result), info


def train_or_load_style(cache_dir: Path, cfg: DemoConfig, teacher, teacher_id: str, progress: bool):
    from ..lcm_core.lora import read_adapter, write_adapter
    from .style_lora import train_style_lora

    path = cache_dir / f"style-{_key(cfg.style.to_dict(), teacher_id, CACHE_VERSION)}.safetensors"
    if path.is_file():
        return read_adapter(path), True
    adapter = train_style_lora(teacher, cfg.style, progress=progress)
    write_adapter(adapter, path, format="kohya", overwrite=True)
    return read_adapter(path), False


def _unet_with(teacher_unet, adapters_and_strengths):
    """A float32 copy of the teacher UNet with LoRA updates fused in (θ + Σ λ ΔW)."""
    from ..lcm_core.fuse import fuse_into_module

    unet = copy.deepcopy(teacher_unet)
    for adapter, strength in adapters_and_strengths:
        if strength:
            fuse_into_module(unet, adapter, float(strength), component="unet", strict=True)
    return unet.eval()


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_all(cfg: DemoConfig, teacher, lcm_adapter, style_adapter, inst, out_dir: Path, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from ..lcm_core.merge import merge_adapters
    from .evaluate import SamplePlan, sample_rows
    from .student_sampling import sample_lcm_student
    from .teacher_samplers import sample_teacher

    plan = SamplePlan.make(cfg.n_samples, cfg.resolution, cfg.seed)
    cond, uncond = teacher.embed(plan.labels)
    g = cfg.guidance_scale
    sc = teacher.scheduler_config

    def teacher_fn(unet, sampler):
        return lambda sl, k: sample_teacher(unet, cond[sl], uncond[sl], plan.noise[sl], sampler, k, sc, g)

    def lcm_fn(unet):
        return lambda sl, k: sample_lcm_student(unet, cond[sl], plan.noise[sl], k, seed=cfg.seed + sl.start)

    student = _unet_with(teacher.unet, [(lcm_adapter, 1.0)])
    n_main = len(cfg.samplers) * len(cfg.teacher_steps) + len(cfg.lcm_steps)
    rows, grids = [], {}
    with tqdm(total=n_main, desc="evaluate samplers", disable=not progress) as bar:
        for sampler in cfg.samplers:
            r, imgs = sample_rows("teacher", sampler, cfg.teacher_steps, teacher_fn(teacher.unet, sampler), plan, inst,
                                  cfg.batch_size, bar)
            rows += r
            grids[("teacher", sampler)] = imgs
        r, imgs = sample_rows("lcm_lora", "lcm", cfg.lcm_steps, lcm_fn(student), plan, inst, cfg.batch_size, bar)
        rows += r
        grids[("lcm_lora", "lcm")] = imgs

    # --- style merge experiment (τ' = λ1·τ_style + λ2·τ_LCM)
    l1, l2 = cfg.lambda1, cfg.lambda2
    styled_teacher = _unet_with(teacher.unet, [(style_adapter, l1)])
    style_rows, style_grids, merge_reports = [], {}, {}
    with tqdm(total=4 + 2 + 2, desc="evaluate style merge", disable=not progress) as bar:
        def add(label, short, kind, steps, fn, extra=None):
            r, imgs = sample_rows(label, kind, [steps], fn, plan, inst, cfg.batch_size, bar, extra=extra)
            r[0]["label"] = label
            style_rows.append(r[0])
            style_grids[f"{short}, {steps} steps"] = imgs[steps]

        ref_steps, k = cfg.style_reference_steps, cfg.style_steps
        add(f"teacher + style λ1={l1:g}, DDIM (reference)", "style, DDIM (ref.)", "ddim", ref_steps,
            teacher_fn(styled_teacher, "ddim"))
        add(f"teacher + style λ1={l1:g}, DDIM", "style, DDIM", "ddim", k, teacher_fn(styled_teacher, "ddim"))
        add(f"teacher + style λ1={l1:g}, DPM++ 2M", "style, DPM++ 2M", "dpmpp_2m", k, teacher_fn(styled_teacher, "dpmpp_2m"))
        add("teacher (no style), DDIM", "no style, DDIM", "ddim", ref_steps, teacher_fn(teacher.unet, "ddim"))
        add(f"LCM-LoRA only (λ2={l2:g}), LCM", "LCM-LoRA only", "lcm", k,
            lcm_fn(_unet_with(teacher.unet, [(lcm_adapter, l2)])))
        add(f"style λ1={l1:g} + LCM λ2={l2:g} fused separately, LCM", "fused separately", "lcm", k,
            lcm_fn(_unet_with(teacher.unet, [(style_adapter, l1), (lcm_adapter, l2)])))
        for method in ("concat", "svd"):
            merged, report = merge_adapters([style_adapter, lcm_adapter], [l1, l2], method=method, rank=cfg.svd_rank,
                                            progress=False, names=["style", "lcm"])
            err = float(report.total_relative_error)
            merge_reports[method] = {"total_relative_error": err, "rank": sorted(merged.ranks())}
            add(f"merged ({method}) λ1={l1:g}, λ2={l2:g}, LCM", f"merged ({method}), LCM", "lcm", k,
                lcm_fn(_unet_with(teacher.unet, [(merged, 1.0)])), extra={"merge_relative_error": err})

    # --- λ1 × λ2 grid at LCM style_steps (fused separately = exact concat merge)
    hp = SamplePlan.make(cfg.heat_samples, cfg.resolution, cfg.seed + 1)
    hcond, _ = teacher.embed(hp.labels)
    heat = {m: np.zeros((len(cfg.heat_lambda1), len(cfg.heat_lambda2))) for m in ("style_score", "fd", "accuracy")}
    with tqdm(total=heat["fd"].size, desc="λ1×λ2 grid", disable=not progress) as bar:
        for i, a in enumerate(cfg.heat_lambda1):
            for j, b in enumerate(cfg.heat_lambda2):
                unet = _unet_with(teacher.unet, [(style_adapter, a), (lcm_adapter, b)])
                res = sample_lcm_student(unet, hcond, hp.noise, cfg.style_steps, seed=cfg.seed)
                m = inst.measure(res.images, hp.labels)
                for k in heat:
                    heat[k][i, j] = m[k]
                bar.update(1)
    return {
        "rows": rows, "grids": grids, "plan": plan,
        "style": {"settings": cfg.style.to_dict(), "lambda1": l1, "lambda2": l2, "rows": style_rows,
                  "merge_reports": merge_reports,
                  "heatmap": {"lambda1": list(cfg.heat_lambda1), "lambda2": list(cfg.heat_lambda2), "n": cfg.heat_samples,
                              "steps": cfg.style_steps, **{k: v.round(5).tolist() for k, v in heat.items()}}},
        "style_grids": style_grids,
    }


def find_row(rows, model, sampler, steps):
    for r in rows:
        if r["model"] == model and r["sampler"] == sampler and r["steps"] == steps:
            return r
    return None


def check_claims(rows, style: dict, fd_margin: float = 0.1, acc_drop: float = 0.01) -> dict:
    """The issue's claims, evaluated on this run's numbers (tests assert the same ones)."""
    claims = {}
    lcm4, ddim4 = find_row(rows, "lcm_lora", "lcm", 4), find_row(rows, "teacher", "ddim", 4)
    if lcm4 and ddim4:
        ok = lcm4["fd"] <= (1 - fd_margin) * ddim4["fd"] and lcm4["accuracy"] >= ddim4["accuracy"] - acc_drop
        claims["lcm4_beats_ddim4"] = {
            "statement": f"LCM-LoRA 4 steps has ≥{fd_margin:.0%} lower FD than teacher DDIM 4 steps, accuracy at most "
                         f"{acc_drop * 100:g} point lower",
            "detail": f"FD {lcm4['fd']:.1f} vs {ddim4['fd']:.1f}; accuracy {lcm4['accuracy']:.3f} vs {ddim4['accuracy']:.3f}",
            "passed": bool(ok)}
    ref = next((r for r in style.get("rows", []) if "(reference)" in r["label"]), None)
    ddim_s = next((r for r in style.get("rows", []) if r["label"].startswith("teacher + style") and r["sampler"] == "ddim"
                   and "(reference)" not in r["label"]), None)
    merged = next((r for r in style.get("rows", []) if r["label"].startswith("merged (concat)")), None)
    if ref and ddim_s and merged:
        d_m, d_d = abs(merged["style_score"] - ref["style_score"]), abs(ddim_s["style_score"] - ref["style_score"])
        claims["style_merge_keeps_style"] = {
            "statement": f"merged style+LCM adapter at {merged['steps']} steps is closer in style score to the style LoRA "
                         f"with teacher DDIM {ref['steps']} steps than the style LoRA with DDIM {ddim_s['steps']} steps",
            "detail": f"|{merged['style_score']:.3f} − {ref['style_score']:.3f}| = {d_m:.3f} vs "
                      f"|{ddim_s['style_score']:.3f} − {ref['style_score']:.3f}| = {d_d:.3f}",
            "passed": bool(d_m < d_d)}
        claims["style_merge_retains_style"] = {
            "statement": f"merged style+LCM adapter at {merged['steps']} steps carries at least the style of the style LoRA "
                         f"with teacher DDIM {ref['steps']} steps (style score ≥ reference − 0.05, accuracy ≥ reference − 1 point)",
            "detail": f"style {merged['style_score']:.3f} vs {ref['style_score']:.3f}; accuracy {merged['accuracy']:.3f} vs "
                      f"{ref['accuracy']:.3f}",
            "passed": bool(merged["style_score"] >= ref["style_score"] - 0.05 and merged["accuracy"] >= ref["accuracy"] - 0.01)}
    dpm8, ddim8, lcm2 = find_row(rows, "teacher", "dpmpp_2m", 8), find_row(rows, "teacher", "ddim", 8), find_row(rows, "lcm_lora", "lcm", 2)
    if lcm4 and dpm8:
        claims["goal_lcm4_vs_dpm8"] = {"statement": "goal: LCM-LoRA 4 steps ≤ teacher DPM++ 2M 8 steps on FD",
                                       "detail": f"FD {lcm4['fd']:.1f} vs {dpm8['fd']:.1f}", "passed": bool(lcm4["fd"] <= dpm8["fd"])}
    if lcm2 and ddim8:
        claims["goal_lcm2_vs_ddim8"] = {"statement": "goal: LCM-LoRA 2 steps better than teacher DDIM 8 steps on FD",
                                        "detail": f"FD {lcm2['fd']:.1f} vs {ddim8['fd']:.1f}", "passed": bool(lcm2["fd"] < ddim8["fd"])}
    return claims


# ---------------------------------------------------------------------------------------- figures
def write_figures(out_dir: Path, ev: dict, cal: dict, cfg: DemoConfig) -> dict:
    from .plots import plot_heatmap, plot_quality, save_image_grid
    from .teacher_samplers import SAMPLER_LABELS

    figs = {"quality": [], "grids": [], "style": []}
    rows = ev["rows"]
    for x, metric, name, alt in (
        ("steps", "fd", "fd_vs_steps.png", "FD vs sampling steps"),
        ("nfe", "fd", "fd_vs_unet_evals.png", "FD vs UNet evaluations (a CFG step costs 2)"),
        ("ms_per_image", "fd", "fd_vs_time.png", "FD vs wall time per image"),
        ("steps", "accuracy", "accuracy_vs_steps.png", "class accuracy vs sampling steps"),
    ):
        plot_quality(rows, out_dir / name, x, metric, floor=cal["fd_real_vs_real"] if metric == "fd" else None, title=alt)
        figs["quality"].append((name, alt))
    order = np.argsort(ev["plan"].labels.numpy(), kind="stable")[:: max(1, cfg.n_samples // 10)][:10]
    pick = torch.from_numpy(order)
    for (model, sampler), imgs in ev["grids"].items():
        who = "LCM-LoRA" if model == "lcm_lora" else "teacher"
        name = f"grid_{model}_{sampler}.png"
        save_image_grid([(f"{k} steps", v[pick]) for k, v in sorted(imgs.items())], out_dir / name,
                        title=f"{who} {SAMPLER_LABELS.get(sampler, sampler)} (same prompts and noise in every row)")
        figs["grids"].append((name, f"{who} {SAMPLER_LABELS.get(sampler, sampler)} samples, digits 0–9"))
    save_image_grid([(label, v[pick]) for label, v in ev["style_grids"].items()], out_dir / "grid_style.png",
                    title=f"style merge (λ1={cfg.lambda1:g}, λ2={cfg.lambda2:g}; same prompts and noise in every row)")
    figs["style"].append(("grid_style.png", "style experiment samples (rows as in the table)"))
    hm = ev["style"]["heatmap"]
    for metric, fmt, title in (("style_score", "{:.2f}", "style score"), ("fd", "{:.0f}", "FD ↓"),
                               ("accuracy", "{:.2f}", "class accuracy")):
        name = f"heatmap_{metric}.png"
        plot_heatmap(np.array(hm[metric]), hm["lambda1"], hm["lambda2"], out_dir / name,
                     f"{title}, LCM {hm['steps']} steps, τ = λ1·τ_style + λ2·τ_LCM", fmt=fmt)
        figs["style"].append((name, f"λ1×λ2 heat map: {title}"))
    return figs


# ---------------------------------------------------------------------------------------- driver
def environment() -> dict:
    threads = torch.get_num_threads()
    return {"torch": torch.__version__, "threads": threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "summary": f"CPU, {threads} torch thread{'s' if threads != 1 else ''}, {os.cpu_count()} cores visible, "
                       f"torch {torch.__version__}"}


def run_demo_pipeline(out_dir: str | os.PathLike, cfg: DemoConfig | None = None, cache_dir: str | os.PathLike | None = None,
                      retrain_teacher: bool = False, progress: bool = True) -> dict:
    """Run every stage and write the report; returns the results dict (also ``out_dir/results.json``)."""
    from ..training.tiny_models import TINY_TEXT_DIM  # noqa: F401  (fail early if the trainer package is missing)
    from .evaluate import build_instruments, load_teacher
    from .report import write_report

    cfg = cfg or PRESETS["full"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    st = Stages(progress)

    teacher_folder, teacher_info = st.run("teacher", prepare_teacher, cache_dir, cfg, retrain_teacher, progress)
    teacher = load_teacher(teacher_folder)
    n_params = sum(p.numel() for p in teacher.unet.parameters())
    teacher_info["description"] = (f"UNet2DConditionModel {n_params / 1e6:.2f} M parameters "
                                   f"(blocks {list(teacher.unet.config.block_out_channels)}), tiny CLIPTextModel, SD "
                                   f"scaled_linear schedule, pixel space {cfg.resolution}×{cfg.resolution}")
    inst = st.run("classifiers", build_instruments, cfg.resolution, cfg.split_seed, cfg.style.style,
                  cache_dir / "classifiers", cfg.n_samples, progress)
    data_folder = st.run("export data", export_training_data, cache_dir, cfg)
    lcm_adapter, lcm_info = st.run("LCM-LoRA distillation", distil_lcm_lora, cache_dir, cfg, teacher_folder, data_folder, progress)
    style_adapter, style_cached = st.run("style LoRA", train_or_load_style, cache_dir, cfg, teacher, teacher_folder.name, progress)
    ev = st.run("evaluation", evaluate_all, cfg, teacher, lcm_adapter, style_adapter, inst, out_dir, progress)
    cal = dict(inst.calibration)
    from .dataset import load_digit_images, split_indices

    cal["train_n"] = int(len(split_indices(load_digit_images(cfg.resolution)[1], seed=cfg.split_seed).train))
    figs = st.run("figures", write_figures, out_dir, ev, cal, cfg)
    results = {
        "version": 1,
        "config": cfg.to_dict(),
        "environment": environment(),
        "teacher": teacher_info,
        "lcm_lora": lcm_info,
        "calibration": cal,
        "rows": ev["rows"],
        "style": {**ev["style"], "cached": style_cached},
        "claims": check_claims(ev["rows"], ev["style"]),
        "figures": figs,
        "timings": {**st.timings},
    }
    results["timings"]["total"] = st.total()
    write_report(results, out_dir)
    if progress:
        print(f"[demo] wrote {out_dir / 'report.md'} ({results['timings']['total']:.0f} s)", flush=True)
        for c in results["claims"].values():
            print(f"[demo] {'PASS' if c['passed'] else 'FAIL'}: {c['statement']} — {c['detail']}", flush=True)
    return results
