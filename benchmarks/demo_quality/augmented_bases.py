"""Diagnostic: distil over several base checkpoints — does an adapter then transfer better to an unseen fine-tune?

Goal (d) ("universal acceleration") fuses an adapter into a fine-tune it never saw. Its gap follows the
interaction of the adapter's weight change with the fine-tune's, and it varies a lot with the distillation's
own seed. Here the trainer (``training.train``, the demo's PCM normal-CFG recipe on the preset's overrides) runs
with its frozen base weights swapped, for a share ``--augment-prob`` of the optimizer steps, for those of one of
``--nulls`` *style-neutral* fine-tunes: the teacher fully fine-tuned on its own training data (``apply_style``
``plain``; the preset's fine-tune settings, seeds 11, 12, …). They are weight changes of a fine-tune's size and
kind (the same AdamW steps; ‖Δ‖/‖W‖ ≈ 0.75 of the bold fine-tune's, nearly orthogonal to it) without a new look.
Teacher, student and EMA target all use the swapped base on that step; the LoRA is shared. The bold fine-tune
of goal (d) is none of them.

The swap is a wrapper around ``TrainingSession.step`` in this script, not a trainer option: it answers one
question. For each ``--train-seeds`` value both the plain recipe and the augmented one are trained, and each
printed: goal (d) (FD to the fine-tune's 25-step DDIM at ``--n`` samples, seed-0 plan, 4 steps on the phase
edges, γ 0, real CFG 2 — as the demo samples its PCM adapter) and the adapter on the base teacher (FD to the
reference split, class accuracy).

    nice -n 5 .venv/bin/python benchmarks/demo_quality/augmented_bases.py --cache /tmp/fastcache_avx2 \\
        --work /tmp/q13n --train-seeds 0,1,2 --nulls 3

Also here, to split goal (d)'s gap into the student's fidelity and the transfer (each a flag, see ``--help``):
``--on-base`` measures the adapter on the base teacher against the teacher's own DDIM 25 (no transfer);
``--oracle`` distils on the bold fine-tune itself, with its own bold images (an upper bound: no transfer to do);
``--override KEY=VALUE --tag NAME`` changes the recipe (e.g. ``lora.targets``, or the guided PCM with
``lcd.solver_guidance=true --cfg 1``); ``--student-cfg`` distils a real-CFG student (:func:`student_cfg_predictions`);
``--phase-starts`` moves PCM's phase edges for training and sampling alike (the trainer's ``lcd.phase_starts``).
Every adapter is sampled on the phase edges it records (``lcm_lora.objective`` / ``phases`` / ``phase_starts``,
``lcm_core.sampling_recipe.recipe_timesteps``): the plain recipe is the demo's, whose edges moved with
``DemoConfig.pcm_overrides`` (2026-12-07); ``--phase-starts 0,12,25,37 --tag even`` is PCM's even split, which
the adapters cached as ``plain`` before then were trained on. An adapter that records no moved
edges (cached by the flag's first version) is sampled on ``--phase-starts``, or on the even split.
"""
from __future__ import annotations

import contextlib
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality
from adapter_edges import adapter_edges  # noqa: E402
from phase_regression import augment_teacher  # noqa: E402
from phase_swap import bench_arguments  # noqa: E402


@contextlib.contextmanager
def augmented_bases(states: list[dict], prob: float, seed: int):
    """While active, each ``TrainingSession.step`` runs, with probability ``prob``, on the base weights of one of
    ``states`` (plain UNet state dicts), drawn uniformly; the teacher's weights are put back after the step."""
    from lcm_lora.training import trainer

    original = trainer.TrainingSession.step
    rng = random.Random(seed)
    teachers = {}  # id(unet) → (its frozen (name, parameter) pairs, their teacher values): frozen, so kept once

    def step(self):
        if not states or rng.random() >= prob:
            return original(self)
        state = states[rng.randrange(len(states))]
        if id(self.unet) not in teachers:
            pairs = [(n, p) for n, p in self.unet.named_parameters() if "lora_" not in n]
            teachers[id(self.unet)] = (pairs, [p.detach().clone() for _, p in pairs])
        frozen, saved = teachers[id(self.unet)]
        with torch.no_grad():
            for name, p in frozen:
                p.copy_(state[name.replace(".base_layer", "")])
        try:
            return original(self)
        finally:
            with torch.no_grad():
                for (_, p), v in zip(frozen, saved):
                    p.copy_(v)

    trainer.TrainingSession.step = step
    try:
        yield
    finally:
        trainer.TrainingSession.step = original


@contextlib.contextmanager
def student_cfg_predictions():
    """While active, ``LcdLoss.predictions`` distils a *real-CFG student*: the teacher's solver step is guided as
    usual (ω per sample), and the student's and the target's predictions are their own CFG combinations at
    g = 1 + ω, ``f_∅ + g·(f_c − f_∅)`` (one pass of 2B each, conditional and unconditional). An adapter sampled
    with real CFG g then reproduces the guided jump itself, where the normal-CFG recipe (no guidance in the solver)
    combines two unguided jumps. x̂0 is affine in the raw output (ε or v) and the consistency map affine in x̂0,
    with x-coefficients free of them, so combining the raw outputs combines the maps: the student and the target
    are wrapped, and the trainer's own ``predictions`` does the rest."""
    from lcm_lora.training import lcd_step
    from lcm_lora.training.precision import at_least_float32

    original = lcd_step.LcdLoss.predictions

    def with_cfg(model, uncond, w):
        def run(x, t, cond):
            raw = at_least_float32(model(torch.cat([x, x]), torch.cat([t, t]), lcd_step.concat_cond(cond, uncond)))
            r_c, r_u = raw.chunk(2)
            g = (1.0 + w.to(raw.device, raw.dtype)).reshape(len(x), *((1,) * (x.ndim - 1)))
            return r_u + g * (r_c - r_u)
        return run

    def predictions(self, student, teacher, target, latents, cond, uncond, rnd, autocast=contextlib.nullcontext):
        if not self.solver_guidance:
            raise SystemExit("--student-cfg distils the guided solve: add --override lcd.solver_guidance=true")
        return original(self, with_cfg(student, uncond, rnd.w), teacher, with_cfg(target, uncond, rnd.w), latents,
                        cond, uncond, rnd, autocast)

    lcd_step.LcdLoss.predictions = predictions
    try:
        yield
    finally:
        lcd_step.LcdLoss.predictions = original


def styled_data_folder(folder: Path, work: Path, style: str) -> Path:
    """``folder`` (PNG + ``metadata.jsonl``) with ``apply_style`` applied to every image — the fine-tune's own
    training images (the same split the preset fine-tunes on), cached in ``work``."""
    import shutil

    import numpy as np
    from PIL import Image

    from lcm_lora.demo.dataset import apply_style, to_uint8

    out = work / f"{folder.name}-{style}"
    if (out / "metadata.jsonl").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for png in sorted(folder.glob("*.png")):
        x = torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32)) / 127.5 - 1.0
        Image.fromarray(to_uint8(apply_style(x[None, None], style))[0], mode="L").save(out / png.name)
    shutil.copy(folder / "metadata.jsonl", out / "metadata.jsonl")
    return out


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--preset", default="fast")
    p.add_argument("--train-seeds", default="0,1,2")
    p.add_argument("--nulls", type=int, default=3)
    p.add_argument("--augment-prob", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--variants", default="plain,augmented")
    p.add_argument("--soup", action="store_true", help="also measure the average of the seeds' adapters")
    p.add_argument("--soup-only", action="store_true", help="with --soup: measure only the average")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a further trainer override for every variant (repeatable), e.g. lora.targets=to_q,to_k")
    p.add_argument("--oracle", action="store_true",
                   help="upper bound, not goal (d): distil on the bold fine-tune itself (its weights as the base of "
                        "every step, its own bold training images as the data); the adapter has seen the fine-tune")
    p.add_argument("--on-base", action="store_true",
                   help="measure on the base teacher instead of the fine-tune: FD of the adapter on the teacher to "
                        "the teacher's own DDIM 25 (the student's fidelity, no transfer); bar: the teacher's DDIM 8")
    p.add_argument("--student-cfg", action="store_true",
                   help="distil a real-CFG student (student_cfg_predictions): the guided solver, the student's own "
                        "CFG at 1 + ω in the loss; needs lcd.solver_guidance=true (an --override) and --cfg 1 + ω")
    p.add_argument("--cfg", type=float, default=None, help="real CFG scale of the 4-step sampling (default: the "
                                                                      "preset's, the adapter's recorded cfg)")
    p.add_argument("--phase-starts", default="", metavar="I,I,...",
                   help="distil and sample the PCM adapter with its phases starting at these solver indices "
                        "(lcd.phase_starts), e.g. 0,19,34,44; needs a --tag")
    p.add_argument("--tag", default="", help="names the --override recipe in the adapters' folders and the output")
    args = p.parse_args()
    if args.on_base and args.oracle:
        raise SystemExit("--on-base and --oracle: the oracle is distilled on the fine-tune; measure it there")
    if (args.override or args.student_cfg or args.phase_starts) and not args.tag:
        raise SystemExit("--override, --student-cfg and --phase-starts need a --tag (the adapters are cached by name)")
    from lcm_lora.lcm_core.errors import ConfigError
    from lcm_lora.lcm_core.phased_timesteps import check_phase_starts

    try:  # before any work, as the other argument checks
        starts = check_phase_starts(args.phase_starts.split(","), 4, name="--phase-starts") if args.phase_starts else None
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    torch.set_num_threads(1)
    import tcd_recipes
    from lcm_lora.demo.fused_unet import unet_with
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.demo.student_sampling import sample_tcd_student
    from lcm_lora.lcm_core.lora import read_adapter

    bench = tcd_recipes.Bench(args.cache, args.work, args.n, 0, args.preset, base_as_finetune=args.on_base)
    cfg = bench.cfg
    if args.oracle:
        states, args.augment_prob, args.variants = [bench.ft.state_dict()], 1.0, "oracle"
        bench.data_folder = styled_data_folder(bench.data_folder, bench.work, cfg.finetune.style)
    else:  # the style-neutral fine-tunes, only where a variant swaps them in
        nulls = args.nulls if set(args.variants.split(",")) - {"plain"} else 0
        states = [augment_teacher(bench, "plain", 11 + i).state_dict() for i in range(nulls)]
    refs = bench.refs["accel"][args.n]
    ddim8 = next(r for r in refs["rows"] if r.get("steps") == 8 and "floor" not in r["label"])
    _, aplan = bench._accel_plans(args.n)
    acond, auncond = bench.teacher.embed(aplan.labels)
    def edges(adapter, k: int) -> list[int]:
        return adapter_edges(adapter.metadata, k, starts)

    overrides = [*args.override, *([f"lcd.phase_starts={starts}"] if starts else [])]
    scale = cfg.guidance_scale if args.cfg is None else args.cfg

    def measure(parts: list, **info) -> None:
        """Print goal (d) and the base-teacher row for the adapters ``parts`` ((adapter, strength) pairs) fused."""
        timesteps = edges(parts[0][0], cfg.accel_steps)
        on_ft = sample_tcd_student(unet_with(bench.ft, parts), acond, aplan.noise, cfg.accel_steps, gamma=0.0,
                                   seed=sampler_seed(cfg.seed), timesteps=timesteps,
                                   guidance_scale=scale, uncond=auncond)
        row = bench._accel_row("adapter on the fine-tune", "pcm", "pcm", cfg.accel_steps, on_ft.images,
                               aplan.labels, refs["ref_stats"], args.n)
        student = unet_with(bench.teacher.unet, parts)

        def base_fn(sl, k):
            return sample_tcd_student(student, bench.cond[sl], bench.plan.noise[sl], k, gamma=0.0,
                                      seed=sampler_seed(cfg.seed + sl.start),
                                      timesteps=edges(parts[0][0], k),
                                      guidance_scale=scale, uncond=bench.uncond[sl])

        base = tcd_recipes.sample_rows("student", "pcm", [cfg.accel_steps], base_fn, bench.plan, bench.inst,
                                       cfg.batch_size, keep_images=False)[0][0]
        print(json.dumps({**info, "measured_on": "base teacher" if args.on_base else "fine-tune", "cfg": scale,
                          "goal_d_fd": round(row["fd_vs_reference"], 2), "goal_d_accuracy": row["accuracy"],
                          "finetune_ddim8_fd": round(ddim8["fd_vs_reference"], 2), "base_fd": round(base["fd"], 2),
                          "base_accuracy": base["accuracy"], "n": args.n, "timesteps": timesteps}), flush=True)

    seeds = [int(s) for s in args.train_seeds.split(",")]
    for variant in args.variants.split(","):
        tag = variant if variant in ("plain", "oracle") else f"nulls{args.nulls}-p{args.augment_prob:g}"
        tag += f"-{args.tag}" if args.tag else ""
        adapters = []
        for seed in seeds:
            with augmented_bases(states if variant != "plain" else [], args.augment_prob, seed), \
                    (student_cfg_predictions() if args.student_cfg else contextlib.nullcontext()):
                path, seconds = bench.train(f"ncfg-{args.steps}-{tag}-s{seed}",
                                            [f"train.max_steps={args.steps}", *cfg.pcm_overrides, f"train.seed={seed}",
                                             *overrides],
                                            kind="pcm")
            adapters.append(read_adapter(path))
            if not args.soup_only:
                measure([(adapters[-1], 1.0)], variant=tag, train_seed=seed, train_seconds=round(seconds or 0))
        if args.soup and len(adapters) > 1:  # the seeds' weight changes averaged (a "model soup" of the adapters)
            measure([(a, 1.0 / len(adapters)) for a in adapters], variant=tag, soup_of_train_seeds=seeds)

if __name__ == "__main__":
    main()
