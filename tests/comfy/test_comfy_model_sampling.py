"""The LCM model sampling the loader (and merge) patch in, in the real ComfyUI, for ε and v-prediction models with
and without zero-terminal SNR (``scripts/lcm_model_sampling_check.py``): ε models get exactly ComfyUI's
``ModelSamplingDiscrete`` "lcm"; a v-prediction model's output is read as v (ComfyUI's "lcm" reads it as ε: off by
tens of latent units at t 999); a zsnr model keeps its own σ table. Inpainting with TCD keeps the masked-out area exactly, as ComfyUI's samplers."""
from __future__ import annotations

import pytest

import comfy_harness as H

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def check(comfy_env) -> dict:
    return H.run_pack_script(comfy_env, "lcm_model_sampling_check.py")


@pytest.mark.parametrize("case", ["eps", "eps_zsnr"])
def test_eps_models_get_comfyuis_own_lcm_model_sampling(check, case):
    assert check[case]["stock"] == 0.0, check[case]
    assert check[case]["closed_form"] < 1e-4, check[case]


@pytest.mark.parametrize("case", ["v_prediction", "v_prediction_zsnr"])
def test_v_prediction_models_are_read_as_v(check, case):
    assert check[case]["closed_form"] < 1e-4, check[case]
    assert check[case]["stock"] > 1.0, check[case]  # ComfyUI's own "lcm" (ε) is far off: the check can tell


@pytest.mark.parametrize("case", ["eps_zsnr", "v_prediction_zsnr"])
def test_zero_terminal_snr_models_keep_their_sigma_table(check, case):
    ours, own = check[case]["sigma_max"]
    assert ours == pytest.approx(own, rel=1e-5) and ours > 100, check[case]
    assert check["eps"]["sigma_max"][0] == pytest.approx(14.6, rel=0.01)


def test_inpainting_keeps_the_masked_out_area_with_tcd_too(check):
    kept = check["inpaint_kept"]  # ComfyUI's own lcm sampler: float rounding of the latent format (~1e-7)
    assert len(kept) == 4 and all(v < 1e-5 for v in kept.values()), kept


def test_a_zero_terminal_snr_model_is_sampled_on_its_own_table(check):
    """With zsnr the σ table changes (σ_max 4519): the pack's rescale equals ComfyUI's bit for bit; the LCM Scheduler
    with the model connected gives sigmas the model reads as 999/759/499/259 (diffusers' LCM timesteps; SD's table
    made it read 880/706/474/246), the phase edges likewise; the TCD sampler takes the model's table."""
    assert check["zsnr_table_equal"]
    t = check["zsnr_timesteps"]
    assert t["lcm_with_model"] == [999, 759, 499, 259] and t["tscd_with_model"] == [999, 749, 499, 249], t
    assert t["lcm_without_model"] != t["lcm_with_model"], t  # the check can tell the tables apart
    assert check["tcd_sampler_zsnr_table"] == [True, False]
