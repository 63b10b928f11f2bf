"""Run in ComfyUI's python: the pack's LCM model sampling (``comfy_bridge.patch_lcm_sampling``) on ε / v-prediction
models, with and without zero-terminal SNR (ComfyUI's own ``ModelSamplingDiscrete`` node sets them up).

Usage: ``lcm_model_sampling_check.py --comfyui DIR --repo DIR``; prints one JSON line
(``test_comfy_model_sampling.py``). For each case and timestep 999 / 759 / 499 / 259 of the LCM grid, one random
model input x (σ-space, ComfyUI's convention) and output:
* ``stock``: max |ours − ComfyUI's ``ModelSamplingDiscrete(sampling="lcm", zsnr)``| denoised (ε models: the loader
  must stay bit-identical to ComfyUI's LoraLoader + ModelSamplingDiscrete chain);
* ``closed_form``: max |ours − diffusers' ``LCMScheduler.step`` formula| — x̂0 = √ᾱ·sample − √(1−ᾱ)·v
  (v-prediction) or (sample − √(1−ᾱ)·ε)/√ᾱ (ε), sample = x/√(1+σ²), ᾱ = 1/(1+σ²), then c_out·x̂0 + c_skip·x
  (c at timestep × 10, σ_data 0.5; the c_skip term in ComfyUI's σ-space, as its ``LCM`` class);
* ``sigma_max``: ours and the model's own largest σ (zsnr: ≈ 4500 instead of 14.6).
``inpaint_kept``: the LCM KSampler (lcm / tcd, denoise 1 and 0.5) with a noise_mask that keeps the right half: the
largest change there (TCD's diffusers-style last step used to add σ(0)·ε̂ ≈ 0.4 latent units).
"""
from __future__ import annotations

import json
import os
import sys


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from comfy_side import boot_pack_script, tiny_sd15_model

    pack = boot_pack_script()
    import torch
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model, _ = tiny_sd15_model(torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    out = {}
    for prediction in ("eps", "v_prediction"):
        for zsnr in (False, True):
            own = ModelSamplingDiscrete().patch(model, prediction, zsnr)[0]
            ours = pack.nodes.comfy_bridge.patch_lcm_sampling(own).get_model_object("model_sampling")
            stock = ModelSamplingDiscrete().patch(model, "lcm", zsnr)[0].get_model_object("model_sampling")
            row = {"stock": 0.0, "closed_form": 0.0, "sigma_max": [float(ours.sigma_max),
                                                                   float(own.get_model_object("model_sampling").sigma_max)]}
            for t in (999, 759, 499, 259):
                sigma = ours.sigma(torch.tensor([float(t)]))
                x = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64) * float(sigma)
                output = torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64)
                got = ours.calculate_denoised(sigma, output, x)
                abar = 1 / (1 + sigma.double() ** 2)
                sample = x * abar.sqrt()
                x0 = (abar.sqrt() * sample - (1 - abar).sqrt() * output if prediction == "v_prediction"
                      else (sample - (1 - abar).sqrt() * output) / abar.sqrt())
                scaled = float(ours.timestep(sigma)) * 10.0
                c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25) ** 0.5
                row["closed_form"] = max(row["closed_form"], float((got - (c_out * x0 + c_skip * x)).abs().max()))
                row["stock"] = max(row["stock"], float((got - stock.calculate_denoised(sigma, output, x)).abs().max()))
            out[f"{prediction}{'_zsnr' if zsnr else ''}"] = row
    # inpainting through the LCM KSampler (a noise_mask repaints the left half): max |output − input| where kept
    pos = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    neg = [[3 * torch.randn(1, 77, 32, generator=gen), {}]]
    latent = torch.randn(1, 4, 8, 8, generator=gen)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0
    out["inpaint_kept"] = {}
    for mode in ("lcm", "tcd"):
        for denoise in (1.0, 0.5):
            result = pack.nodes.lcm_ksampler.LCMKSampler.execute(
                model, 5, 4, 1.0, mode, 0.3, 1.0, denoise, pos, neg, {"samples": latent, "noise_mask": mask}).args[0]
            out["inpaint_kept"][f"{mode}_{denoise}"] = float((result["samples"][..., 4:] - latent[..., 4:]).abs().max())
    # zero terminal SNR: the pack's table vs ComfyUI's; the timesteps a zsnr model reads from the LCM Scheduler's
    # sigmas with the model connected (and without: SD's table); the table the TCD sampler uses inside ComfyUI's run
    zsnr_model = ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]
    zms = zsnr_model.get_model_object("model_sampling")
    table = pack.nodes.comfy_bridge.model_schedule(zsnr_model)
    out["zsnr_table_equal"] = bool(torch.equal(table.sigmas, zms.sigmas) and torch.equal(table.log_sigmas, zms.log_sigmas))
    scheduler = pack.nodes.lcm_scheduler.LCMScheduler
    out["zsnr_timesteps"] = {
        name: [int(t) for t in zms.timestep(scheduler.execute(4, 50, 1.0, schedule, 4, "", m).args[0][:-1])]
        for name, schedule, m in (("lcm_with_model", "lcm", zsnr_model), ("lcm_without_model", "lcm", None),
                                  ("tscd_with_model", "tscd", zsnr_model))}
    sampling = pack.nodes.lcm_sampler
    original, seen = sampling.sample_tcd_comfyui, []

    def recording(*args, schedule=None, **kwargs):
        seen.append(bool(schedule.zero_terminal_snr))
        return original(*args, schedule=schedule, **kwargs)

    sampling.sample_tcd_comfyui = recording
    try:
        for m in (zsnr_model, model):
            pack.nodes.lcm_ksampler.LCMKSampler.execute(m, 5, 2, 1.0, "tcd", 0.3, 1.0, 1.0, pos, neg, {"samples": latent})
    finally:
        sampling.sample_tcd_comfyui = original
    out["tcd_sampler_zsnr_table"] = seen
    print(json.dumps(out))


if __name__ == "__main__":
    main()
