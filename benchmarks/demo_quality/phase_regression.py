"""Diagnostic: a phased (PCM) student without the consistency bootstrap. Is the bootstrap what costs accuracy?

PCM (Wang et al. 2024, arXiv 2405.18407, Eq. 8) trains the edge-to-edge map against one guided teacher DDIM step
followed by the EMA target's own map to the edge. Here the same student (the teacher's UNet + a rank-8 LoRA,
ε-prediction, one DDIM jump from t to the phase edge below t) is regressed directly on the teacher's *full*
DDIM solve from t to that edge on the 50-point grid (skip 20; guided with CFG ``--cfg`` where a step's start
timestep is in ``--interval``; the last phase ends at timestep 0): no target network, no bootstrap, about 7
teacher CFG evaluations per sample instead of one. Pseudo-Huber loss (c 0.001), AdamW lr 1e-3, batch 16, one
grid timestep per batch (so the teacher solve stays batched), the demo's training split. Then the student is
sampled and measured as ``tcd_recipes.py`` does (TCD sampler on the phase edges, γ 0 / 0.3 / 0.4 / 0.5; the
demo's prompts, noise and metrics at ``--n`` samples).

``--augment-style inverted`` tests *teacher augmentation* for goal (d) (an adapter that accelerates checkpoints it
never saw): a second teacher, the demo's teacher fully fine-tuned on that style of the training digits
(``demo.finetune.finetune_teacher`` with the preset's fine-tune settings), is drawn for a share ``--augment-prob``
of the batches, with its style's images; both teachers carry the *same* LoRA parameters, so one adapter learns
to map both. The option repeats, and ``STYLE:SEED`` sets the fine-tune's seed: ``--augment-style plain:11
--augment-style plain:12 ...`` adds *style-neutral* fine-tunes (the teacher's own data, other seeds): weight
changes of a fine-tune's size and kind (the same AdamW steps) without a new look, drawn uniformly within the
augmented share. Goal (d) is then measured on the demo's bold fine-tune, which no teacher is (FD to its 25-step
DDIM samples, seed 0, as ``tcd_recipes.py``; printed for every run).

This is a hand-written training loop on purpose: the trainer has no such objective (it would cost ≈ 4× per
step on real models); it answers one question and is not a recipe.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/phase_regression.py --cache /tmp/q13cache \
        --work /tmp/q13work --steps 600 --interval 200,700
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality
from phase_swap import _ddim_jump, bench_arguments  # noqa: E402


def load_bench(args):
    """``tcd_recipes``, its ``Bench`` on ``args.cache`` / ``args.work`` at ``args.n`` samples, and the teacher's ᾱ
    (float64); one torch thread, as every script here."""
    import tcd_recipes
    from lcm_lora.demo.teacher_samplers import make_scheduler

    torch.set_num_threads(1)
    bench = tcd_recipes.Bench(args.cache, args.work, args.n, 0, "fast")
    alphas = make_scheduler("ddim", bench.teacher.scheduler_config).alphas_cumprod.double()
    return tcd_recipes, bench, alphas


def measure_student(recipes, bench, unet, gammas, **info):
    """Sample ``unet`` (a 4-phase student) as ``tcd_recipes.py`` does — the TCD sampler on the phase edges at each γ,
    the demo's prompts, noise and metrics — and print one JSON line per γ (``info`` added)."""
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.demo.student_sampling import sample_tcd_student
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    for gamma in gammas:
        def fn(sl, k, gamma=gamma):
            return sample_tcd_student(unet, bench.cond[sl], bench.plan.noise[sl], k, gamma=gamma,
                                      seed=sampler_seed(bench.cfg.seed + sl.start),
                                      timesteps=phased_timesteps(k, 4, "pcm"))

        row = recipes.sample_rows("student", "tcd", [4], fn, bench.plan, bench.inst, bench.cfg.batch_size,
                                  keep_images=False)[0][0]
        print(json.dumps({**info, "gamma": gamma, "n": len(bench.plan.labels), "fd": round(row["fd"], 2),
                          "fd_se": round(row["fd_se"], 2), "accuracy": row["accuracy"]}), flush=True)


def real_training_images(bench):
    """The demo's training split (the only real images the teacher learnt from) and its labels."""
    from lcm_lora.demo.dataset import load_digit_images, split_indices

    images, labels = load_digit_images(bench.cfg.resolution)
    train = torch.from_numpy(split_indices(labels, seed=bench.cfg.split_seed).train)
    return images[train], labels[train]


def phase_end(t: int, phases: int = 4) -> int:
    """The phase edge below timestep ``t``: the largest of PCM's lower phase edges
    (``lcm_core.phased_timesteps.pcm_phase_edges``: 0 / 239 / 499 / 739 for 4 phases) under ``t``."""
    from lcm_lora.lcm_core.phased_timesteps import pcm_phase_edges

    return max(e for e in pcm_phase_edges(phases) if e < t)


@torch.no_grad()
def teacher_solve(unet, x, t: int, end: int, cond, uncond, alphas_cumprod, g: float, interval, skip: int = 20):
    """Guided DDIM from grid timestep ``t`` down to ``end`` in steps of ``skip`` (the last step lands on ``end``)."""
    from lcm_lora.lcm_core.denoisers import unet_eps_fn

    guided = unet_eps_fn(unet, cond, negative_encoder_hidden_states=uncond, guidance_scale=g)
    plain = unet_eps_fn(unet, cond)
    path = list(range(t, end, -skip)) + [end]
    for u, v in zip(path[:-1], path[1:]):
        eps_fn = guided if g > 1.0 and interval[0] <= u <= interval[1] else plain
        x = _ddim_jump(x, eps_fn(x, torch.full((x.shape[0],), u)), alphas_cumprod[u], alphas_cumprod[v])
    return x


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--interval", default="0,999")
    p.add_argument("--gammas", default="0,0.3,0.4,0.5")
    p.add_argument("--augment-style", action="append", default=[],
                   help="STYLE[:SEED]: a further teacher fine-tuned on this style (e.g. inverted, plain:11); repeats")
    p.add_argument("--augment-prob", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0, help="LoRA init and batch draws")
    args = p.parse_args()
    from lcm_lora.demo.dataset import apply_style
    from lcm_lora.training.student import AdapterSwitch, add_lora

    recipes, bench, alphas = load_bench(args)
    teacher = bench.teacher
    lo, hi = (int(v) for v in args.interval.split(","))
    images, labels = real_training_images(bench)
    cond_all, uncond_all = teacher.embed(torch.arange(10))
    unet = copy.deepcopy(teacher.unet)
    torch.manual_seed(args.seed)  # peft's LoRA init draws from the global generator
    named = add_lora(unet, 8, 8, 0.0, None)
    params = [p for _, p in named]
    switch = AdapterSwitch(unet)
    augmented = []  # (style, teacher sharing the LoRA, its switch)
    for spec in args.augment_style:
        style, _, seed = spec.partition(":")
        aug = with_shared_lora(augment_teacher(bench, style, int(seed) if seed else None), named)
        augmented.append((style, aug, AdapterSwitch(aug)))
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    grid = torch.arange(1, 51) * 20 - 1
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        idx = torch.randint(len(images), (16,), generator=gen)
        x0, cond, uncond = images[idx], cond_all[labels[idx]], uncond_all[labels[idx]]
        t = int(grid[int(torch.randint(50, (1,), generator=gen))])
        end = phase_end(t)
        noise = torch.randn(x0.shape, generator=gen)
        use_aug = bool(augmented) and float(torch.rand((), generator=gen)) < args.augment_prob
        model, model_switch = unet, switch
        if use_aug:
            # one extra teacher draws no index, so the earlier single-teacher runs draw as they did
            pick = int(torch.randint(len(augmented), (1,), generator=gen)) if len(augmented) > 1 else 0
            style, model, model_switch = augmented[pick]
            x0 = apply_style(x0, style)
        x_t = (alphas[t].sqrt() * x0 + (1 - alphas[t]).sqrt() * noise).float()
        with model_switch.disabled():
            target = teacher_solve(model, x_t, t, end, cond, uncond, alphas, args.cfg, (lo, hi))
        pred = _ddim_jump(x_t, model(x_t, torch.full((16,), t), cond, return_dict=False)[0], alphas[t], alphas[end])
        loss = (((pred - target) ** 2 + 1e-6).sqrt() - 1e-3).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    train_seconds = time.time() - start
    unet.eval()
    info = dict(steps=args.steps, seed=args.seed, cfg=args.cfg, interval=[lo, hi], augment_style=args.augment_style or None,
                augment_prob=args.augment_prob if args.augment_style else None, train_seconds=round(train_seconds))
    measure_student(recipes, bench, unet, [float(v) for v in args.gammas.split(",")], **info)
    measure_on_finetune(bench, with_shared_lora(copy.deepcopy(bench.ft), named).eval(), **info)


def augment_teacher(bench, style: str, seed: int | None = None):
    """The demo's teacher fully fine-tuned on ``style`` with the preset's fine-tune settings, at ``seed`` if given
    (cached in ``--work``)."""
    import dataclasses

    from lcm_lora.demo.finetune import finetune_teacher
    from safetensors.torch import load_file, save_file

    settings = dataclasses.replace(bench.cfg.finetune, style=style)
    if seed is not None:
        settings = dataclasses.replace(settings, seed=seed)
    path = bench.work / f"augment-finetune-{style}{'' if seed is None else f'-s{seed}'}.safetensors"
    if not path.is_file():
        save_file(finetune_teacher(bench.teacher, settings, progress=False), str(path))
    unet = copy.deepcopy(bench.teacher.unet)
    unet.load_state_dict(load_file(str(path)))
    return unet.eval()


def with_shared_lora(unet, named):
    """``unet`` with LoRA layers whose parameters *are* the given ``(name, parameter)`` pairs (shared, not copied)."""
    from lcm_lora.training.student import add_lora

    rank = next(q for n, q in named if "lora_A" in n).shape[0]
    add_lora(unet, rank, rank, 0.0, None)
    modules = dict(unet.named_modules())
    for name, param in named:
        owner, attr = name.rsplit(".", 1)
        setattr(modules[owner], attr, param)
    return unet


@torch.no_grad()
def measure_on_finetune(bench, unet, **info):
    """Goal (d) at 4 steps (γ 0, phase edges) for a 4-phase student built on the bold fine-tune: FD to the
    fine-tune's 25-step DDIM samples, as ``tcd_recipes.py`` (seed 0 plans, cached references)."""
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.demo.student_sampling import sample_tcd_student
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    cfg, n = bench.cfg, bench.n
    refs = bench.refs["accel"][n]
    _, plan = bench._accel_plans(n)
    cond, _ = bench.teacher.embed(plan.labels)
    res = sample_tcd_student(unet, cond, plan.noise, cfg.accel_steps, gamma=0.0, seed=sampler_seed(cfg.seed),
                             timesteps=phased_timesteps(cfg.accel_steps, 4, "pcm"))
    row = bench._accel_row("student on the fine-tune", "student", "tcd", cfg.accel_steps, res.images, plan.labels,
                           refs["ref_stats"], n)
    ddim8 = next(r for r in refs["rows"] if r.get("steps") == 8 and "floor" not in r["label"])
    print(json.dumps({**info, "goal_d_fd": round(row["fd_vs_reference"], 2), "goal_d_accuracy": row["accuracy"],
                      "finetune_ddim8_fd": round(ddim8["fd_vs_reference"], 2)}), flush=True)

if __name__ == "__main__":
    main()
