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

With ``jobs=2`` (the CLI's default on 2+ cores) independent stages run in a second process
(:mod:`.parallel`): TCD (and, on the full preset, PCM) distillation and the fine-tune beside 2–5, then the acceleration and
negative-prompt studies (and, where it evens out the work, the style experiment) beside the rest of 6.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .cache_errors import reading_cache_entry
from .claims import check_claims
from .config import DEMO_LCD_OVERRIDES, PRESETS, DemoConfig
from .fused_unet import unet_with
from .sample_fns import sample_fns
from .style_experiment import style_experiment
from .teacher_samplers import steps_text
from .universal_acceleration import universal_acceleration

CACHE_VERSION = "1"
REPO_ROOT = Path(__file__).resolve().parent.parent


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

    def record(self, name: str, seconds: float, where: str = "") -> None:
        """A stage that ran elsewhere (the side process): its own wall time there."""
        self.timings[name] = round(seconds, 2)
        if self.progress:
            print(f"[demo] {name}{where}: {seconds:.1f} s", flush=True)


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


ADAPTER_KINDS = {
    # kind: (cache prefix, file name, what it is)
    "lcm": ("lcm", "lcm_lora.safetensors", "LCM-LoRA"),
    "tcd": ("tcd", "tcd_lora.safetensors", "TCD adapter"),
    "pcm": ("pcm", "pcm_lora.safetensors", "PCM adapter"),
}


def adapter_overrides(cfg: DemoConfig, teacher_folder: Path, data_folder: Path, kind: str = "lcm") -> list[str]:
    """The trainer overrides of adapter ``kind``: :func:`lcm_overrides`, plus ``cfg.tcd_overrides`` (``tcd``) or
    ``cfg.pcm_overrides`` (``pcm``): same teacher, data, ω, target and step budget."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter kind must be one of {', '.join(ADAPTER_KINDS)}, got {kind!r}")
    extra = {"lcm": (), "tcd": cfg.tcd_overrides, "pcm": cfg.pcm_overrides}[kind]
    return lcm_overrides(cfg, teacher_folder, data_folder) + list(extra)


def adapter_cache_folder(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path,
                         kind: str = "lcm") -> Path:
    """Where adapter ``kind`` is cached: ``<prefix>-<key>``, the key hashing the config file's text, the
    overrides and :data:`CACHE_VERSION` only (so adding an adapter kind or a preset flag leaves every other
    kind's cached adapter where it was)."""
    config_file = (REPO_ROOT / cfg.lcm_config).resolve()
    overrides = adapter_overrides(cfg, teacher_folder, data_folder, kind)
    key = _key(config_file.read_text(encoding="utf-8"), overrides, CACHE_VERSION)
    return Path(cache_dir) / f"{ADAPTER_KINDS[kind][0]}-{key}"


def distil_adapter(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, progress: bool,
                   kind: str = "lcm"):
    """Run the project's trainer (``training.train``, the code behind ``lcm-lora train CONFIG key=value …``)
    with the preset's config and overrides (``kind="tcd"`` / ``"pcm"`` adds ``cfg.tcd_overrides`` /
    ``cfg.pcm_overrides``: same teacher, data, ω, target and step budget); cached by config text + overrides +
    teacher (:func:`adapter_cache_folder`). Records the wall time."""
    import shutil

    from ..lcm_core.lora import read_adapter
    from ..training import train

    prefix, filename, what = ADAPTER_KINDS[kind]
    config_file = (REPO_ROOT / cfg.lcm_config).resolve()
    overrides = adapter_overrides(cfg, teacher_folder, data_folder, kind)
    out = adapter_cache_folder(cache_dir, cfg, teacher_folder, data_folder, kind)
    key = out.name[len(prefix) + 1:]
    result = out / filename
    seconds, cached = None, result.is_file()
    if not cached:
        work = cache_dir / f".{prefix}-{key}.partial"
        if work.exists():  # an interrupted earlier run: start over (the demo run is short)
            shutil.rmtree(work)
        t0 = time.perf_counter()
        res = train(config_file, work, overrides=overrides + [f"output.name={filename}"], progress=progress)
        seconds = time.perf_counter() - t0
        if res.status == "interrupted":  # the trainer took the Ctrl-C / SIGTERM (its checkpoint is of no use here)
            raise KeyboardInterrupt
        if res.status != "finished" or res.adapter_path is None:
            from ..lcm_core.errors import LcmLoraError

            raise LcmLoraError(work, f"{what} distillation did not finish (status {res.status})")
        (work / "demo_timing.json").write_text(json.dumps({"seconds": seconds, "final_step": res.final_step,
                                                           "load_average": _load_average()}), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    timing = json.loads((out / "demo_timing.json").read_text()) if (out / "demo_timing.json").is_file() else {}
    shown = [o for o in overrides if not o.startswith(("teacher.path=", "data.path=", "data.cache_dir="))]
    info = {"config_file": cfg.lcm_config, "overrides": shown, "path": str(result),
            "seconds": timing.get("seconds", seconds) or 0.0, "load_average": timing.get("load_average"),
            "cached": cached}
    with reading_cache_entry(out, what):
        return read_adapter(result), info


def distil_lcm_lora(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, progress: bool):
    """The LCM-LoRA (:func:`distil_adapter` with ``kind="lcm"``)."""
    return distil_adapter(cache_dir, cfg, teacher_folder, data_folder, progress, kind="lcm")


def distil_tcd(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, progress: bool):
    """The TCD adapter (:func:`distil_adapter` with ``kind="tcd"``)."""
    return distil_adapter(cache_dir, cfg, teacher_folder, data_folder, progress, kind="tcd")


def distil_pcm(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, progress: bool):
    """The PCM adapter (:func:`distil_adapter` with ``kind="pcm"``)."""
    return distil_adapter(cache_dir, cfg, teacher_folder, data_folder, progress, kind="pcm")


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def finetune_or_load(cache_dir: Path, cfg: DemoConfig, teacher, teacher_id: str, progress: bool):
    """The fully fine-tuned teacher UNet (universal-acceleration test), cached as a safetensors state dict."""
    from ..lcm_core.safetensors_io import read_safetensors, write_safetensors
    from .finetune import finetune_teacher

    path = cache_dir / f"finetune-{_key(cfg.finetune.to_dict(), teacher_id, CACHE_VERSION)}.safetensors"
    cached = path.is_file()
    if not cached:
        write_safetensors(path, finetune_teacher(teacher, cfg.finetune, progress=progress),
                          metadata={"lcm_lora_demo": "full fine-tune", **{k: str(v) for k, v in cfg.finetune.to_dict().items()}},
                          overwrite=True)
    unet = copy.deepcopy(teacher.unet)
    with reading_cache_entry(path, "full fine-tune"):
        unet.load_state_dict(read_safetensors(path)[0])
    return unet.eval(), cached


def train_or_load_style(cache_dir: Path, cfg: DemoConfig, teacher, teacher_id: str, progress: bool):
    from ..lcm_core.lora import read_adapter, write_adapter
    from .style_lora import train_style_lora

    path = cache_dir / f"style-{_key(cfg.style.to_dict(), teacher_id, CACHE_VERSION)}.safetensors"
    cached = path.is_file()
    if not cached:
        write_adapter(train_style_lora(teacher, cfg.style, progress=progress), path, format="kohya", overwrite=True)
    with reading_cache_entry(path, "style LoRA"):
        return read_adapter(path), cached


def side_distil(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path, data_folder: Path, kind: str) -> bool:
    """Side-process job: :func:`distil_adapter` (writes the cache); returns whether it was cached already."""
    return distil_adapter(cache_dir, cfg, teacher_folder, data_folder, False, kind=kind)[1]["cached"]


def side_finetune(cache_dir: Path, cfg: DemoConfig, teacher_folder: Path) -> bool:
    """Side-process job: :func:`finetune_or_load` (writes the cache); returns whether it was cached already."""
    from .evaluate import load_teacher

    return finetune_or_load(cache_dir, cfg, load_teacher(teacher_folder), teacher_folder.name, False)[1]


# ---------------------------------------------------------------------------------------- evaluation
def side_studies(cfg: DemoConfig, teacher, lcm_adapter, tcd_adapter, finetuned_unet, inst, progress: bool,
                 style_adapter=None, pcm_adapter=None):
    """The universal-acceleration test and the negative-prompt study (and, given ``style_adapter``, the style
    experiment): they share no samples with the rest of the evaluation, so they can run in the side process
    (same computation wherever they run). Returns ``(style experiment or None, acceleration, negative)``."""
    from tqdm.auto import tqdm

    style = None
    if style_adapter is not None:
        style = style_experiment(cfg, teacher, lcm_adapter, style_adapter, tcd_adapter, inst, progress,
                                 pcm_adapter=pcm_adapter)

    from .negative_prompts import negative_prompt_study
    from .student_sampling import phased_recipe, sample_lcm_student, sample_phased_student, sample_tcd_student

    accel = None
    if finetuned_unet is not None:
        adapters = {"lcm_lora": (lcm_adapter, "lcm"), **({"tcd": (tcd_adapter, "tcd")} if tcd_adapter is not None else {}),
                    **({"pcm": (pcm_adapter, "pcm")} if pcm_adapter is not None else {})}
        accel = universal_acceleration(cfg, teacher, finetuned_unet, adapters, inst, progress)
    students = {"lcm_lora": (unet_with(teacher.unet, [(lcm_adapter, 1.0)]), sample_lcm_student, "lcm")}
    if tcd_adapter is not None:
        students["tcd"] = (unet_with(teacher.unet, [(tcd_adapter, 1.0)]),
                           functools.partial(sample_tcd_student, gamma=cfg.tcd_gamma), "tcd")
    if pcm_adapter is not None:
        students["pcm"] = (unet_with(teacher.unet, [(pcm_adapter, 1.0)]),
                           # the study sets cfg itself (its configurations); the plain run is unguided
                           functools.partial(sample_phased_student, recipe=phased_recipe(pcm_adapter),
                                             guidance_scale=1.0), "pcm")
    n_neg = 2 + len(students) * len(cfg.neg_configs)
    with tqdm(total=n_neg, desc="negative prompts", disable=not progress) as bar:
        negative = negative_prompt_study(teacher, students, inst, cfg.neg_samples, cfg.resolution, cfg.seed + 4,
                                         cfg.neg_teacher_steps, cfg.guidance_scale, cfg.neg_student_steps,
                                         cfg.neg_configs, bar)
    return style, accel, negative


def style_in_side_process(cfg: DemoConfig, tcd: bool = True, finetune: bool = True, pcm: bool | None = None) -> bool:
    """Whether the style experiment joins the side process's studies: when that evens out the two processes'
    evaluation work, counted in UNet evaluations × images (fast preset: no; full preset: yes).
    ``pcm``: whether a PCM adapter is evaluated (default ``cfg.pcm``)."""
    pcm = cfg.pcm if pcm is None else pcm
    n, k = cfg.n_samples, cfg.style_steps
    pcm_per_step = 2 if "lcd.solver_guidance=false" in cfg.pcm_overrides else 1  # normal CFG: real CFG on every step
    teacher_evals = 2 * sum(cfg.teacher_steps) * len(cfg.samplers)
    main = n * (teacher_evals + sum(cfg.lcm_steps) + (sum(cfg.tcd_steps) + cfg.tcd_gamma_steps * len(cfg.tcd_gammas)
                                                      if tcd else 0) + (pcm_per_step * sum(cfg.pcm_steps) if pcm else 0))
    main += cfg.heat_samples * len(cfg.heat_lambda1) * len(cfg.heat_lambda2) * k
    from .goal_a import REFERENCE_STEPS

    main += max(0, cfg.goal_a_samples - n) * (2 * REFERENCE_STEPS + 4 + (cfg.tcd_gamma_steps * len(cfg.tcd_gammas)
                                                                      if tcd else 0) + (pcm_per_step * 4 if pcm else 0))
    style = n * (4 * cfg.style_reference_steps + 4 * k + 4 * k + (4 * k if tcd else 0) + (4 * k * pcm_per_step if pcm else 0))
    n_adapters = 1 + int(tcd) + int(pcm)
    side = n * (4 * cfg.accel_reference_steps + 2 * sum(cfg.accel_ddim_steps)
                + 2 * n_adapters * cfg.accel_steps) if finetune else 0
    from .goal_d import BAR_STEPS

    # goal (d) pooled (demo/goal_d.py): the reference, the fine-tune's DDIM 8, each adapter on the fine-tune
    side += max(0, cfg.goal_d_samples - n) * (2 * cfg.accel_reference_steps + 2 * BAR_STEPS + (
        n_adapters + (pcm_per_step - 1 if pcm else 0)) * cfg.accel_steps) if finetune else 0
    n_students = n_adapters
    nfe = [cfg.neg_student_steps + (min(s, cfg.neg_student_steps) if s is not None else cfg.neg_student_steps)
           for c, s in cfg.neg_configs if c > 1.0]
    side += cfg.neg_samples * (3 * (cfg.neg_teacher_steps + cfg.neg_student_steps)
                               + n_students * (cfg.neg_student_steps + sum(nfe)))
    return max(main, side + style) < max(main + style, side)


def evaluate_all(cfg: DemoConfig, teacher, lcm_adapter, style_adapter, inst, out_dir: Path, progress: bool,
                 tcd_adapter=None, finetuned_unet=None, side=None, timings: dict | None = None,
                 pcm_adapter=None) -> dict:
    """Every sampling experiment. ``side`` (:class:`~.parallel.SideProcess`) runs :func:`side_studies`
    beside the rest; ``timings`` receives its wall time there."""
    from tqdm.auto import tqdm

    from .parallel import SideProcess

    side = side or SideProcess(jobs=1)
    style_in_side = style_in_side_process(cfg, tcd_adapter is not None, finetuned_unet is not None,
                                          pcm_adapter is not None)
    side_job = side.submit(side_studies, cfg, teacher, lcm_adapter, tcd_adapter, finetuned_unet, inst,
                           progress and not side.parallel, style_adapter if style_in_side else None, pcm_adapter)
    t_main = time.perf_counter()

    from .evaluate import SamplePlan, sample_rows
    from .student_sampling import sample_lcm_student

    fns = sample_fns(cfg, teacher)
    plan, teacher_fn, lcm_fn, tcd_fn, pcm_fn = fns

    student = unet_with(teacher.unet, [(lcm_adapter, 1.0)])
    tcd_student = unet_with(teacher.unet, [(tcd_adapter, 1.0)]) if tcd_adapter is not None else None
    pcm_student = unet_with(teacher.unet, [(pcm_adapter, 1.0)]) if pcm_adapter is not None else None
    n_main = len(cfg.samplers) * len(cfg.teacher_steps) + len(cfg.lcm_steps)
    if tcd_student is not None:
        n_main += len(cfg.tcd_steps) + len(cfg.tcd_gammas)
    if pcm_student is not None:
        n_main += len(cfg.pcm_steps)
    rows, grids, gamma_rows = [], {}, []
    with tqdm(total=n_main, desc="evaluate samplers", disable=not progress) as bar:
        for sampler in cfg.samplers:
            r, imgs = sample_rows("teacher", sampler, cfg.teacher_steps, teacher_fn(teacher.unet, sampler), plan, inst,
                                  cfg.batch_size, bar)
            rows += r
            grids[("teacher", sampler)] = imgs
        r, imgs = sample_rows("lcm_lora", "lcm", cfg.lcm_steps, lcm_fn(student, (1.0,)), plan, inst, cfg.batch_size, bar)
        rows += r
        grids[("lcm_lora", "lcm")] = imgs
        if tcd_student is not None:
            r, imgs = sample_rows("tcd", "tcd", cfg.tcd_steps, tcd_fn(tcd_student, tag=(1.0,)), plan, inst, cfg.batch_size, bar,
                                  extra={"gamma": cfg.tcd_gamma})
            rows += r
            grids[("tcd", "tcd")] = imgs
            gamma_imgs = {}
            for gamma in cfg.tcd_gammas:
                r, imgs = sample_rows("tcd", "tcd", [cfg.tcd_gamma_steps], tcd_fn(tcd_student, gamma, (1.0,)), plan, inst,
                                      cfg.batch_size, bar, extra={"gamma": gamma})
                gamma_rows += r
                gamma_imgs[gamma] = imgs[cfg.tcd_gamma_steps]
            grids[("tcd", "gamma")] = gamma_imgs
        if pcm_student is not None:
            from .student_sampling import phased_recipe

            recipe = phased_recipe(pcm_adapter)
            r, imgs = sample_rows("pcm", "pcm", cfg.pcm_steps, pcm_fn(pcm_student, recipe, (1.0,)), plan, inst,
                                  cfg.batch_size, bar, extra={"phases": recipe.phases, "cfg": recipe.cfg})
            rows += r
            grids[("pcm", "pcm")] = imgs

    from .goal_a import goal_a_study

    goal_a = goal_a_study(cfg, teacher, plan, grids, inst,
                          {"lcm": student, "tcd": tcd_student, "pcm": pcm_student,
                           "pcm_recipe": recipe if pcm_student is not None else None}, sample_fns, progress)

    l1, l2 = cfg.lambda1, cfg.lambda2
    if not style_in_side:
        style_out = style_experiment(cfg, teacher, lcm_adapter, style_adapter, tcd_adapter, inst, progress,
                                     fns=fns, pcm_adapter=pcm_adapter)

    # --- λ1 × λ2 grid at LCM style_steps (fused separately = exact concat merge)
    hp = SamplePlan.make(cfg.heat_samples, cfg.resolution, cfg.seed + 1)
    hcond, _ = teacher.embed(hp.labels)
    heat = {m: np.zeros((len(cfg.heat_lambda1), len(cfg.heat_lambda2))) for m in ("style_score", "fd", "accuracy")}
    with tqdm(total=heat["fd"].size, desc="λ1×λ2 grid", disable=not progress) as bar:
        for i, a in enumerate(cfg.heat_lambda1):
            for j, b in enumerate(cfg.heat_lambda2):
                unet = unet_with(teacher.unet, [(style_adapter, a), (lcm_adapter, b)])
                res = sample_lcm_student(unet, hcond, hp.noise, cfg.style_steps, seed=cfg.seed)
                m = inst.measure(res.images, hp.labels)
                for key in heat:
                    heat[key][i, j] = m[key]
                bar.update(1)

    if timings is not None:
        timings["evaluation: this process"] = round(time.perf_counter() - t_main, 2)
    what = ("style experiment, " if style_in_side else "") + "universal acceleration, negative prompts"
    if progress and side.parallel:
        print(f"[demo] waiting for the side process ({what}) …", flush=True)
    (side_style, accel, negative), side_seconds = side_job.result()
    style_rows, style_grids, merge_reports, merged_adapters = side_style if style_in_side else style_out
    if timings is not None:
        where = "side process" if side.parallel else "after the rest"
        timings[f"evaluation: {where} ({what})"] = round(side_seconds, 2)
    return {
        "rows": rows, "grids": grids, "plan": plan, "tcd_gamma_rows": gamma_rows, "goal_a": goal_a,
        "style": {"settings": cfg.style.to_dict(), "lambda1": l1, "lambda2": l2, "rows": style_rows,
                  "merge_reports": merge_reports,
                  "heatmap": {"lambda1": list(cfg.heat_lambda1), "lambda2": list(cfg.heat_lambda2), "n": cfg.heat_samples,
                              "steps": cfg.style_steps, "noise_seed": cfg.seed + 1,
                              **{key: v.round(5).tolist() for key, v in heat.items()}}},
        "style_grids": style_grids, "merged_adapters": merged_adapters,
        "universal_acceleration": accel, "negative_prompts": negative,
    }


# ---------------------------------------------------------------------------------------- figures
def write_figures(out_dir: Path, ev: dict, cal: dict, cfg: DemoConfig) -> dict:
    from .plots import plot_heatmap, plot_quality, save_image_grid
    from .teacher_samplers import MODEL_LABELS, SAMPLER_LABELS

    figs = {"quality": [], "grids": [], "style": []}
    rows = ev["rows"]
    n = cfg.n_samples
    for x, metric, name, alt in (
        ("steps", "fd", "fd_vs_steps.png", "FD vs sampling steps"),
        ("nfe", "fd", "fd_vs_unet_evals.png", "FD vs UNet evaluations (a CFG step costs 2)"),
        ("ms_per_image", "fd", "fd_vs_time.png", "FD vs wall time per image"),
        ("steps", "accuracy", "accuracy_vs_steps.png", "class accuracy vs sampling steps"),
        ("steps", "fd_pixel", "fd_pixel_vs_steps.png", "pixel FD vs sampling steps"),
    ):
        floor = {"fd": cal["fd_real_vs_real"], "fd_pixel": cal["fd_pixel_real_vs_real"]}.get(metric)
        plot_quality(rows, out_dir / name, x, metric, floor=floor, title=f"{alt} ({n} samples per point)")
        figs["quality"].append((name, f"{alt}; {n} samples per point"))
    order = np.argsort(ev["plan"].labels.numpy(), kind="stable")[:: max(1, cfg.n_samples // 10)][:10]
    pick = torch.from_numpy(order)
    for (model, sampler), imgs in ev["grids"].items():
        who = MODEL_LABELS.get(model, model)
        name = f"grid_{model}_{sampler}.png"
        if sampler == "gamma":
            save_image_grid([(f"γ {gm:g}, {steps_text(cfg.tcd_gamma_steps)}", v[pick]) for gm, v in sorted(imgs.items())],
                            out_dir / name, title=f"{who}: γ sweep (same prompts and noise in every row)")
            figs["grids"].append((name, f"{who} samples at {steps_text(cfg.tcd_gamma_steps)}, γ "
                                        f"{' / '.join(f'{g:g}' for g in sorted(imgs))}, digits 0–9"))
            continue
        label = SAMPLER_LABELS.get(sampler, sampler) + (f" γ {cfg.tcd_gamma:g}" if sampler == "tcd" else "")
        save_image_grid([(steps_text(k), v[pick]) for k, v in sorted(imgs.items())], out_dir / name,
                        title=f"{who} {label} (same prompts and noise in every row)")
        figs["grids"].append((name, f"{who} {label} samples, digits 0–9"))
    save_image_grid([(label, v[pick]) for label, v in ev["style_grids"].items()], out_dir / "grid_style.png",
                    title=f"style merge (λ1={cfg.lambda1:g}, λ2={cfg.lambda2:g}; same prompts and noise in every row)")
    figs["style"].append(("grid_style.png", "style experiment samples (rows as in the table)"))
    hm = ev["style"]["heatmap"]
    for metric, fmt, title in (("style_score", "{:.2f}", "style score"), ("fd", "{:.0f}", "FD ↓"),
                               ("accuracy", "{:.2f}", "class accuracy")):
        name = f"heatmap_{metric}.png"
        plot_heatmap(np.array(hm[metric]), hm["lambda1"], hm["lambda2"], out_dir / name,
                     f"{title}, LCM {steps_text(hm['steps'])}, τ = λ1·τ_style + λ2·τ_LCM\n"
                     f"{hm['n']} samples per cell (own noise draw)", fmt=fmt)
        figs["style"].append((name, f"λ1×λ2 heat map: {title}; {hm['n']} samples per cell from their own noise draw, "
                                    f"so a cell differs from the table's {n}-sample row at the same λ"))
    return figs


# ---------------------------------------------------------------------------------------- driver
def environment(threads: int | None = None, processes: int = 1) -> dict:
    """``threads``: torch threads per process (default: the current count); ``processes``: 2 when the side
    process ran stages beside this one."""
    threads = threads or torch.get_num_threads()
    procs = f"{processes} processes × " if processes > 1 else ""
    # The kernel set torch picked (AVX2 / AVX512 / DEFAULT): training on another set gives other float
    # roundings, so a cold run's numbers differ from another CPU's by sampling noise (BENCHMARKS.md).
    kernels = torch.backends.cpu.get_cpu_capability()
    return {"torch": torch.__version__, "threads": threads, "processes": processes, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "cpu_capability": kernels,
            "summary": f"CPU ({kernels} kernels), {procs}{threads} torch thread{'s' if threads != 1 else ''}, "
                       f"{os.cpu_count()} cores visible, torch {torch.__version__}"}


def run_demo_pipeline(out_dir: str | os.PathLike, cfg: DemoConfig | None = None, cache_dir: str | os.PathLike | None = None,
                      retrain_teacher: bool = False, progress: bool = True, jobs: int = 2) -> dict:
    """Run every stage and write the report; returns the results dict (also ``out_dir/results.json``).

    ``jobs=2`` runs independent stages in a second process (:mod:`.parallel`); ``jobs=1`` runs them here,
    one after the other. Every number but the timings is the same either way."""
    from ..training.tiny_models import TINY_TEXT_DIM  # noqa: F401  (fail early if the trainer package is missing)
    from .evaluate import build_instruments, load_teacher
    from .report import write_report

    cfg = cfg or PRESETS["full"]
    from .goal_a import check_goal_a_config
    from .goal_d import check_goal_d_config

    check_goal_a_config(cfg)
    check_goal_d_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    st = Stages(progress)
    load_start = _load_average()

    teacher_folder, teacher_info = st.run("teacher", prepare_teacher, cache_dir, cfg, retrain_teacher, progress)
    teacher = load_teacher(teacher_folder)
    n_params = sum(p.numel() for p in teacher.unet.parameters())
    teacher_info["description"] = (f"UNet2DConditionModel {n_params / 1e6:.2f} M parameters "
                                   f"(blocks {list(teacher.unet.config.block_out_channels)}), tiny CLIPTextModel, SD "
                                   f"scaled_linear schedule, pixel space {cfg.resolution}×{cfg.resolution}")
    data_folder = st.run("export data", export_training_data, cache_dir, cfg)
    from .parallel import SideProcess, one_blas_thread, torch_threads

    # Two processes on two cores (demo/parallel.py): the side process distils the TCD adapter and fine-tunes
    # the teacher while this one trains the classifiers, the LCM-LoRA and the style LoRA; later it runs the
    # acceleration and negative-prompt studies beside the main evaluation. Each process gets its share of the
    # torch threads (one each on 2 cores); each stage computes exactly what it computes in a serial run.
    jobs = max(1, int(jobs))
    share = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
    with SideProcess(jobs, share or 1) as side, torch_threads(share), one_blas_thread():
        where = " (side process)" if side.parallel else ""
        if progress and side.parallel:
            print(f"[demo] side process: TCD {'and PCM ' if cfg.pcm else ''}distillation, then the full fine-tune",
                  flush=True)
        tcd_job = side.submit(side_distil, cache_dir, cfg, teacher_folder, data_folder, "tcd")
        pcm_job = side.submit(side_distil, cache_dir, cfg, teacher_folder, data_folder, "pcm") if cfg.pcm else None
        ft_job = side.submit(side_finetune, cache_dir, cfg, teacher_folder)
        inst = st.run("classifiers", build_instruments, cfg.resolution, cfg.split_seed, cfg.style.style,
                      cache_dir / "classifiers", cfg.n_samples, progress)
        lcm_adapter, lcm_info = st.run("LCM-LoRA distillation", distil_lcm_lora, cache_dir, cfg, teacher_folder,
                                       data_folder, progress)
        style_adapter, style_cached = st.run("style LoRA", train_or_load_style, cache_dir, cfg, teacher,
                                             teacher_folder.name, progress)
        tcd_cached, seconds = tcd_job.result()
        st.record("TCD distillation", seconds, where)
        tcd_adapter, tcd_info = distil_tcd(cache_dir, cfg, teacher_folder, data_folder, progress)
        tcd_info["cached"] = tcd_cached
        pcm_adapter, pcm_info = None, None
        if pcm_job is not None:
            pcm_cached, seconds = pcm_job.result()
            st.record("PCM distillation", seconds, where)
            pcm_adapter, pcm_info = distil_pcm(cache_dir, cfg, teacher_folder, data_folder, progress)
            pcm_info["cached"] = pcm_cached
        ft_cached, seconds = ft_job.result()
        st.record("full fine-tune", seconds, where)
        ft_unet = finetune_or_load(cache_dir, cfg, teacher, teacher_folder.name, progress)[0]
        st.timings["training stages (wall)"] = round(time.perf_counter() - st._start, 2)
        ev = st.run("evaluation", evaluate_all, cfg, teacher, lcm_adapter, style_adapter, inst, out_dir, progress,
                    tcd_adapter=tcd_adapter, finetuned_unet=ft_unet, side=side, timings=st.timings,
                    pcm_adapter=pcm_adapter)
    cal = dict(inst.calibration)
    from .dataset import load_digit_images, split_indices

    cal["train_n"] = int(len(split_indices(load_digit_images(cfg.resolution)[1], seed=cfg.split_seed).train))
    figs = st.run("figures", write_figures, out_dir, ev, cal, cfg)
    from .export_models import export_models

    l1, l2 = cfg.lambda1, cfg.lambda2
    from .teacher_samplers import MODEL_LABELS

    merged_files = {f"merged_{k}.safetensors": (a, f"style LoRA ×{l1:g} + "
                                                   f"{MODEL_LABELS['lcm_lora' if k.split('_')[1] == 'lcm' else k.split('_')[1]]} "
                                                   f"×{l2:g}, {k.rsplit('_', 1)[1]} merge")
                    for k, a in ev["merged_adapters"].items()}
    models = st.run("export models", export_models, out_dir, teacher_folder, data_folder,
                    {"lcm_lora.safetensors": (lcm_info["path"], "the LCM-LoRA (lcm-lora train, objective lcm)"),
                     "tcd_lora.safetensors": (tcd_info["path"], "the TCD adapter (lcm-lora train, objective tcd)"),
                     **({"pcm_lora.safetensors": (pcm_info["path"], "the PCM adapter (lcm-lora train, objective pcm)")}
                        if pcm_info else {})},
                    {"style_lora.safetensors": (style_adapter, f"the style LoRA ({cfg.style.style} strokes)"),
                     **merged_files}, ft_unet)
    results = {
        "version": 2,
        "config": cfg.to_dict(),
        "environment": environment(share, 2 if share else 1),
        "teacher": teacher_info,
        "lcm_lora": lcm_info,
        "tcd": tcd_info,
        **({"pcm": pcm_info} if pcm_info else {}),
        "finetune": {**cfg.finetune.to_dict(), "cached": ft_cached},
        "calibration": cal,
        "rows": ev["rows"],
        "tcd_gamma_rows": ev["tcd_gamma_rows"],
        **({"goal_a": ev["goal_a"]} if ev.get("goal_a") else {}),
        "style": {**ev["style"], "cached": style_cached},
        "universal_acceleration": ev["universal_acceleration"],
        "negative_prompts": ev["negative_prompts"],
        "claims": check_claims(ev["rows"], ev["style"], accel=ev["universal_acceleration"],
                               negative=ev["negative_prompts"], goal_a=ev.get("goal_a")),
        "figures": figs,
        "models": models,
        "timings": {**st.timings},
    }
    results["timings"]["total"] = st.total()
    results["environment"]["load_average_start"] = load_start
    results["environment"]["load_average_end"] = _load_average()
    write_report(results, out_dir)
    if progress:
        print(f"[demo] wrote {out_dir / 'report.md'} ({results['timings']['total']:.0f} s)", flush=True)
        for c in results["claims"].values():
            print(f"[demo] {'PASS' if c['passed'] else 'FAIL'}: {c['statement']} — {c['detail']}", flush=True)
    return results
