"""The nodes follow an adapter's sampling recipe, and ComfyUI conventions, in the real ComfyUI.

* Recipe (issue 13 item 2; LCM Adapter Merge likewise): a random adapter carrying TCD metadata
  (``SamplingRecipe.to_metadata()``, γ 0.5 so the recipe's γ is told apart from the widget
  default 0.3) through the LCM-LoRA Loader gets plain ε model sampling — checked against the
  stock ``LoraLoader`` with no model-sampling node (equal) and ``LoraLoader →
  ModelSamplingDiscrete(lcm)`` (different), using BasicScheduler, whose sigmas come from the
  model's own model sampling. LCM KSampler / LCM Sampler ``mode: auto`` then sample it exactly
  as ``mode: tcd`` at γ 0.5. An adapter without metadata keeps the LCM behaviour (auto = lcm,
  LCM model sampling); the loader's ``sampling`` input chooses TCD for it.
* Conventions (issue 15): the loader's CLIP output without its clip input is an error at the
  loader that says what to connect; LCM Scheduler errors use the node's input names; the
  adapter cache is bounded in bytes (ComfyUI's python, the pack imported as ComfyUI does).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import comfy_harness as H
import graphs as G
from conftest import LCM_SD15, SD15_CKPT, STYLE_SD15, merge_node

pytestmark = pytest.mark.comfyui

TCD_LORA = "recipe/tcd-meta-lora.safetensors"
TCD_GAMMA = 0.5


@pytest.fixture(scope="module")
def tcd_lora(comfy) -> str:
    """The LCM fixture adapter's tensors with a TCD sampling recipe in its metadata."""
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective

    return G.copy_lora_with_metadata(comfy.loras, LCM_SD15, TCD_LORA, recipe_for_objective(
        "tcd", w_range=(3.0, 15.0), steps=4, gamma=TCD_GAMMA).to_metadata())


def _save(g: dict, src: str, prefix: str) -> dict:
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": [src, 0], "filename_prefix": prefix}}
    return g


def run_latent(comfy, g: dict) -> tuple:
    result = comfy.run(g)
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    return result, G.saved_latent(comfy.output, result)


@pytest.fixture(scope="module")
def model_sampling(comfy, tcd_lora) -> dict:
    """BasicScheduler(simple, 3) sigmas of each set-up, shown by PreviewAny (no sampling needed):
    they come from the MODEL's own model sampling — the 50-step distilled grid after an LCM patch,
    the 1000-step table for plain ε — so they tell the two apart."""
    setups = {
        "ours_tcd": {"l": G.lcm_loader(tcd_lora, clip=("ckpt", 1))},
        "stock_eps": {"l": G.lora_loader(tcd_lora)},
        "stock_lcm": {"l": G.lora_loader(tcd_lora), "ms": G.model_sampling_lcm(("l", 0))},
        "ours_nometa": {"l": G.lcm_loader(LCM_SD15)},
        "ours_nometa_tcd": {"l": G.lcm_loader(LCM_SD15)},
        "ours_tcd_forced_lcm": {"l": G.lcm_loader(tcd_lora)},
        "merge_tcd": {"l": merge_node(("ckpt", 0), adapters=(STYLE_SD15, tcd_lora))},
        "merge_lcm": {"l": merge_node(("ckpt", 0))},
    }
    setups["ours_nometa_tcd"]["l"]["inputs"]["sampling"] = "tcd"
    setups["ours_tcd_forced_lcm"]["l"]["inputs"]["sampling"] = "lcm"
    g = G.sigmas_per_setup(SD15_CKPT, setups)
    result = comfy.run(g)
    assert result.status == "success", f"{result.message()}\n{result.log[-3000:]}"
    out = {name: result.outputs[f"{name}_show"]["text"][0] for name in setups}
    out["loader_text"] = result.outputs.get("ours_tcd_l", {}).get("text", [""])[0]
    return out


def test_tcd_adapter_gets_plain_eps_model_sampling(model_sampling):
    ms = model_sampling
    assert ms["stock_eps"] != ms["stock_lcm"]  # the probe can tell them apart
    assert ms["ours_tcd"] == ms["stock_eps"]
    assert "TCD" in ms["loader_text"] and "adapter metadata" in ms["loader_text"], ms["loader_text"]


def test_adapter_without_metadata_keeps_lcm_model_sampling(model_sampling):
    assert model_sampling["ours_nometa"] == model_sampling["stock_lcm"]


def test_merge_follows_a_tcd_adapter_recipe(model_sampling):
    assert model_sampling["merge_tcd"] == model_sampling["stock_eps"]
    assert model_sampling["merge_lcm"] == model_sampling["stock_lcm"]


def test_sampling_input_chooses_for_the_adapter(model_sampling):
    assert model_sampling["ours_nometa_tcd"] == model_sampling["stock_eps"]  # TCD-SDXL-LoRA, Hyper-SD …
    assert model_sampling["ours_tcd_forced_lcm"] == model_sampling["stock_lcm"]


@pytest.fixture(scope="module")
def sampled(comfy, tcd_lora) -> dict:
    """2-step samples (TCD and LCM differ from the second step on)."""
    def sampler_custom(lora, prefix, mode, gamma=0.3):
        g = {**G.base(SD15_CKPT), "l": G.lcm_loader(lora)}
        G.probe(g, ("l", 0), prefix, sampler="ours", steps=2, seed=7, mode=mode)
        g["sampler"]["inputs"]["gamma"] = gamma
        return g

    ks = {**G.base(SD15_CKPT), "l": G.lcm_loader(tcd_lora)}
    ks["ks"] = {"class_type": "LCMKSampler", "inputs": {
        "model": ["l", 0], "seed": 7, "steps": 2, "cfg": 1.0, "mode": "auto", "gamma": 0.3, "eta": 1.0,
        "denoise": 1.0, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
    graphs = {
        "ks_auto": _save(ks, "ks", "rec_ks_auto"),  # widget γ 0.3, recipe γ 0.5
        "sampler_auto": sampler_custom(tcd_lora, "rec_sampler_auto", "auto"),
        "sampler_tcd05": sampler_custom(tcd_lora, "rec_sampler_tcd05", "tcd", TCD_GAMMA),
        "sampler_tcd03": sampler_custom(tcd_lora, "rec_sampler_tcd03", "tcd", 0.3),
        "nometa_auto": sampler_custom(LCM_SD15, "rec_nometa_auto", "auto"),
    }
    return {name: run_latent(comfy, g)[1] for name, g in graphs.items()}


def test_auto_mode_samples_a_tcd_adapter_with_tcd_at_the_recipe_gamma(sampled):
    assert G.rel_diff(sampled["sampler_tcd05"], sampled["sampler_tcd03"]) > 1e-4  # γ matters at 2 steps
    assert G.rel_diff(sampled["sampler_auto"], sampled["sampler_tcd05"]) < 1e-6  # LCM Sampler auto
    assert G.rel_diff(sampled["ks_auto"], sampled["sampler_tcd05"]) < 1e-6  # LCM KSampler auto (its γ widget: 0.3)


def test_auto_mode_keeps_lcm_for_an_adapter_without_metadata(sampled, probes):
    lcm = probes.latent("lora_ours")  # LCM-LoRA Loader → LCM Sampler mode lcm, same seed and sigmas
    assert G.rel_diff(sampled["nometa_auto"], lcm) < 1e-6
    assert G.rel_diff(sampled["nometa_auto"], sampled["sampler_tcd05"]) > 1e-4


# -- the loader's CLIP output ------------------------------------------------------------------
def clip_graph(connect_clip: bool, use_clip_output: bool) -> dict:
    """Loader → (its CLIP or the checkpoint's) CLIPTextEncode → PreviewAny: no sampling needed."""
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15_CKPT}}}
    g["l"] = G.lcm_loader(STYLE_SD15, clip=("ckpt", 1) if connect_clip else None)
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": G.unique("a fox"),
                                                          "clip": ["l", 1] if use_clip_output else ["ckpt", 1]}}
    g["show_model"] = {"class_type": "PreviewAny", "inputs": {"source": ["l", 0]}}  # so the loader runs
    g["show_cond"] = {"class_type": "PreviewAny", "inputs": {"source": ["pos", 0]}}
    return g


def test_clip_output_without_clip_input_says_what_to_connect(comfy):
    bad = comfy.run(clip_graph(connect_clip=False, use_clip_output=True))
    assert bad.status == "error" and bad.error["node_type"] == "LCMLoraLoader", bad.message()
    msg = bad.error["exception_message"]
    assert "clip input" in msg and "CLIP output" in msg and "checkpoint" in msg, msg
    assert "your checkpoint does not contain" not in msg
    # connected: the text encoder part is applied; unused CLIP output: no clip input needed
    connected = comfy.run(clip_graph(connect_clip=True, use_clip_output=True))
    assert connected.status == "success" and "not applied" not in connected.outputs["l"]["text"][0]
    unused = comfy.run(clip_graph(connect_clip=False, use_clip_output=False))
    assert unused.status == "success"
    # the style LoRA's text-encoder modules are not applied without CLIP: the loader says so (it said nothing)
    assert "text-encoder module(s) not applied: the clip input is not connected" in unused.outputs["l"]["text"][0]


# -- LCM Scheduler errors in the node's words ------------------------------------------------------
def test_scheduler_errors_use_the_node_input_names(comfy):
    g = G.base(SD15_CKPT)
    g["ms"] = G.model_sampling_lcm(("ckpt", 0))
    G.probe(g, ("ms", 0), G.unique("sched_err"), sampler="lcm", steps=8)
    g["sigmas"]["inputs"]["denoise"] = 0.1  # 50 × 0.1 = 5 grid timesteps < 8 steps
    result = comfy.run(g)
    assert result.status == "error" and result.error["node_type"] == "LCMScheduler"
    msg = result.error["exception_message"]
    assert "steps" in msg and "original_steps" in msg and "denoise" in msg, msg
    assert "at most 5" in msg and "0.16" in msg, msg
    for diffusers_word in ("num_inference_steps", "original_inference_steps", "strength"):
        assert diffusers_word not in msg, msg


# -- the adapter cache is bounded in bytes -----------------------------------------------------------
def tensor_bytes(path: Path) -> int:
    """Bytes of a LoRA file's down/up tensors (alpha is a number in memory), read independently with safetensors."""
    with safe_open(str(path), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys() if not k.endswith(".alpha")]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_adapter_cache_is_bounded_in_bytes(comfy, comfy_env):
    comfy_path, python = comfy_env
    files = [comfy.loras / LCM_SD15, comfy.loras / STYLE_SD15, comfy.loras / "formats" / "lcm-comfy.safetensors"]
    sizes = [tensor_bytes(p) for p in files]
    # a bound that holds the first two but not all three
    bound = sizes[0] + sizes[1] + sizes[2] // 2
    script = H.SCRIPTS / "adapter_cache_check.py"
    cmd = [str(python), str(script), "--comfyui", str(comfy_path), "--repo", str(H.REPO), "--bound", str(bound),
           *map(str, files)]
    proc = subprocess.run(cmd, cwd=str(comfy_path), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, LCM_LORA_ADAPTER_CACHE_MB="1.5"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["default_bytes"] == 400_000_000  # one SDXL LCM-LoRA (393.5 MB of fp16 tensors)
    assert facts["env_bytes"] == 1_500_000  # LCM_LORA_ADAPTER_CACHE_MB=1.5
    # "inf" means no bound (it raised OverflowError at import: the whole pack failed to load); bad values: the default
    assert facts["env_values"] == {"inf": "maxsize", "1e400": "maxsize", "nan": 400_000_000, "abc": 400_000_000,
                                   "-1": 400_000_000, "0": 0}
    assert facts["nbytes"] == sizes
    names = [str(p.resolve()) for p in files]
    assert facts["after_two"] == names[:2]  # both fit
    assert facts["after_three"] == names[1:]  # the least recently used one went out
    assert facts["bytes_after_three"] == sizes[1] + sizes[2] <= bound
    assert facts["after_touch"] == [names[2], names[1]]  # a cache hit makes an adapter most recent
    assert facts["tiny_bound"] == [names[0]]  # one adapter over the bound is still kept (as LoraLoader)
    assert facts["zero_bound"] == []  # 0 disables the cache
    assert facts["hit_is_same_object"] is True
