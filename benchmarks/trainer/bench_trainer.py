"""Trainer speed and memory: our training step vs the diffusers reference step, same model and config.

    LCM_REFERENCE_SCRIPT=/path/to/train_lcm_distill_lora_sd_wds.py \\
        python benchmarks/trainer/bench_trainer.py --model tiny            # CPU
    ... --model sd15 --resolution 512 --batch 4 --mixed-precision fp16 --rank 64   # GPU (random weights)
    LCM_REFERENCE_SCRIPT_SDXL=/path/to/train_lcm_distill_lora_sdxl.py \\
        python benchmarks/trainer/bench_trainer.py --model sdxl-tiny       # CPU, SDXL-type tiny teacher
    ... --model sdxl --resolution 1024 --batch 1 --mixed-precision fp16   # GPU (random weights; also ssd1b)

Each side runs in its own fresh process (clean peak-memory accounting):

* ours: ``lcm_lora.training.trainer.TrainingSession.step()`` — the exact step ``train()`` runs
  (data loading from image files, VAE + text encoding, LCD loss, backward, clip, AdamW);
* reference: the training-step block of ``$LCM_REFERENCE_SCRIPT`` (``--model tiny/sd15``) or
  ``$LCM_REFERENCE_SCRIPT_SDXL`` (``--model sdxl-tiny/sdxl/ssd1b``) executed from its own source
  (``reference_step.py``), with batches handed over in memory (no data loading; SDXL: uncropped
  images at the training resolution, i.e. the time ids our data loader gives these images).

Reported: steps/s over ``--steps`` timed steps after ``--warmup``; peak memory while training
(after setup; models, optimizer state, activations): CUDA ``max_memory_allocated`` on GPU, or on
CPU the peak RSS (VmHWM, reset after setup) minus the RSS after all imports (the Python/library
baseline is excluded; glibc set to return freed memory at once). Goals (issue):
ours/reference ≥ 1.3× steps/s and ≤ 0.7× peak memory. ``--no-teacher-autocast`` turns off the
reference's ``torch.autocast(device)`` around its teacher passes (on CPU that is bf16, which
can make the reference slower for a reason unrelated to the algorithm); both numbers are printed
when ``--both-autocast`` is given. The SDXL script has no teacher autocast (its UNet runs in the
weight dtype), so for the SDXL models those flags do not apply. Note that the SDXL script upcasts its
LoRA weights to fp32 only under fp16 (``cast_training_params``); under bf16 it trains bf16 LoRA weights
(and Adam states), while ours keeps them in fp32 as the issue asks — compare SDXL memory at fp16.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib() -> float:
    """Peak RSS since the last :func:`_reset_peak_rss` (Linux VmHWM), else since process start."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM, so loading peaks do not count (like
    ``torch.cuda.reset_peak_memory_stats`` after setup)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _preimport() -> None:
    """Import every library both sides use before the RSS baseline, so it does not count as training memory."""
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from accelerate import Accelerator  # noqa: F401
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, LCMScheduler, UNet2DConditionModel  # noqa: F401
    from diffusers.optimization import get_scheduler  # noqa: F401
    from peft import LoraConfig, get_peft_model  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: F401

    import lcm_lora.training.trainer  # noqa: F401
    from lcm_lora.lcm_core.lora import write_adapter  # noqa: F401


# ------------------------------------------------------------------------------------------ assets
FULL_SIZE = {"sd15": "sd1", "sdxl": "sdxl", "ssd1b": "ssd1b"}  # --model → lcm_core architecture


def build_teacher(model: str, folder: Path, resolution: int) -> Path:
    """tiny / sdxl-tiny: training/tiny_models.py (``variant="sdxl"``: text_time UNet, two text encoders);
    sd15 / sdxl / ssd1b: :func:`build_full_size_teacher`."""
    if (folder / "unet").is_dir():
        return folder
    if model in ("tiny", "sdxl-tiny"):
        from lcm_lora.training.tiny_models import build_tiny_teacher

        return build_tiny_teacher(folder, image_size=resolution, variant="sdxl" if model == "sdxl-tiny" else "sd")
    if model not in FULL_SIZE:
        raise SystemExit(f"--model {model}: not one of tiny, sdxl-tiny, {', '.join(FULL_SIZE)}")
    return build_full_size_teacher(FULL_SIZE[model], folder)


def build_full_size_teacher(arch: str, folder: Path) -> Path:
    """A random-weight diffusers folder with the real architecture (UNet, text encoder(s), VAE) of
    ``arch`` (sd1 / sdxl / ssd1b), from the in-code configs of ``lcm_core.model_configs`` — speed and
    memory depend on shapes, not on weight values. Tokenizers are the tiny generated ones (the step
    cost does not depend on the vocabulary). Written to a temporary folder, then renamed."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lcm_lora.lcm_core.model_configs import text_encoder_configs, unet_config
    from lcm_lora.training.single_file import vae_config
    from lcm_lora.training.teacher import sd_noise_scheduler
    from lcm_lora.training.tiny_models import write_model_index, write_tiny_tokenizer

    torch.manual_seed(0)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, cfg in text_encoder_configs(arch).items():
        second = name == "text_encoder_2"
        write_tiny_tokenizer(tmp / name.replace("text_encoder", "tokenizer"), model_max_length=77,
                             **({"pad_token": "!"} if second else {}))
        cls = CLIPTextModelWithProjection if second else CLIPTextModel
        cls(CLIPTextConfig(**cfg)).save_pretrained(tmp / name)
    UNet2DConditionModel(**unet_config(arch)).save_pretrained(tmp / "unet")
    cfg = vae_config(arch)
    AutoencoderKL(**{k: v for k, v in cfg.items() if k != "force_upcast"},
                  force_upcast=cfg.get("force_upcast", False)).save_pretrained(tmp / "vae")
    sd_noise_scheduler().save_pretrained(tmp / "scheduler")
    write_model_index(tmp, "sd" if arch == "sd1" else "sdxl")
    tmp.rename(folder)
    return folder


def build_data(folder: Path, n: int, size: int) -> Path:
    if not folder.is_dir():
        from lcm_lora.training.tiny_models import write_tiny_dataset

        write_tiny_dataset(folder, n=n, size=size)
    return folder


# ------------------------------------------------------------------------------------------ workers
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def worker_ours(a) -> dict:
    import torch

    from lcm_lora.training.config import load_config
    from lcm_lora.training.distributed import init_distributed
    from lcm_lora.training.trainer import TrainingSession

    _preimport()
    base = _rss_mib()
    overrides = [f"teacher={a.teacher}", f"data={a.data}", f"batch_size={a.batch}", f"lora.rank={a.rank}",
                 f"lora.alpha={a.rank}", f"data.resolution={a.resolution}", "data.buckets=false",
                 f"data.bucket_step={8 if a.model.endswith('tiny') else 64}", f"train.mixed_precision={a.mixed_precision}",
                 f"train.gradient_checkpointing={str(a.gradient_checkpointing).lower()}",
                 f"data.cache_latents={str(a.cache).lower()}", f"data.cache_text={str(a.cache).lower()}",
                 f"max_steps={a.warmup + a.steps + 1}", "validation.every=0", "checkpoint.every=0", "logging.progress=false",
                 f"train.device={a.device}", "optim.learning_rate=1e-4"]
    if a.ours_config:  # a memory preset: its precision / checkpointing / cache / optimizer settings, our batch and size
        keep = ("teacher=", "data=", "batch_size=", "lora.", "data.resolution=", "data.buckets=", "data.bucket_step=",
                "max_steps=", "validation.", "checkpoint.", "logging.", "train.device=")
        overrides = [o for o in overrides if o.startswith(keep)] + ["train.gradient_accumulation=1",
                                                                    "logging.memory_estimate=false", *a.ours_set]
    cfg = load_config(a.ours_config or HERE.parents[1] / "configs" / "tiny_cpu.yaml", overrides)
    ctx = init_distributed(cfg.train.device)
    with tempfile.TemporaryDirectory() as out:
        session = TrainingSession(cfg, Path(out), ctx, progress=False).setup()
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _reset_peak_rss()
        for _ in range(a.warmup):
            session.step()
        _sync(ctx.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            session.step()
        _sync(ctx.device)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _result("ours", a, elapsed, cpu, base, ctx.device)


def worker_reference(a) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from reference_step import make_reference_trainer

    _preimport()
    base = _rss_mib()
    ref = make_reference_trainer(_kind(a.model), a.teacher, rank=a.rank, batch_size=a.batch, resolution=a.resolution,
                                 mixed_precision=a.mixed_precision, teacher_autocast=not a.no_teacher_autocast,
                                 device=a.device if a.device != "auto" else None,
                                 gradient_checkpointing=a.gradient_checkpointing)
    if ref.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(a.batch, 3, a.resolution, a.resolution, generator=gen) * 2 - 1).to(ref.device)
    captions = ["a red circle", "a blue square", "a green ring", "a white cross"] * (a.batch // 4 + 1)
    for _ in range(a.warmup):
        ref.step(images, captions[: a.batch])
    _sync(ref.device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        ref.step(images, captions[: a.batch])
    _sync(ref.device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return _result("reference", a, elapsed, cpu, base, ref.device)


def _kind(model: str) -> str:
    """Which reference script: ``sdxl`` (train_lcm_distill_lora_sdxl.py) or ``sd`` (…_sd_wds.py)."""
    return "sdxl" if model.startswith("sdxl") or model == "ssd1b" else "sd"


def _result(side, a, elapsed, cpu_seconds, base_rss, device) -> dict:
    import torch

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        kind = "cuda max_memory_allocated"
    else:
        peak = _peak_rss_mib() - base_rss
        kind = "peak RSS while training (loading peak excluded) - RSS after imports"
    return {"side": side, "steps_per_s": a.steps / elapsed, "steps_per_cpu_s": a.steps / max(cpu_seconds, 1e-9),
            "peak_mib": peak, "memory": kind, "device": str(device), "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------ driver
def _run_worker(side: str, a, extra=(), cache: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--teacher", str(a.teacher), "--data", str(a.data),
           "--model", a.model, "--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch),
           "--resolution", str(a.resolution), "--rank", str(a.rank), "--mixed-precision", a.mixed_precision,
           "--device", a.device, "--threads", str(a.threads), *extra]
    if a.ours_config:
        cmd += ["--ours-config", str(a.ours_config), *[f"--ours-set={o}" for o in a.ours_set]]
    if a.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if cache:
        cmd.append("--cache")
    # glibc: fixed mmap threshold and eager trimming, so freed tensor memory leaves the RSS and the
    # peak RSS tracks the peak of live memory (otherwise the heap keeps freed chunks resident).
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{side} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=("tiny", "sdxl-tiny", "sd15", "sdxl", "ssd1b"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: 16 tiny, 512 sd15, 1024 sdxl/ssd1b)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: 8 tiny, 64 sd15)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--cache", action="store_true", help="ours with the latent/text cache (the reference has none)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker (CPU)")
    p.add_argument("--no-teacher-autocast", action="store_true")
    p.add_argument("--both-autocast", action="store_true", help="run the reference with and without its teacher autocast")
    p.add_argument("--repeats", type=int, default=3, help="alternate the workers this many times; report medians")
    p.add_argument("--workdir", default=None, help="keep the generated teacher/data here (default: a temp folder)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--ours-config", default=None,
                   help="run ours from this config (e.g. configs/sdxl_24gb.yaml: its precision, checkpointing, caches, "
                        "optimizer) at --batch / --resolution / --rank, accumulation 1; the reference keeps --mixed-precision "
                        "(default 'no', the script's default) and no checkpointing unless --gradient-checkpointing")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for ours with --ours-config (e.g. train.mixed_precision=bf16 on CPU)")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and the reference script path, print the plan, exit")
    p.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    tiny = a.model.endswith("tiny")
    a.resolution = a.resolution or (16 if tiny else 512 if a.model == "sd15" else 1024)
    a.rank = a.rank or (8 if tiny else 64)

    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        result = worker_ours(a) if a.worker == "ours" else worker_reference(a)
        print(json.dumps(result))
        return 0

    from reference_step import reference_path

    reference_path(_kind(a.model))  # fail early with a clear message when LCM_REFERENCE_SCRIPT[_SDXL] is missing
    if a.ours_config:
        from lcm_lora.training.config import load_config

        load_config(a.ours_config, list(a.ours_set))  # a bad preset or override fails here, not in a worker
    if a.dry_run:
        print(f"dry run: model={a.model} resolution={a.resolution} batch={a.batch} rank={a.rank} "
              f"mixed_precision={a.mixed_precision} ours_config={a.ours_config} ours_set={a.ours_set} repeats={a.repeats}")
        return 0
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lcm_bench_"))
    a.teacher = build_teacher(a.model, work / f"teacher_{a.model}_{a.resolution}", a.resolution)
    a.data = build_data(work / f"data_{a.resolution}", n=max(2 * a.batch, 16), size=a.resolution)
    print(f"model={a.model} resolution={a.resolution} batch={a.batch} rank={a.rank} mixed_precision={a.mixed_precision} "
          f"gradient_checkpointing={a.gradient_checkpointing} steps={a.steps} warmup={a.warmup} threads={a.threads}", flush=True)
    variants = [False, True] if a.both_autocast else [a.no_teacher_autocast]
    if _kind(a.model) == "sdxl":
        variants = [True]  # the SDXL script has no teacher autocast: one reference variant ("off")
    sides = {"ours": []} | ({"ours (cache)": []} if a.cache else {}) | {f"ref{int(v)}": [] for v in variants}
    for _ in range(a.repeats):  # alternate, so load changes on a shared machine hit both sides alike
        sides["ours"].append(_run_worker("ours", a, cache=False))
        if a.cache:
            sides["ours (cache)"].append(_run_worker("ours", a, cache=True))
        for v in variants:
            sides[f"ref{int(v)}"].append(_run_worker("reference", a, ["--no-teacher-autocast"] if v else []))

    def median(runs, key):
        values = sorted(r[key] for r in runs)
        return values[len(values) // 2]

    table = {name: {"steps_per_s": median(runs, "steps_per_s"), "steps_per_cpu_s": median(runs, "steps_per_cpu_s"),
                    "peak_mib": median(runs, "peak_mib"), "runs": runs} for name, runs in sides.items()}
    first = sides["ours"][0]
    print(f"device: {first['device']}   memory: {first['memory']}   medians of {a.repeats} alternating runs")
    print(f"{'':34s} {'steps/s':>9s} {'steps/CPU-s':>12s} {'peak MiB':>10s}")
    for name in [n for n in table if n.startswith("ours")]:
        t = table[name]
        print(f"{name:34s} {t['steps_per_s']:9.3f} {t['steps_per_cpu_s']:12.3f} {t['peak_mib']:10.1f}")
    ours = table["ours"]
    for v in variants:
        ref = table[f"ref{int(v)}"]
        label = f"reference (teacher autocast {'off' if v else 'on'})" if _kind(a.model) == "sd" else "reference SDXL script"
        print(f"{label:34s} {ref['steps_per_s']:9.3f} {ref['steps_per_cpu_s']:12.3f} {ref['peak_mib']:10.1f}   "
              f"speed ratio {ours['steps_per_s'] / ref['steps_per_s']:.2f}x wall, "
              f"{ours['steps_per_cpu_s'] / ref['steps_per_cpu_s']:.2f}x CPU (goal >= 1.3)   "
              f"memory ratio {ours['peak_mib'] / ref['peak_mib']:.2f}x (goal <= 0.7)")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "results": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
