"""Run in ComfyUI's python (``--cpu``): which noise the pack's TCD sampler injects after its first step.

Usage: ``tcd_seed_check.py --comfyui DIR --repo DIR``; prints one JSON line (see
``test_comfy_tcd_cpu_seed.py``). The pack is imported the way ComfyUI imports it.

A tiny random SD1.5-like UNet (ComfyUI's own UNetModel and SD15 config) whose guided prediction is
replaced by 0 through a ``sampler_post_cfg_function`` (ComfyUI's own hook, run at every cfg): with
denoised = 0 a TCD step is pure noise, ``x₁ = σ_down·ε̂ + σ_up·z`` with ``ε̂ = x₀/σ₀``, so the
injected noise is ``z = (x₁ − σ_down·ε̂)/σ_up`` and ``std(x₁)`` should be σ_next =
sqrt(σ_down² + σ_up²). σ_down = σ(⌊(1 − γ)·t_next⌋) and σ_up come from ComfyUI's own model sampling
(``timestep`` / ``sigma``). x₀ and x₁ are recorded by the step callback ComfyUI calls.

Paths, each with ComfyUI's initial noise (``comfy.sample.prepare_noise``) and seed:
* ``custom_tcd``: SamplerCustom's path (``comfy.sample.sample_custom``) with LCM Sampler ``tcd`` γ 0.5;
* ``ks_tcd`` / ``ks_auto``: the LCM KSampler node (mode tcd γ 0.5; mode auto on a model carrying a TCD
  recipe at γ 0.5, widget γ 0.3), its step callback (``latent_preview.prepare_callback``) recorded;
* ``old_tcd``: SamplerCustom with ``KSAMPLER(lcm_core.sampling.sample_tcd)`` — the pack's previous TCD
  sampler object (the stream seeded with the plain seed), which the check must fail;
* ``stock_euler_ancestral``: ComfyUI's own ``euler_ancestral`` (x₁ = σ_down·ε̂ + σ_up·z as well, with
  k-diffusion's ancestral σ_down / σ_up), recorded to document the same CPU-mode property there.
"""
from __future__ import annotations

import json
import math
import os
import sys

SEED, GAMMA, STEPS = 7, 0.5, 2
SHAPE = (4, 4, 32, 32)  # 16384 values (std(x₁) to ~0.6 %); one prepare_noise draw, as the noise sampler


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from comfy_side import boot_pack_script, tiny_sd15_model

    pack = boot_pack_script()
    import torch
    import comfy.model_management
    import comfy.sample
    import comfy.samplers
    from comfy.k_diffusion import sampling as kds

    nodes = pack.nodes
    device = comfy.model_management.get_torch_device()

    model, gen = tiny_sd15_model(device)
    model.set_model_sampler_post_cfg_function(lambda args: torch.zeros_like(args["denoised"]))  # denoised = 0
    pos = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    neg = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    empty = {"samples": torch.zeros(SHAPE)}
    ms = model.get_model_object("model_sampling")
    sigmas = nodes.lcm_scheduler.LCMScheduler.execute(STEPS, 50, 1.0).args[0]
    initial = comfy.sample.prepare_noise(empty["samples"], SEED)

    def tcd_sigmas(gamma):
        t_next = ms.timestep(sigmas[1:2]).float()
        sigma_down = float(ms.sigma(torch.floor((1 - gamma) * t_next)))
        return sigma_down, math.sqrt(float(sigmas[1]) ** 2 - sigma_down**2)

    def recorder():
        seen = {}

        def cb(step, x0, x, total_steps):
            seen.setdefault(step, x.detach().float().cpu().clone())
        return seen, cb

    def measure(seen, sigma_down, sigma_up):
        x0, x1 = seen[0], seen[1]
        z = (x1 - sigma_down * x0 / float(sigmas[0])) / sigma_up
        independent = kds.default_noise_sampler(x1, seed=pack.lcm_core.sampling.independent_noise_seed(SEED))(None, None)
        corr = float(torch.corrcoef(torch.stack([z.flatten(), initial.flatten()]))[0, 1])
        return {"device": str(x1.device), "std_x1": float(x1.std()), "std_eps_hat": float((x0 / float(sigmas[0])).std()),
                "sigma_down": sigma_down, "sigma_up": sigma_up, "sigma_next": float(sigmas[1]),
                "z_vs_initial": float((z - initial).abs().max()), "z_vs_independent": float((z - independent).abs().max()),
                "corr_z_initial": corr}

    def custom(sampler):
        seen, cb = recorder()
        latent = comfy.sample.fix_empty_latent_channels(model, empty["samples"])
        comfy.sample.sample_custom(model, comfy.sample.prepare_noise(latent, SEED), 1.0, sampler, sigmas, pos, neg, latent,
                                   callback=cb, disable_pbar=True, seed=SEED)
        return seen

    def ksampler(m, mode):
        seen, cb = recorder()
        lp = nodes.lcm_ksampler.latent_preview
        saved = lp.prepare_callback
        lp.prepare_callback = lambda *_a, **_k: cb  # record the step callback the node hands to ComfyUI
        try:
            nodes.lcm_ksampler.LCMKSampler.execute(m, SEED, STEPS, 1.0, mode, 0.3 if mode == "auto" else GAMMA, 1.0, 1.0,
                                                   pos, neg, empty)
        finally:
            lp.prepare_callback = saved
        return seen

    down_up = tcd_sigmas(GAMMA)
    out = {"gamma": GAMMA, "steps": STEPS, "shape": list(SHAPE)}
    out["custom_tcd"] = measure(custom(nodes.lcm_sampler.LCMSampler.execute("tcd", GAMMA, 1.0).args[0]), *down_up)
    out["ks_tcd"] = measure(ksampler(model, "tcd"), *down_up)
    recipe = pack.lcm_core.sampling_recipe.recipe_for_objective("tcd", gamma=GAMMA)
    out["ks_auto"] = measure(ksampler(nodes.recipe_follow.attach(model, recipe), "auto"), *down_up)
    opts = {"gamma": GAMMA, "eta": 1.0, "schedule": pack.lcm_core.schedule.DiscreteSchedule(convention="comfyui")}
    out["old_tcd"] = measure(custom(comfy.samplers.KSAMPLER(pack.lcm_core.sampling.sample_tcd, extra_options=opts)), *down_up)
    down, up = kds.get_ancestral_step(sigmas[0], sigmas[1], eta=1.0)
    out["stock_euler_ancestral"] = measure(custom(comfy.samplers.ksampler("euler_ancestral")), float(down), float(up))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
