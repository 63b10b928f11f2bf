"""A "normal CFG" adapter (trained with ``lcd.solver_guidance: false``, PCM's ``--not_apply_cfg_solver``) in
the real ComfyUI: no guidance is distilled in, so it is sampled with real classifier-free guidance at the
cfg its metadata recommends (``lcd.normal_cfg`` → ``lcm_lora.recommended_cfg``).

* The adapter's metadata is the trainer's own (``training.export.training_metadata`` of a PCM config with
  ``lcd.solver_guidance=false lcd.normal_cfg=2``) on random LoRA tensors.
* The LCM-LoRA Loader reports the recommended cfg and how to sample it; a guided PCM adapter's text does not.
* LCM KSampler ``mode: auto`` at cfg 2 equals ComfyUI's stock pieces at cfg 2 (SamplerCustom with CFG on
  every step, stock ``ddim`` over the phase edges split by SplitSigmas, then the closed-form last TCD step,
  as ``test_comfy_phased``): the node never replaces the user's cfg. At cfg 1 it samples a different
  (unguided) latent and logs that it does; a guided adapter at cfg 1 logs nothing.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphs as G
from conftest import LCM_SD15, SD15_CKPT

pytestmark = pytest.mark.comfyui

NORMAL_LORA = "normal_cfg/pcm-normal-cfg.safetensors"
GUIDED_LORA = "normal_cfg/pcm-guided.safetensors"
SEED = 5
LOG_LINE = "[LCM-LoRA] the PCM adapter was distilled without guidance (normal CFG)"


def _write(comfy, name: str, overrides: list[str]) -> str:
    from lcm_lora.training.config import config_hash, load_config
    from lcm_lora.training.export import training_metadata

    cfg = load_config({}, ["lcd.objective=pcm", *overrides])
    return G.copy_lora_with_metadata(comfy.loras, LCM_SD15, name, training_metadata("sd1", 4, 4.0, 600, config_hash(cfg), cfg))


@pytest.fixture(scope="module")
def loras(comfy) -> dict:
    return {"normal": _write(comfy, NORMAL_LORA, ["lcd.solver_guidance=false", "lcd.normal_cfg=2"]),
            "guided": _write(comfy, GUIDED_LORA, [])}


def comfy_sigma(t: float) -> float:
    """σ(t) of SD's scaled-linear schedule as ComfyUI's ModelSamplingDiscrete builds it (float64 betas)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    return float(((1 - ac[int(t)]) / ac[int(t)]) ** 0.5)


def _ksampler(model, cfg: float) -> dict:
    return {"class_type": "LCMKSampler", "inputs": {
        "model": list(model), "seed": SEED, "steps": 4, "cfg": cfg, "mode": "auto", "gamma": 0.3, "eta": 1.0,
        "denoise": 1.0, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}


def _custom(model, sigmas, sampler, cfg: float, add_noise=True, latent=("latent", 0)) -> dict:
    return {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": add_noise, "noise_seed": SEED, "cfg": cfg, "positive": ["pos", 0],
        "negative": ["neg", 0], "sampler": list(sampler), "sigmas": list(sigmas), "latent_image": list(latent)}}


def _save(g: dict, node_id: str, src: str, slot: int = 0) -> None:
    g[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": [src, slot], "filename_prefix": G.unique(node_id)}}


def _run(comfy, g: dict):
    result = comfy.run(g)
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    return result


@pytest.fixture(scope="module")
def normal_run(comfy, loras) -> dict:
    """LCM KSampler auto at cfg 2 and at cfg 1, and the stock reference at cfg 2 (4 + 8 + 8 UNet evaluations)."""
    g = {**G.base(SD15_CKPT, size=64), "l": G.lcm_loader(loras["normal"])}
    g["neg"]["inputs"]["text"] = "blurry, low quality"  # a negative prompt that differs from the positive one
    g["ks_cfg2"] = _ksampler(("l", 0), 2.0)
    g["ks_cfg1"] = _ksampler(("l", 0), 1.0)
    _save(g, "save_ks_cfg2", "ks_cfg2")
    _save(g, "save_ks_cfg1", "ks_cfg1")
    g["sched"] = {"class_type": "LCMScheduler", "inputs": {"steps": 4, "original_steps": 50, "denoise": 1.0,
                                                           "schedule": "pcm", "phases": 4}}
    g["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 3}}
    g["ddim"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    g["first3"] = _custom(("l", 0), ("split", 0), ("ddim", 0), 2.0)
    g["last"] = _custom(("l", 0), ("split", 1), ("ddim", 0), 2.0, add_noise=False, latent=("first3", 0))
    _save(g, "save_x3", "first3")
    _save(g, "save_x0", "last", slot=1)  # denoised_output: the guided x̂0 at the last edge
    result = _run(comfy, g)
    out = {key[5:]: G.saved_latent(comfy.output, result, key) for key in g if key.startswith("save_")}
    out["text"] = result.outputs["l"]["text"][0]
    out["log"] = result.log
    return out


def test_loader_reports_the_recommended_cfg(normal_run):
    text = normal_run["text"]
    assert "PCM (adapter metadata)" in text and "cfg 2," in text, text
    assert "normal CFG: distilled without guidance" in text and "cfg to about 2" in text, text
    assert "negative prompts work" in text, text


def test_ksampler_at_cfg_2_equals_stock_cfg_2_on_the_phase_edges(normal_run):
    """The KSampler keeps the user's cfg: = stock ddim jumps with CFG 2 on the phase edges + TCD's last step."""
    x3, x0 = normal_run["x3"].double(), normal_run["x0"].double()
    s3, s0 = comfy_sigma(239), comfy_sigma(0)
    eps = (x3 - x0) / s3  # the guided ε̂ at the last edge (SaveLatent's latent scale is linear, so it cancels)
    reference = (x0 + s0 * eps) / math.sqrt(1 + s0 ** 2)
    assert G.rel_diff(normal_run["x0"], reference) > 1e-4  # the last TCD step matters
    assert G.rel_diff(normal_run["ks_cfg2"], reference) < 1e-6
    assert G.rel_diff(normal_run["ks_cfg1"], reference) > 1e-3  # cfg 1 (unguided) is another run


def test_ksampler_logs_an_unguided_normal_cfg_run_only(comfy, loras, normal_run):
    assert normal_run["log"].count(LOG_LINE) == 1, normal_run["log"][-3000:]  # cfg 1 only, not cfg 2
    assert "use cfg about 2 (negative prompts work)" in normal_run["log"]
    g = {**G.base(SD15_CKPT, prompt="a guided fox"), "l": G.lcm_loader(loras["guided"])}
    g["ks"] = _ksampler(("l", 0), 1.0)
    _save(g, "save", "ks")
    result = _run(comfy, g)
    assert "distilled without guidance" not in result.log, result.log[-3000:]
    text = result.outputs["l"]["text"][0]
    assert "PCM (adapter metadata)" in text and "cfg 1," in text and "normal CFG" not in text, text
