"""Negative prompts with few-step adapters (issue 13): CFG on the first k steps only, in the real ComfyUI.

LCM KSampler ``cfg_steps`` and the LCM CFG Guider apply ``cfg`` (and so the negative prompt) on the
first k steps and cfg 1.0 after, where ComfyUI's ``sampling_function`` skips the negative.

* In ComfyUI's python, on a tiny random SD1.5-like UNet (``scripts/cfg_steps_check.py``), for LCM and
  TCD (γ 0.3, stochastic re-noising) and every k of 3 steps: equal to a reference made of two stock
  ``comfy.samplers.sample`` calls (ComfyUI's CFGGuider at cfg, then at cfg 1.0 from the first call's
  output) that share one seeded noise sampler; the UNet calls, counted with a
  ``model_function_wrapper``, are ``steps + k`` evaluations (cond and uncond batched on the first k
  steps, cond alone after), and ``2·steps`` once ``disable_cfg1_optimization`` is set.
* Through the server on the full-size random SD1.5 checkpoint (LCM-LoRA Loader, cfg 3; every UNet
  evaluation costs seconds there, so only what the in-process check cannot show): an API prompt without
  ``cfg_steps`` (saved before the input existed) gives exactly SamplerCustom's latent; ``cfg_steps`` 1 of
  2 steps equals the stock chain SplitSigmas → SamplerCustom (cfg 3) → SamplerCustom (no noise, cfg 1).
  That chain is an exact reference only when its second sampler re-noises nothing (k = steps − 1):
  each stock sampler call seeds its own re-noising generator from the seed, so a longer second segment
  would replay the first segment's noise (the in-process check measures that gap,
  ``rel_naive_chain_k1``).
"""
from __future__ import annotations


import pytest
import torch

import comfy_harness as H
import graphs as G
from conftest import LCM_SD15, SD15_CKPT

pytestmark = pytest.mark.comfyui

EVERY_STEP = 10000


@pytest.fixture(scope="module")
def in_process(comfy_env) -> dict:
    return H.run_pack_script(comfy_env, "cfg_steps_check.py")


@pytest.mark.parametrize("mode", ["lcm", "tcd"])
def test_first_k_steps_equal_the_two_stage_stock_reference(in_process, mode):
    res, steps = in_process[mode], in_process["steps"]
    for k in range(steps + 1):
        r = res[f"k{k}"]
        assert r["rel_to_reference"] < 1e-6, (k, r)
        if 0 < k < steps:  # really between the two ends
            assert r["rel_to_every_step"] > 1e-3 and r["rel_to_cfg1"] > 1e-3, (k, r)
    assert res["k0"]["rel_to_cfg1"] == 0.0
    assert res[f"k{steps}"]["rel_to_every_step"] == 0.0 and res[f"k{steps}"]["equal_to_default"]
    assert res["default_equals_sampler_custom"]  # no cfg_steps: SamplerCustom's result, bit for bit
    assert res["guider_equals_ksampler"]  # LCM CFG Guider + SamplerCustomAdvanced = LCM KSampler
    # chaining two samplers that each seed their own noise is NOT the same run (why the reference shares it)
    assert res["rel_naive_chain_k1"] > 1e-3


@pytest.mark.parametrize("mode", ["lcm", "tcd"])
def test_unet_evaluations_are_steps_plus_k(in_process, mode):
    res, steps = in_process[mode], in_process["steps"]
    for k in range(steps + 1):
        calls = res[f"k{k}"]["calls"]
        assert len(calls) == steps  # one batched UNet call per step
        assert [sorted(c) for c in calls] == [[0, 1]] * k + [[0]] * (steps - k), (k, calls)
        assert sum(len(c) for c in calls) == steps + k
    assert [sorted(c) for c in res["default_calls"]] == [[0, 1]] * steps
    # the saving is ComfyUI's cfg-1 optimization: disabled, the negative is evaluated on every step
    assert [sorted(c) for c in res["no_cfg1_optimization_calls"]] == [[0, 1]] * steps


# -- through the server, full-size random SD1.5 (each UNet evaluation costs seconds on CPU: few of them) --
CFG, SEED = 3.0, 5


def _graph() -> dict:
    g = G.base(SD15_CKPT)
    g["neg"]["inputs"]["text"] = "a red brick wall"
    g["l"] = G.lcm_loader(LCM_SD15)
    g["lcm"] = {"class_type": "LCMSampler", "inputs": {"mode": "lcm", "gamma": 0.3, "eta": 1.0}}
    common = {"model": ["l", 0], "positive": ["pos", 0], "negative": ["neg", 0]}
    for steps in (1, 2):
        g[f"sigmas{steps}"] = {"class_type": "LCMScheduler", "inputs": {"steps": steps, "original_steps": 50, "denoise": 1.0}}

    def custom(node, cfg, sigmas, latent=("latent", 0), add_noise=True):
        g[node] = {"class_type": "SamplerCustom", "inputs": {**common, "add_noise": add_noise, "noise_seed": SEED, "cfg": cfg,
                                                              "sampler": ["lcm", 0], "sigmas": list(sigmas),
                                                              "latent_image": list(latent)}}

    def ks(node, steps, cfg_steps=None):
        inputs = {**common, "seed": SEED, "steps": steps, "cfg": CFG, "mode": "lcm", "gamma": 0.3, "eta": 1.0,
                  "denoise": 1.0, "latent_image": ["latent", 0]}
        if cfg_steps is not None:
            inputs["cfg_steps"] = cfg_steps
        g[node] = {"class_type": "LCMKSampler", "inputs": inputs}

    # an API prompt from before cfg_steps existed vs SamplerCustom at the same cfg (1 step)
    ks("ks_old", 1)
    custom("sc_cfg", CFG, ("sigmas1", 0))
    custom("sc_cfg1", 1.0, ("sigmas1", 0))  # cfg matters on this model (one evaluation, no negative)
    # cfg on the first of 2 steps vs the stock chain: SplitSigmas(1) -> SamplerCustom cfg 3 -> SamplerCustom cfg 1
    ks("ks_first", 2, cfg_steps=1)
    g["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sigmas2", 0], "step": 1}}
    custom("chain_a", CFG, ("split", 0))
    custom("chain_b", 1.0, ("split", 1), latent=("chain_a", 0), add_noise=False)
    for node in ("ks_old", "sc_cfg", "sc_cfg1", "ks_first", "chain_b"):
        g[f"save_{node}"] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0],
                                                                    "filename_prefix": G.unique(f"neg_{node}")}}
    return g


@pytest.fixture(scope="module")
def latents(comfy) -> dict:
    result = comfy.run(_graph())
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    return {k[len("save_"):]: G.saved_latent(comfy.output, result, node=k) for k in result.outputs if k.startswith("save_")}


def test_prompt_without_cfg_steps_keeps_todays_behaviour_bit_for_bit(latents):
    assert torch.equal(latents["ks_old"], latents["sc_cfg"])
    assert G.rel_diff(latents["sc_cfg"], latents["sc_cfg1"]) > 1e-4  # the negative prompt acts at cfg 3


def test_first_steps_equal_stock_split_sigmas_chain(latents):
    assert G.rel_diff(latents["ks_first"], latents["chain_b"]) < 1e-6


def test_cfg_steps_is_an_optional_last_input(object_info):
    """Saved UI workflows fill widgets by position: the new widget comes last, and API prompts may omit it."""
    info = object_info["LCMKSampler"]
    spec = info["input"]["optional"]["cfg_steps"]
    assert spec[0] == "INT" and spec[1]["default"] == EVERY_STEP and spec[1]["min"] == 0
    assert "cfg_steps" not in info["input"]["required"]
    assert info["input_order"]["optional"] == ["cfg_steps"]
    guider = object_info["LCMCFGGuider"]
    assert guider["output"] == ["GUIDER"]
    assert guider["input"]["required"]["cfg_steps"][1]["default"] == 2
