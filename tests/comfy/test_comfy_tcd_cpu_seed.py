"""The pack's TCD sampler in the real ComfyUI on the CPU: the first re-noising is fresh noise.

ComfyUI (here ``--cpu``) draws the initial noise with ``comfy.sample.prepare_noise`` —
``torch.manual_seed(seed)`` on the CPU — and hands the sampler the same seed; a re-noising stream
seeded with it on the CPU is the same stream, so its first "fresh" noise is the initial noise and a
TCD step ``x₁ = x̂₀ + σ_down·ε̂ + σ_up·z`` with ε̂ ≈ ε₀ carries σ_down + σ_up of noise instead of
σ_next = sqrt(σ_down² + σ_up²) (demo/README.md, "A demo bug, found through TCD's γ").

In ComfyUI's python (``scripts/tcd_seed_check.py``), a tiny random SD1.5-like UNet whose guided
prediction ComfyUI's own ``sampler_post_cfg_function`` hook sets to 0, so x₁ is pure noise; γ 0.5,
2 LCM steps (999 → 499), σ_down / σ_up from ComfyUI's model sampling (closed form, TCD Algorithm 4).
Through SamplerCustom's path (``comfy.sample.sample_custom``) with LCM Sampler ``tcd``, and through the
LCM KSampler (mode ``tcd``, and ``auto`` on a model carrying a TCD recipe):
* the injected noise z is not ComfyUI's initial noise (uncorrelated) but the independent stream
  ``default_noise_sampler(x, independent_noise_seed(seed))`` (ComfyUI's own noise sampler);
* std(x₁) is σ_next within 3 % (the reuse gives σ_down·std(ε̂) + σ_up, 33 % more here).
The pack's previous sampler object, ``KSAMPLER(sample_tcd)`` with the plain seed, fails both checks; so
does ComfyUI's own ``euler_ancestral`` (recorded: the same CPU-mode property, which the pack leaves alone).
"""
from __future__ import annotations


import pytest

import comfy_harness as H

pytestmark = pytest.mark.comfyui

FIXED = ("custom_tcd", "ks_tcd", "ks_auto")


@pytest.fixture(scope="module")
def check(comfy_env) -> dict:
    return H.run_pack_script(comfy_env, "tcd_seed_check.py")


def fresh(r: dict) -> bool:
    """The first injected noise is the independent stream, not ComfyUI's initial noise."""
    return r["z_vs_independent"] < 1e-4 and r["z_vs_initial"] > 1.0 and abs(r["corr_z_initial"]) < 0.05


def right_size(r: dict) -> bool:
    """std(x₁) = σ_next = sqrt(σ_down² + σ_up²) (closed form) within 3 %."""
    assert r["sigma_next"] == pytest.approx((r["sigma_down"] ** 2 + r["sigma_up"] ** 2) ** 0.5, rel=1e-5)
    return abs(r["std_x1"] / r["sigma_next"] - 1) < 0.03


@pytest.mark.parametrize("path", FIXED)
def test_tcd_on_cpu_injects_fresh_noise_of_size_sigma_next(check, path):
    r = check[path]
    assert r["device"] == "cpu", r  # the case the fix is for (ComfyUI runs with --cpu here)
    assert fresh(r), r
    assert right_size(r), r


def test_the_check_fails_the_old_stream_and_comfyuis_ancestral_sampler(check):
    old = check["old_tcd"]
    assert old["z_vs_initial"] < 1e-4 and old["corr_z_initial"] > 0.999, old  # re-injects the initial noise
    assert not fresh(old) and not right_size(old), old
    reuse = old["sigma_down"] * old["std_eps_hat"] + old["sigma_up"]
    assert old["std_x1"] == pytest.approx(reuse, rel=0.01), old  # σ_down + σ_up of noise: measured 33 % too much
    assert old["std_x1"] / old["sigma_next"] > 1.25, old
    # ComfyUI's own ancestral sampler re-injects the initial noise the same way on the CPU (left alone)
    anc = check["stock_euler_ancestral"]
    assert anc["z_vs_initial"] < 1e-4 and not fresh(anc), anc


def test_all_node_paths_inject_the_same_noise(check):
    for path in FIXED[1:]:
        assert check[path]["std_x1"] == check["custom_tcd"]["std_x1"], path
