"""Diagnostic: does distribution matching recover the accuracy a 4-step PCM student loses against its teacher?

Every consistency-distilled 4-step student of the digit teacher loses ≈ 1.5 points of class accuracy against its
own teacher (BENCHMARKS.md, "Why goal (a) still fails"). Distribution Matching Distillation (DMD2, Yin et al.
2024, arXiv 2405.14867, Eq. 2 and §4.1) corrects a generator's *distribution* instead of its trajectories:
the gradient of KL(p_fake ‖ p_real) w.r.t. a generated image x̂ is E_t[w_t (x̂0_fake(x_t) − x̂0_real(x_t))] with
x_t = x̂ noised at a random t, ε_real the teacher (here: CFG ``--cfg`` on ``--interval``, the teacher whose own
samples meet goal (a)) and ε_fake a copy of the teacher trained online to denoise the generator's samples
(two-time-scale update: ``--fake-updates`` fake steps per generator step, DMD2 §4.1).

The generator is a trained PCM adapter (``--adapter``) fused into the teacher, plus a fresh rank-8 LoRA (so it
starts as that student). Backward simulation as DMD2 §4.5: a random number of the student's own 4 phase-edge
steps is run without gradient, then one step with gradient gives x̂ (its x0 prediction). DMD2's normalisation
w_t = 1 / mean|x̂ − x̂0_real(x_t)|.

``--gan-weight`` > 0 adds DMD2's GAN term (§4.3, its SD recipe ``--diffusion_gan --cls_on_clean_image``): a
classification head on the fake score network's bottleneck (mid-block output, read by
``training.adversarial.unet_features``) tells the demo's *real* training images from generated ones, both noised
to a shared uniform timestep; the head and the fake UNet learn it with weight ``--gan-d-weight`` beside their
denoising loss (non-saturating: softplus(D(fake)) + softplus(−D(real)); DMD2's ``guidance_cls_loss_weight`` 1e-2),
the generator minimises softplus(−D(x̂_t)) with weight ``--gan-weight`` (DMD2's SD ``gen_cls_loss_weight`` 5e-3)
through the fake UNet. This is the term that lets DMD2's student leave its teacher's distribution for the data's.
The head follows DMD2's ``cls_pred_branch`` scaled to the 4×4 bottleneck: conv 4×4 stride 4 → GroupNorm → SiLU
→ 1×1 conv to one logit. Then the student is sampled and measured as ``tcd_recipes.py`` does (TCD sampler on the
phase edges, γ ``--gammas``; the demo's prompts, noise and metrics at ``--n``).

A hand-written training loop on purpose: it answers one question and is not a trainer objective. Results
(BENCHMARKS.md, "Why goal (a) still fails" and "Goal (a) at the edge of measurement"): neither the loss alone nor
with the GAN term recovers the accuracy at 300–600 generator steps.

    nice -n 5 .venv/bin/python benchmarks/demo_quality/dmd_finetune.py --cache /tmp/q13cache --work /tmp/q13work \
        --adapter /tmp/q13work/tcd-pcm4-600-gi200-700-w1.5/tcd_lora.safetensors --cfg 2.5 --interval 200,700
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts of benchmarks/demo_quality
from phase_regression import load_bench, measure_student, real_training_images  # noqa: E402
from phase_swap import _ddim_jump, bench_arguments  # noqa: E402


def guided_eps(unet, x, t, cond, uncond, g: float, interval):
    """The teacher's ε at integer timesteps ``t`` (one per sample): CFG ``g`` where t ∈ ``interval``, else conditional."""
    out = unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]), return_dict=False)[0]
    eps_u, eps_c = out.chunk(2)
    inside = ((t >= interval[0]) & (t <= interval[1])).float().view(-1, 1, 1, 1)
    return eps_c + inside * (g - 1.0) * (eps_c - eps_u)


def bottleneck_head(channels: int, groups: int) -> torch.nn.Module:
    """DMD2's ``cls_pred_branch`` for a 4×4 bottleneck: conv 4×4 stride 4 → GroupNorm → SiLU → 1×1 conv to a logit."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 4, 4), torch.nn.GroupNorm(groups, channels),
                               torch.nn.SiLU(), torch.nn.Conv2d(channels, 1, 1))


def realism(fake, head, x_t, t, cond):
    """DMD2's ``pred_realism``: the head's logit on the fake UNet's mid-block output for noised images ``x_t``."""
    from lcm_lora.training.adversarial import unet_features

    mid = unet_features(fake, x_t, t, {"encoder_hidden_states": cond}, with_up=False)[-1]
    return head(mid).flatten(1).mean(1)


def main():
    p = bench_arguments(__doc__.splitlines()[0])
    p.add_argument("--adapter", type=Path, required=True, help="a 4-phase PCM adapter (the generator's start)")
    p.add_argument("--steps", type=int, default=300, help="generator steps")
    p.add_argument("--fake-updates", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4, help="generator LoRA learning rate")
    p.add_argument("--fake-lr", type=float, default=1e-4)
    p.add_argument("--cfg", type=float, default=2.5)
    p.add_argument("--interval", default="200,700")
    p.add_argument("--gammas", default="0,0.3")
    p.add_argument("--gan-weight", type=float, default=0.0, help="DMD2's generator GAN weight (0 = no GAN term)")
    p.add_argument("--gan-d-weight", type=float, default=1e-2, help="DMD2's classifier weight in the fake update")
    p.add_argument("--save", type=Path, default=None, help="write the generator's LoRA here (safetensors)")
    args = p.parse_args()
    from lcm_lora.demo.fused_unet import unet_with
    from lcm_lora.lcm_core.lora import read_adapter
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
    from lcm_lora.training.student import add_lora

    recipes, bench, alphas = load_bench(args)
    alphas = alphas.float()
    teacher = bench.teacher
    interval = tuple(int(v) for v in args.interval.split(","))
    edges = phased_timesteps(4, 4, "pcm") + [0]
    cond_all, uncond_all = teacher.embed(torch.arange(10))
    real = teacher.unet.eval().requires_grad_(False)
    gen = unet_with(real, [(read_adapter(args.adapter), 1.0)])
    torch.manual_seed(0)  # peft's LoRA init draws from the global generator
    gen_params = [p for _, p in add_lora(gen, 8, 8, 0.0, None)]
    fake = copy.deepcopy(real).train().requires_grad_(True)
    gan = args.gan_weight > 0  # without it, the run is the one before the GAN term existed (same draws)
    head = bottleneck_head(fake.config.block_out_channels[-1], fake.config.norm_num_groups) if gan else None
    opt_g = torch.optim.AdamW(gen_params, lr=args.lr, weight_decay=0.0)
    opt_f = torch.optim.AdamW(list(fake.parameters()) + (list(head.parameters()) if gan else []),
                              lr=args.fake_lr, weight_decay=0.0)
    real_x, real_y = real_training_images(bench) if gan else (None, None)
    rng = torch.Generator().manual_seed(0)
    batch, start, log = 16, time.time(), []

    def generate(labels):
        """Backward simulation: k ∈ {0..3} student steps without gradient, then one with gradient → x̂0."""
        cond = cond_all[labels]
        x = torch.randn((batch, 1, 16, 16), generator=rng)
        k = int(torch.randint(4, (1,), generator=rng))
        with torch.no_grad():
            for i in range(k):
                eps = gen(x, torch.full((batch,), edges[i]), cond, return_dict=False)[0]
                x = _ddim_jump(x, eps, alphas[edges[i]].double(), alphas[edges[i + 1]].double())
        a = alphas[edges[k]]
        eps = gen(x, torch.full((batch,), edges[k]), cond, return_dict=False)[0]
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def noised(x0):
        t = torch.randint(20, 981, (batch,), generator=rng)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=rng)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise, a

    for step in range(args.steps):
        for _ in range(args.fake_updates):  # the fake score denoises the generator's current samples
            labels = torch.randint(10, (batch,), generator=rng)
            with torch.no_grad():
                x0 = generate(labels)
            x_t, t, noise, _ = noised(x0)
            loss_f = ((fake(x_t, t, cond_all[labels], return_dict=False)[0] - noise) ** 2).mean()
            if gan:  # DMD2's guidance_cls_loss: the head tells noised real training images from generated ones
                pick = torch.randint(len(real_x), (batch,), generator=rng)
                r_t, t_r, _, _ = noised(real_x[pick])
                loss_d = (torch.nn.functional.softplus(realism(fake, head, x_t, t, cond_all[labels])).mean()
                          + torch.nn.functional.softplus(-realism(fake, head, r_t, t_r, cond_all[real_y[pick]])).mean())
                loss_f = loss_f + args.gan_d_weight * loss_d
            opt_f.zero_grad()
            loss_f.backward()
            opt_f.step()
        labels = torch.randint(10, (batch,), generator=rng)
        cond, uncond = cond_all[labels], uncond_all[labels]
        x0 = generate(labels)
        with torch.no_grad():
            x_t, t, _, a = noised(x0)
            eps_real = guided_eps(real, x_t, t, cond, uncond, args.cfg, interval)
            eps_fake = fake(x_t, t, cond, return_dict=False)[0]
            x0_real = (x_t - (1 - a).sqrt() * eps_real) / a.sqrt()
            x0_fake = (x_t - (1 - a).sqrt() * eps_fake) / a.sqrt()
            # DMD2's step (its distribution-matching loss): x̂ moves along x0_real − x0_fake, normalised per sample
            grad = (x0_fake - x0_real) / (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-4)
            grad = torch.nan_to_num(grad)
        loss_g = 0.5 * ((x0 - (x0 - grad).detach()) ** 2).mean()
        if gan:  # DMD2's gen_cls_loss through the fake UNet (its parameters only receive a gradient they never use)
            x_t_g, t_g, _, _ = noised(x0)
            loss_g = loss_g + args.gan_weight * torch.nn.functional.softplus(-realism(fake, head, x_t_g, t_g, cond)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        torch.nn.utils.clip_grad_norm_(gen_params, 1.0)
        opt_g.step()
        if step % 50 == 0:
            log.append({"step": step, "loss_fake": round(loss_f.item(), 5), "loss_gen": round(loss_g.item(), 5),
                        **({"loss_d": round(loss_d.item(), 4)} if gan else {})})
            print(json.dumps(log[-1]), flush=True)
    train_seconds = time.time() - start
    gen.eval()
    if args.save is not None:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(gen).items()}, str(args.save))
    measure_student(recipes, bench, gen, [float(v) for v in args.gammas.split(",")], steps=args.steps, lr=args.lr,
                    cfg=args.cfg, interval=list(interval), fake_updates=args.fake_updates, gan_weight=args.gan_weight,
                    gan_d_weight=args.gan_d_weight, train_seconds=round(train_seconds))

if __name__ == "__main__":
    main()
