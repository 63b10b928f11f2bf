"""PCM / TSCD (phased) adapters in the real ComfyUI: the nodes follow their sampling recipe.

A phased adapter's consistency map jumps from t to the lower edge of t's phase (PCM, Wang et al.
2024, arXiv 2405.18407; Hyper-SD's TSCD, Ren et al. 2024, arXiv 2404.13686), with the TCD map (no
c_skip/c_out): it is sampled with plain ε model sampling by deterministic DDIM jumps from edge to
edge (TCD at γ 0) on ``lcm_core.phased_timesteps``.

* Random adapters carrying ``lcm_lora.objective`` pcm / tscd and ``lcm_lora.phases`` through the
  LCM-LoRA Loader (and LCM Adapter Merge) keep plain ε model sampling — the stock ``LoraLoader``
  with no model-sampling node is the reference (BasicScheduler sigmas come from the model's own
  model sampling; ``ModelSamplingDiscrete(lcm)`` gives different ones).
* LCM KSampler ``mode: auto`` on such a model equals ComfyUI's stock pieces: SamplerCustom with
  the stock ``ddim`` sampler (Euler in σ, which for ε-prediction is the DDIM jump
  ``x = x̂0 + σ_next·ε̂``) on the phase-edge sigmas, split before the last step by the stock
  SplitSigmas, and the closed-form last TCD step (diffusers' ``TCDScheduler`` lands on timestep 0:
  ``(x̂0 + σ(0)·ε̂)/sqrt(1 + σ(0)²)``, ``lcm_core.sampling.sample_tcd``). The sigmas are the LCM
  Scheduler's ``schedule: pcm / tscd`` output, which ``test_comfy_scheduler`` checks against
  ComfyUI's own schedule table at ``phased_timesteps``.
* The loader's ``sampling: pcm`` + ``phases`` choose the recipe for an adapter without metadata
  (released PCM / Hyper-SD LoRAs); the merge keeps and reports the recipe.
* A PCM adapter trained on phases of other lengths (``lcd.phase_starts``, recorded as
  ``lcm_lora.phase_starts``): LCM KSampler auto steps on its own edges (999, 819, 599, 299 for starts
  0, 15, 30, 41) — the stock ddim jumps on the LCM Scheduler's ``phase_starts`` sigmas, which
  ``test_comfy_scheduler`` checks against ComfyUI's schedule table.
* ``-m slow`` (16 more UNet evaluations): LCM Sampler auto on LCM Scheduler ``schedule: pcm`` is the
  KSampler's run, explicit modes keep the LCM timesteps, img2img takes the schedule's last steps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

import graphs as G
from conftest import LCM_SD15, SD15_CKPT, STYLE_SD15, merge_node

pytestmark = pytest.mark.comfyui

PCM_LORA = "phased/pcm-meta-lora.safetensors"
TSCD_LORA = "phased/tscd-meta-lora.safetensors"
PCM_STARTS_LORA = "phased/pcm-starts-meta-lora.safetensors"
STARTS = (0, 15, 30, 41)  # lcd.phase_starts: edges 819 / 599 / 299 instead of PCM's even 739 / 499 / 239
SEED = 11


def _write(comfy, name: str, objective: str, phases: int, starts=None) -> str:
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective

    meta = recipe_for_objective(objective, w_range=(3.0, 15.0), phases=phases, phase_starts=starts).to_metadata()
    assert meta["lcm_lora.objective"] == objective and meta["lcm_lora.phases"] == str(phases)
    assert meta.get("lcm_lora.phase_starts") == (",".join(map(str, starts)) if starts else None)
    return G.copy_lora_with_metadata(comfy.loras, LCM_SD15, name, meta)


@pytest.fixture(scope="module")
def phased_loras(comfy) -> dict:
    return {"pcm": _write(comfy, PCM_LORA, "pcm", 4), "tscd": _write(comfy, TSCD_LORA, "tscd", 4),
            "pcm_starts": _write(comfy, PCM_STARTS_LORA, "pcm", 4, starts=STARTS)}


def comfy_sigma(t: float) -> float:
    """σ(t) of SD's scaled-linear schedule as ComfyUI's ModelSamplingDiscrete builds it (float64 betas)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    return float(((1 - ac[int(t)]) / ac[int(t)]) ** 0.5)


def run(comfy, g: dict) -> tuple:
    result = comfy.run(g)
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    return result


# -- model sampling ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_sampling(comfy, phased_loras) -> dict:
    """BasicScheduler(simple, 3) sigmas per set-up, shown by PreviewAny (as test_comfy_recipe_and_conventions)."""
    setups = {
        "ours_pcm": {"l": G.lcm_loader(phased_loras["pcm"], clip=("ckpt", 1))},
        "ours_tscd": {"l": G.lcm_loader(phased_loras["tscd"])},
        "stock_eps": {"l": G.lora_loader(phased_loras["pcm"])},
        "stock_lcm": {"l": G.lora_loader(phased_loras["pcm"]), "ms": G.model_sampling_lcm(("l", 0))},
        "ours_nometa_pcm": {"l": G.lcm_loader(LCM_SD15)},
        "ours_nometa_tscd": {"l": G.lcm_loader(LCM_SD15)},
        "merge_pcm": {"l": merge_node(("ckpt", 0), adapters=(STYLE_SD15, phased_loras["pcm"]))},
    }
    setups["ours_nometa_pcm"]["l"]["inputs"].update(sampling="pcm", phases=2)
    setups["ours_nometa_tscd"]["l"]["inputs"]["sampling"] = "tscd"  # no phases input: the default 4
    g = G.sigmas_per_setup(SD15_CKPT, setups)
    g["merge_save"] = {"class_type": "LCMAdapterSave", "inputs": {  # the merged adapter keeps the recipe
        "adapter": ["merge_pcm_l", 2], "filename_prefix": G.unique("phased/merged"), "dtype": "fp32"}}
    result = run(comfy, g)
    out = {name: result.outputs[f"{name}_show"]["text"][0] for name in setups}
    out["texts"] = {name: result.outputs.get(f"{name}_l", {}).get("text", [""])[0] for name in setups}
    with safe_open(str(comfy.loras / result.outputs["merge_save"]["lcm_saved"][0]), "pt") as f:
        out["merged_metadata"] = dict(f.metadata() or {})
    return out


def test_phased_adapters_get_plain_eps_model_sampling(model_sampling):
    ms = model_sampling
    assert ms["stock_eps"] != ms["stock_lcm"]  # the probe tells them apart
    for name in ("ours_pcm", "ours_tscd", "ours_nometa_pcm", "ours_nometa_tscd", "merge_pcm"):
        assert ms[name] == ms["stock_eps"], name


def test_loader_and_merge_say_the_recipe(model_sampling):
    texts = model_sampling["texts"]
    assert "PCM (adapter metadata)" in texts["ours_pcm"] and "4 phases" in texts["ours_pcm"], texts["ours_pcm"]
    assert "999, 739, 499, 239" in texts["ours_pcm"] and "γ 0" in texts["ours_pcm"], texts["ours_pcm"]
    assert "TSCD (adapter metadata)" in texts["ours_tscd"] and "999, 749, 499, 249" in texts["ours_tscd"]
    assert "PCM (chosen (pcm, 2 phases))" in texts["ours_nometa_pcm"] and "999, 499" in texts["ours_nometa_pcm"]
    assert "TSCD (chosen (tscd, 4 phases))" in texts["ours_nometa_tscd"], texts["ours_nometa_tscd"]
    merge = texts["merge_pcm"]
    assert "relative error" in merge and "PCM (adapter metadata)" in merge and "4 phases" in merge, merge


def test_merged_adapter_keeps_the_phased_recipe(model_sampling, comfy, phased_loras):
    from lcm_lora.lcm_core.sampling_recipe import read_recipe

    with safe_open(str(comfy.loras / phased_loras["pcm"]), "pt") as f:
        source = read_recipe(f.metadata())
    merged = model_sampling["merged_metadata"]
    assert merged["lcm_lora.objective"] == "pcm" and merged["lcm_lora.phases"] == "4", merged
    assert read_recipe(merged) == source


# -- sampling -----------------------------------------------------------------------------------
def _ksampler(model, steps, mode="auto", gamma=0.3, denoise=1.0, latent=("latent", 0)) -> dict:
    return {"class_type": "LCMKSampler", "inputs": {
        "model": list(model), "seed": SEED, "steps": steps, "cfg": 1.0, "mode": mode, "gamma": gamma, "eta": 1.0,
        "denoise": denoise, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": list(latent)}}


def _custom(model, sigmas, sampler, add_noise=True, latent=("latent", 0)) -> dict:
    return {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": add_noise, "noise_seed": SEED, "cfg": 1.0, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": list(sampler), "sigmas": list(sigmas), "latent_image": list(latent)}}


def _save(g: dict, node_id: str, src: str, slot: int = 0) -> None:
    g[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": [src, slot], "filename_prefix": G.unique(node_id)}}


def _family_graph(loras: dict, family: str) -> dict:
    """LCM KSampler auto (widget γ 0.3: auto must take the recipe's γ 0) and the stock reference: ddim (Euler)
    over the first 3 jumps of the LCM Scheduler's phase-edge sigmas, then x̂0 at the last edge."""
    g = {**G.base(SD15_CKPT), "l": G.lcm_loader(loras[family])}
    g["ks_auto"] = _ksampler(("l", 0), 4)
    _save(g, "save_ks_auto", "ks_auto")
    g["sched"] = {"class_type": "LCMScheduler", "inputs": {"steps": 4, "original_steps": 50, "denoise": 1.0,
                                                           "schedule": family.split("_")[0], "phases": 4}}
    if family == "pcm_starts":
        g["sched"]["inputs"]["phase_starts"] = ",".join(map(str, STARTS))
    g["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 3}}
    g["ddim"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["first3"] = _custom(("l", 0), ("split", 0), ("ddim", 0))
    g["last"] = _custom(("l", 0), ("split", 1), ("ddim", 0), add_noise=False, latent=("first3", 0))
    _save(g, "save_x3", "first3")
    _save(g, "save_x0", "last", slot=1)  # denoised_output: x̂0 at the last edge
    return g


def _run_saves(comfy, g: dict, family: str) -> dict:
    result = run(comfy, g)
    return {f"{family}_{key[5:]}": G.saved_latent(comfy.output, result, key) for key in g if key.startswith("save_")}


@pytest.fixture(scope="module")
def sampled(comfy, phased_loras) -> dict:
    """4-step samples of the pcm / tscd adapters and their stock references (16 UNet evaluations)."""
    out = {}
    for family in ("pcm", "tscd", "pcm_starts"):
        out.update(_run_saves(comfy, _family_graph(phased_loras, family), family))
    return out


@pytest.mark.parametrize("family,timesteps", [("pcm", [999, 739, 499, 239]), ("tscd", [999, 749, 499, 249]),
                                             ("pcm_starts", [999, 819, 599, 299])])
def test_ksampler_auto_equals_stock_ddim_on_the_phase_edges(sampled, family, timesteps):
    """LCM KSampler auto = stock ddim jumps on the phase edges + TCD's last step to timestep 0."""
    x3, x0 = sampled[f"{family}_x3"].double(), sampled[f"{family}_x0"].double()
    s3, s0 = comfy_sigma(timesteps[-1]), comfy_sigma(0)
    eps = (x3 - x0) / s3  # ε̂ at the last edge (SaveLatent's latent scale is linear, so it cancels)
    reference = (x0 + s0 * eps) / math.sqrt(1 + s0 ** 2)
    assert G.rel_diff(sampled[f"{family}_x0"], reference) > 1e-4  # the last TCD step matters
    assert G.rel_diff(sampled[f"{family}_ks_auto"], reference) < 1e-6  # measured 1.2e-7


def test_pcm_and_tscd_runs_differ(sampled):
    assert G.rel_diff(sampled["pcm_ks_auto"], sampled["tscd_ks_auto"]) > 1e-4  # their edges differ
    assert G.rel_diff(sampled["pcm_ks_auto"], sampled["pcm_starts_ks_auto"]) > 1e-4  # so do the moved ones


@pytest.mark.slow
def test_sampler_auto_explicit_mode_and_img2img(comfy, phased_loras, sampled):
    """(slow: 16 more UNet evaluations) LCM Sampler auto on LCM Scheduler schedule pcm is the KSampler's run
    (tcd at the recipe's γ 0, not the widget's 0.3); an explicit mode keeps the LCM timesteps (999, 759, 499,
    259): a different run; img2img (denoise 0.5) samples the last 2 of the 4-step phased schedule."""
    g = _family_graph(phased_loras, "pcm")  # same nodes: ComfyUI's cache may reuse ks_auto
    g["auto_sampler"] = {"class_type": "LCMSampler", "inputs": {"mode": "auto", "gamma": 0.3, "eta": 1.0}}
    g["custom_auto"] = _custom(("l", 0), ("sched", 0), ("auto_sampler", 0))
    _save(g, "save_custom_auto", "custom_auto")
    g["ks_tcd"] = _ksampler(("l", 0), 4, mode="tcd", gamma=0.0)
    _save(g, "save_ks_tcd", "ks_tcd")
    g["ks_img2img"] = _ksampler(("l", 0), 2, denoise=0.5, latent=("ks_auto", 0))
    g["sched_img2img"] = {"class_type": "LCMScheduler", "inputs": {
        "steps": 2, "original_steps": 50, "denoise": 0.5, "schedule": "pcm", "phases": 4}}
    g["tcd0"] = {"class_type": "LCMSampler", "inputs": {"mode": "tcd", "gamma": 0.0, "eta": 1.0}}
    g["custom_img2img"] = _custom(("l", 0), ("sched_img2img", 0), ("tcd0", 0), latent=("ks_auto", 0))
    _save(g, "save_ks_img2img", "ks_img2img")
    _save(g, "save_custom_img2img", "custom_img2img")
    r = _run_saves(comfy, g, "pcm")
    assert G.rel_diff(r["pcm_ks_auto"], sampled["pcm_ks_auto"]) < 1e-6  # deterministic
    assert G.rel_diff(r["pcm_custom_auto"], r["pcm_ks_auto"]) < 1e-6  # measured 0
    assert G.rel_diff(r["pcm_ks_tcd"], r["pcm_ks_auto"]) > 1e-4  # measured 1.0e-2
    assert G.rel_diff(r["pcm_ks_img2img"], r["pcm_custom_img2img"]) < 1e-6  # measured 0


def test_ksampler_error_names_the_node(comfy, phased_loras):
    g = {**G.base(SD15_CKPT), "l": G.lcm_loader(phased_loras["pcm"])}
    g["ks"] = _ksampler(("l", 0), 48, denoise=0.04)  # int(48 / 0.04) = 1200 > 1000 timesteps
    _save(g, "save", "ks")
    result = comfy.run(g)
    assert result.status == "error" and result.error["node_type"] == "LCMKSampler", result.message()
    msg = result.error["exception_message"]
    assert msg.startswith("LCM KSampler steps") and "pcm" in msg and "1000" in msg, msg


def test_scheduler_phase_starts_error_names_the_input(comfy, phased_loras):
    """A ``phase_starts`` that is not one start per phase, 0 first, increasing, on the grid: the node and the input."""
    g = {**G.base(SD15_CKPT), "l": G.lcm_loader(phased_loras["pcm_starts"])}
    g["sched"] = {"class_type": "LCMScheduler", "inputs": {"steps": 4, "original_steps": 50, "denoise": 1.0,
                                                           "schedule": "pcm", "phases": 4, "phase_starts": "0,15,30"}}
    g["ddim"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["custom"] = _custom(("l", 0), ("sched", 0), ("ddim", 0))
    _save(g, "save", "custom")
    result = comfy.run(g)
    assert result.status == "error" and result.error["node_type"] == "LCMScheduler", result.message()
    msg = result.error["exception_message"]
    assert msg.startswith("LCM Scheduler phase_starts") and "one start per phase (4)" in msg, msg
