"""sample_lcm / sample_tcd vs diffusers LCMScheduler / TCDScheduler: per step and end to end (fp32, <= 1e-5).

Both sides get the same ε function (a deterministic function of the VP sample and t), the
same model input at the first step and the same noise stream (diffusers' generator vs our
default noise sampler seeded identically). Our sampler runs in sigma space; each state is
compared in diffusers' VP space (``x / sqrt(1 + σ²)``).
"""
import inspect

import pytest
import torch

from lcm_lora.lcm_core.denoisers import EpsDenoiser, unet_denoiser
from lcm_lora.lcm_core.errors import ConfigError
from lcm_lora.lcm_core.sampling import default_noise_sampler, sample_lcm, sample_tcd
from lcm_lora.lcm_core.schedule import DiscreteSchedule
from lcm_lora.lcm_core.timesteps import lcm_timesteps, tcd_timesteps, timesteps_to_sigmas

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
# LCM-LoRA usage: LCMScheduler.from_config(<SD1.5 PNDM scheduler config>)
SD_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                 steps_offset=1, clip_sample=False)
AC = diffusers.LCMScheduler(**SD_CONFIG).alphas_cumprod
SCHED = DiscreteSchedule()


def fake_eps(sample, t, **_):
    """Near-ideal ε for a fixed target image plus a smooth, t-dependent error."""
    t = torch.as_tensor(t).long().reshape(-1)
    a = AC[t].reshape(-1, 1, 1, 1)
    target = torch.linspace(-1.5, 1.5, sample[0].numel()).reshape(sample.shape[1:])
    return (sample - a.sqrt() * target) / (1 - a).sqrt() * 0.9 + 0.2 * torch.sin(3 * sample + t.reshape(-1, 1, 1, 1) / 300)


def _vp(x, sigma):
    return x / (sigma**2 + 1) ** 0.5


def _initial(shape, sigma0, strength, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise, init = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return noise * (1 + sigma0**2) ** 0.5 if strength == 1.0 else init + sigma0 * noise


def _run_diffusers(cls, sample, step_kwargs, seed, **set_kwargs):
    sched = cls(**SD_CONFIG)
    sched.set_timesteps(**set_kwargs)
    gen = torch.Generator().manual_seed(seed)
    prev, denoised = [], []
    for t in sched.timesteps:
        out = sched.step(fake_eps(sample, t), t, sample, generator=gen, **step_kwargs)
        sample = out.prev_sample
        prev.append(sample)
        denoised.append(out[1])
    return sched.timesteps.tolist(), prev, denoised


def _run_ours(sampler, denoiser, x, sigmas, seed, **options):
    rec = []
    out = sampler(denoiser, x, sigmas, extra_args={"seed": seed}, callback=rec.append, disable=True, **options)
    return out, rec


def _check(ts, prev, out, rec, sigmas, ref_denoised=None):
    assert len(rec) == len(ts)
    for i in range(len(ts)):
        if ref_denoised is not None:
            assert (rec[i]["denoised"] - ref_denoised[i]).abs().max() <= TOL, f"denoised, step {i}"
        if i + 1 < len(ts):
            assert (_vp(rec[i + 1]["x"], sigmas[i + 1]) - prev[i]).abs().max() <= TOL, f"state after step {i}"
    assert (out - prev[-1]).abs().max() <= TOL, "final latent"


def _lcm_case(shape, strength=1.0, seed=3, **set_kwargs):
    ts = lcm_timesteps(strength=strength, **set_kwargs)
    sigmas = timesteps_to_sigmas(ts, SCHED)
    x = _initial(shape, sigmas[0], strength)
    ref_ts, prev, den = _run_diffusers(diffusers.LCMScheduler, _vp(x, sigmas[0]), {}, seed, strength=strength, **set_kwargs)
    assert ref_ts == ts
    out, rec = _run_ours(sample_lcm, EpsDenoiser(fake_eps, SCHED, boundary="diffusers"), x, sigmas, seed)
    _check(ts, prev, out, rec, sigmas, den)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("batch", [1, 2])
def test_lcm_matches_diffusers_txt2img(steps, batch):
    _lcm_case((batch, 4, 8, 8), num_inference_steps=steps)


@pytest.mark.parametrize("steps,strength", [(2, 0.8), (4, 0.5), (3, 0.3), (1, 0.6)])
def test_lcm_matches_diffusers_img2img(steps, strength):
    _lcm_case((2, 4, 8, 8), strength=strength, num_inference_steps=steps)


@pytest.mark.parametrize("timesteps", [[999, 759, 499, 259], [999, 500, 250, 30], [899, 19]])
def test_lcm_matches_diffusers_custom_timesteps(timesteps):
    _lcm_case((2, 4, 8, 8), timesteps=timesteps)


def test_lcm_matches_diffusers_other_original_steps():
    _lcm_case((1, 4, 8, 8), num_inference_steps=4, original_inference_steps=25)


def test_lcm_pipeline_style_initial_noise():
    """diffusers starts from latents = noise; ComfyUI from noise * sqrt(1 + σ_max²) (noise_scaling, max_denoise)."""
    ts = lcm_timesteps(4)
    sigmas = timesteps_to_sigmas(ts, SCHED)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    _, prev, _ = _run_diffusers(diffusers.LCMScheduler, noise, {}, 11, num_inference_steps=4)
    out, _ = _run_ours(sample_lcm, EpsDenoiser(fake_eps, SCHED, boundary="diffusers"),
                       noise * (1 + sigmas[0] ** 2) ** 0.5, sigmas, 11)
    assert (out - prev[-1]).abs().max() <= TOL


def _tcd_case(shape, gamma, strength=1.0, seed=5, **set_kwargs):
    ts = tcd_timesteps(strength=strength, **set_kwargs)
    sigmas = timesteps_to_sigmas(ts, SCHED)
    x = _initial(shape, sigmas[0], strength)
    ref_ts, prev, _ = _run_diffusers(diffusers.TCDScheduler, _vp(x, sigmas[0]), {"eta": gamma}, seed,
                                     strength=strength, **set_kwargs)
    assert ref_ts == ts
    out, rec = _run_ours(sample_tcd, EpsDenoiser(fake_eps, SCHED), x, sigmas, seed, gamma=gamma)
    _check(ts, prev, out, rec, sigmas)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7, 1.0])
def test_tcd_matches_diffusers_txt2img(steps, gamma):
    _tcd_case((2, 4, 8, 8), gamma, num_inference_steps=steps)


@pytest.mark.parametrize("steps,strength", [(2, 0.8), (4, 0.5)])
def test_tcd_matches_diffusers_img2img(steps, strength):
    _tcd_case((2, 4, 8, 8), 0.3, strength=strength, num_inference_steps=steps)


def test_tcd_matches_diffusers_custom_and_full_grid():
    _tcd_case((1, 4, 8, 8), 0.3, timesteps=[999, 500, 250, 30])
    _tcd_case((1, 4, 8, 8), 0.5, num_inference_steps=5, original_inference_steps=50)  # full 1000-step grid quirk


def test_default_noise_sampler_is_diffusers_generator_stream():
    from diffusers.utils.torch_utils import randn_tensor

    x = torch.zeros(2, 4, 8, 8)
    ns = default_noise_sampler(x, seed=1234)
    gen = torch.Generator().manual_seed(1234)
    for _ in range(3):
        assert torch.equal(ns(1.0, 0.5), randn_tensor(x.shape, generator=gen, dtype=x.dtype))


def _const_model(x0):
    def model(x, sigma, **_):
        return x0.expand_as(x).clone()
    return model


def test_tcd_eta_and_gamma_semantics():
    """One step with denoised = 0: x_next = σ_down·ε̂ + σ_up·z; check σ_up, σ_down against TCD's σ_s."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(1, 4, 32, 32, generator=g, dtype=torch.float64)
    z = torch.randn(1, 4, 32, 32, generator=g, dtype=torch.float64)
    sigmas = timesteps_to_sigmas([999, 499, 0], SCHED).double()
    ac = AC.double()
    sigma_next = sigmas[1]
    for gamma in (0.0, 0.3, 1.0):
        s = int(torch.floor(torch.tensor(499.0) * (1 - gamma)))  # TCD: s = floor((1 - γ) t_next)
        sigma_s = ((1 - ac[s]) / ac[s]).sqrt()
        for eta in (0.0, 0.5, 1.0):
            out = sample_tcd(_const_model(torch.zeros_like(e)), e * sigmas[0], sigmas[:2], disable=True,
                             noise_sampler=lambda a, b: z, gamma=gamma, eta=eta)
            coef = torch.linalg.lstsq(torch.stack([e.flatten(), z.flatten()], 1), out.flatten()[:, None]).solution.flatten()
            up = eta * (sigma_next**2 - sigma_s**2).clamp(min=0).sqrt()
            assert float(coef[1]) == pytest.approx(float(up), abs=1e-6), (gamma, eta)
            assert float(coef[0] ** 2 + coef[1] ** 2) == pytest.approx(float(sigma_next**2), rel=1e-6)


def test_tcd_deterministic_cases_ignore_noise():
    sigmas = timesteps_to_sigmas(tcd_timesteps(4), SCHED)
    x = _initial((1, 4, 8, 8), sigmas[0], 1.0)
    den = EpsDenoiser(fake_eps, SCHED)

    def boom(a, b):
        raise AssertionError("noise drawn")

    a = sample_tcd(den, x, sigmas, noise_sampler=boom, disable=True, gamma=0.0)
    b = sample_tcd(den, x, sigmas, noise_sampler=boom, disable=True, gamma=0.8, eta=0.0)
    assert torch.allclose(a, b, atol=1e-6)  # eta = 0 is the deterministic path for any gamma


def test_tcd_uses_full_schedule_behind_a_distilled_view():
    sigmas = timesteps_to_sigmas(tcd_timesteps(4), SCHED)
    x = _initial((1, 4, 8, 8), sigmas[0], 1.0)
    run = lambda sched: sample_tcd(EpsDenoiser(fake_eps, SCHED), x, sigmas, extra_args={"seed": 2}, disable=True,
                                   schedule=sched)
    assert torch.equal(run(SCHED.distilled(50)), run(None))


def test_tcd_clean_final_returns_denoised():
    sigmas = timesteps_to_sigmas(tcd_timesteps(2), SCHED)
    x = _initial((1, 4, 8, 8), sigmas[0], 1.0)
    rec = []
    clean = sample_tcd(EpsDenoiser(fake_eps, SCHED), x, sigmas, extra_args={"seed": 1}, callback=rec.append,
                       disable=True, diffusers_final=False)
    assert torch.equal(clean, rec[-1]["denoised"])
    final = sample_tcd(EpsDenoiser(fake_eps, SCHED), x, sigmas, extra_args={"seed": 1}, disable=True)
    # diffusers' last TCD step: sqrt(ac_0) x0 + sqrt(1 - ac_0) eps_hat, eps_hat = (x_last - x0) / sigma_last
    eps_hat = (rec[-1]["x"] - clean) / sigmas[-2]
    assert torch.allclose(final, AC[0].sqrt() * clean + (1 - AC[0]).sqrt() * eps_hat, atol=1e-5)


def test_tcd_after_the_final_zero_sigma_stays_clean():
    """Sigmas ending in several zeros (hand-made, or two schedules concatenated): a step from σ = 0 used to divide by
    it (all NaN); it returns the model's denoised, as ComfyUI's sample_lcm does."""
    sigmas = timesteps_to_sigmas(tcd_timesteps(2), SCHED)
    x = _initial((1, 4, 8, 8), sigmas[0], 1.0)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    twice = torch.cat([sigmas, sigmas.new_zeros(2)])
    for gamma in (0.0, 0.3, 1.0):
        out = sample_tcd(_const_model(x0), x, twice, extra_args={"seed": 1}, disable=True, gamma=gamma)
        assert torch.isfinite(out).all() and torch.equal(out, x0)


@pytest.mark.parametrize("kwargs", [dict(gamma=1.5), dict(gamma=-0.1), dict(eta=2.0), dict(eta=float("nan"))])
def test_tcd_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError, match="sample_tcd"):
        sample_tcd(_const_model(torch.zeros(1)), torch.zeros(1, 1), torch.tensor([1.0, 0.0]), disable=True, **kwargs)


def test_signature_callback_extra_args_and_progress(capsys):
    expected = ["model", "x", "sigmas", "extra_args", "callback", "disable", "noise_sampler"]
    assert list(inspect.signature(sample_lcm).parameters) == expected
    assert list(inspect.signature(sample_tcd).parameters)[:7] == expected
    seen = []

    def eps_fn(x_in, t, cond=None):
        seen.append(cond)
        return fake_eps(x_in, t)

    sigmas = timesteps_to_sigmas(lcm_timesteps(3), SCHED)
    x = _initial((1, 4, 8, 8), sigmas[0], 1.0)
    rec = []
    sample_lcm(EpsDenoiser(eps_fn, SCHED, "diffusers"), x, sigmas, extra_args={"seed": 0, "cond": "c"},
               callback=rec.append, disable=False)
    assert seen == ["c"] * 3  # extra_args reach the model; the sampler's seed does not reach eps_fn
    assert [sorted(r) for r in rec] == [["denoised", "i", "sigma", "sigma_hat", "x"]] * 3
    assert [r["i"] for r in rec] == [0, 1, 2]
    assert "3/3" in capsys.readouterr().err  # tqdm progress bar


def _tiny_pipeline(scheduler):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 4),
                                  latent_channels=4, norm_num_groups=2, sample_size=16)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, unet


@pytest.mark.parametrize("mode", ["lcm", "tcd"])
def test_unet_denoiser_matches_diffusers_pipeline(mode):
    """End to end through diffusers' StableDiffusionPipeline (CFG 1.5) with a tiny random UNet.

    A random UNet's ε is far from the true noise, so x0 estimates reach |x| ~ 50: the
    tolerance is relative (1e-5 of the output scale, ~100 float32 ulps).
    """
    cls = diffusers.LCMScheduler if mode == "lcm" else diffusers.TCDScheduler
    pipe, unet = _tiny_pipeline(cls(**SD_CONFIG))
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    ts = lcm_timesteps(4) if mode == "lcm" else tcd_timesteps(4)
    sigmas = timesteps_to_sigmas(ts, SCHED)
    x = torch.randn(2, 4, 8, 8, generator=g) * (1 + sigmas[0] ** 2) ** 0.5
    extra = {"eta": 0.3} if mode == "tcd" else {}
    with torch.no_grad():
        ref = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=4, guidance_scale=1.5,
                   latents=_vp(x, sigmas[0]), output_type="latent", generator=torch.Generator().manual_seed(9),
                   height=16, width=16, **extra).images
    den = unet_denoiser(unet, pos, negative_encoder_hidden_states=neg, guidance_scale=1.5,
                        boundary="diffusers" if mode == "lcm" else None)
    sampler = sample_lcm if mode == "lcm" else sample_tcd
    opts = {"gamma": 0.3} if mode == "tcd" else {}
    ours = sampler(den, x, sigmas, extra_args={"seed": 9}, disable=True, **opts)
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    # and the guidance really is applied: guidance 1.0 gives a clearly different result
    plain = sampler(unet_denoiser(unet, pos, boundary="diffusers" if mode == "lcm" else None), x, sigmas,
                    extra_args={"seed": 9}, disable=True, **opts)
    assert (plain - ref).abs().max() > 1e-2
