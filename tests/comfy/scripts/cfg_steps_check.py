"""Run in ComfyUI's python: the ``cfg_steps`` option (CFG on the first k steps only) on a tiny random
SD1.5-like UNet, against references made of ComfyUI's own pieces.

Usage: ``cfg_steps_check.py --comfyui DIR --repo DIR``; prints one JSON line (see
``test_comfy_negative_prompt.py``). The pack is imported the way ComfyUI imports it.

* Reference for k steps of CFG: two stock ``comfy.samplers.sample`` calls (ComfyUI's own CFGGuider),
  cfg on ``sigmas[:k+1]`` then cfg 1.0 on ``sigmas[k:]`` starting from the first call's output
  without new noise. Both calls share ONE noise sampler (ComfyUI's ``default_noise_sampler`` seeded
  with the seed — for TCD with ``independent_noise_seed(seed)``, the stream the pack's TCD sampler uses
  on the CPU — handed to the sampler function as ``noise_sampler``), so the re-noising between
  steps draws the same stream as the single run: without that, each sampler call seeds its own
  generator from the seed and the second call would replay the first call's noise.
* UNet evaluations: a ``model_function_wrapper`` records every UNet call's ``cond_or_uncond``
  (0 = positive, 1 = negative; ComfyUI batches them into one call).
"""
from __future__ import annotations

import json
import os
import sys

STEPS = 3
CFG = 3.0
SEED = 11


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

    # -- a tiny SD1.5-like model (ComfyUI's own UNetModel and SD15 model config, random weights) --
    device = torch.device("cpu")
    eps_model, gen = tiny_sd15_model(device)
    lcm_model = nodes.comfy_bridge.patch_lcm_sampling(eps_model)
    pos = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    neg = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    empty = {"samples": torch.zeros(1, 4, 4, 4)}

    calls: list = []

    def counting(model):
        m = model.clone()

        def wrapper(apply_model, args):
            calls.append([int(c) for c in args["cond_or_uncond"]])
            return apply_model(args["input"], args["timestep"], **args["c"])

        m.set_model_unet_function_wrapper(wrapper)
        return m

    ks = nodes.lcm_ksampler.LCMKSampler
    sigmas = nodes.lcm_scheduler.LCMScheduler.execute(STEPS, 50, 1.0).args[0]
    out: dict = {"steps": STEPS, "cfg": CFG}

    def node_run(model, mode, **kw):
        calls.clear()
        res = ks.execute(counting(model), SEED, STEPS, CFG, mode, 0.3, 1.0, 1.0, pos, neg, empty, **kw).args[0]["samples"]
        return res, list(calls)

    def reference(model, mode, k, share_noise=True):
        """Two stock comfy.samplers.sample calls sharing one seeded noise sampler (see module docstring);
        ``share_noise=False``: each call seeds its own (what chaining two sampler nodes does)."""
        latent = comfy.sample.fix_empty_latent_channels(model, empty["samples"])
        noise = comfy.sample.prepare_noise(latent, SEED)
        # TCD on the CPU re-noises from independent_noise_seed(seed) (lcm_core.sampling.comfyui_tcd_noise_sampler)
        stream_seed = SEED if mode == "lcm" else pack.lcm_core.sampling.independent_noise_seed(SEED)
        shared = {"noise_sampler": kds.default_noise_sampler(noise, seed=stream_seed)} if share_noise else {}
        if mode == "lcm":
            sampler = comfy.samplers.KSAMPLER(kds.sample_lcm, extra_options=shared)
        else:
            opts = {"gamma": 0.3, "eta": 1.0, "schedule": pack.lcm_core.schedule.DiscreteSchedule(convention="comfyui"),
                    **shared}
            sampler = comfy.samplers.KSAMPLER(pack.lcm_core.sampling.sample_tcd_comfyui, extra_options=opts)
        x, start_noise = latent, noise
        if k > 0:
            x = comfy.samplers.sample(model, start_noise, pos, neg, CFG, device, sampler, sigmas[:k + 1], latent_image=x,
                                      seed=SEED)
            start_noise = torch.zeros_like(noise)
        if k < STEPS:
            x = comfy.samplers.sample(model, start_noise, pos, neg, 1.0, device, sampler, sigmas[k:], latent_image=x,
                                      seed=SEED)
        return x

    def rel(a, b):
        a, b = a.double(), b.double()
        return float((a - b).norm() / b.norm())

    for mode, model in (("lcm", lcm_model), ("tcd", eps_model)):
        res = {}
        default, default_calls = node_run(model, mode)  # an API prompt without cfg_steps
        res["default_calls"] = default_calls
        everywhere = comfy.sample.sample_custom(model, comfy.sample.prepare_noise(empty["samples"], SEED), CFG,
                                                nodes.lcm_sampler.build_sampler(mode, 0.3, 1.0), sigmas, pos, neg,
                                                empty["samples"], seed=SEED)
        res["default_equals_sampler_custom"] = bool(torch.equal(default, everywhere))
        runs = {}
        for k in range(STEPS + 1):
            got, got_calls = runs[k] = node_run(model, mode, cfg_steps=k)
            ref = reference(model, mode, k)
            if k == 0:
                cfg1 = ref
            res[f"k{k}"] = {"calls": got_calls, "rel_to_reference": rel(got, ref), "rel_to_every_step": rel(got, everywhere),
                            "rel_to_cfg1": rel(got, cfg1), "equal_to_default": bool(torch.equal(got, default))}
        res["rel_naive_chain_k1"] = rel(runs[1][0], reference(model, mode, 1, share_noise=False))
        # the saving is ComfyUI's cfg1 optimization: with it disabled, every step evaluates the negative
        no_opt = model.clone()
        no_opt.model_options["disable_cfg1_optimization"] = True
        _, res["no_cfg1_optimization_calls"] = node_run(no_opt, mode, cfg_steps=2)
        # LCM CFG Guider (SamplerCustomAdvanced's way) = LCM KSampler cfg_steps 2
        guider = nodes.lcm_cfg_guider.LCMCFGGuider.execute(model, pos, neg, CFG, 2).args[0]
        latent = comfy.sample.fix_empty_latent_channels(model, empty["samples"])
        adv = guider.sample(comfy.sample.prepare_noise(latent, SEED), latent, nodes.lcm_sampler.build_sampler(mode, 0.3, 1.0),
                            sigmas, seed=SEED)
        res["guider_equals_ksampler"] = bool(torch.equal(adv, runs[2][0]))
        out[mode] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
