"""ComfyUI's progress bar and Cancel in every sampling node of the pack (websocket + /interrupt).

* LCM Sampler (in SamplerCustom): the 2-step parity run reports progress 1/2, 2/2.
* LCM KSampler: an 8-step run reports progress n/8; Cancel (``/interrupt``, what the UI's
  button sends) after the first step stops it with ``execution_interrupted``.
* SamplerCustom + LCM Sampler: Cancel as soon as the sampler starts stops it too.
After a cancelled prompt the server runs the next one.
"""
from __future__ import annotations

import random

import pytest

import graphs as G
from conftest import LCM_SD15, SD15_CKPT, cheap_prompt

pytestmark = pytest.mark.comfyui

STEPS = 8


def test_lcm_sampler_reports_progress(probes):
    result, _ = probes.run("lora_ours")
    assert result.progress("sample") == [(1, 2), (2, 2)]


def lcm_ksampler_graph(seed: int) -> tuple[dict, str]:
    g = G.base(SD15_CKPT)
    g["lcm"] = G.lcm_loader(LCM_SD15)
    g["ks"] = {"class_type": "LCMKSampler", "inputs": {
        "model": ["lcm", 0], "seed": seed, "steps": STEPS, "cfg": 1.0, "mode": "lcm", "gamma": 0.3, "eta": 1.0,
        "denoise": 1.0, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}}
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": "cancel_ks"}}
    return g, "ks"


def sampler_custom_graph(seed: int) -> tuple[dict, str]:
    g = G.base(SD15_CKPT)
    g["lcm"] = G.lcm_loader(LCM_SD15)
    G.probe(g, ("lcm", 0), "cancel_custom", sampler="ours", steps=STEPS, seed=seed, mode="tcd")
    return g, "sample"


def run_and_cancel(comfy, graph, node, when: str):
    """Interrupt at the node's first progress message (``progress``) or when it starts (``executing``)."""
    sent = []

    def on_message(msg):
        if sent:
            return
        data = msg["data"]
        if (when == "progress" and msg["type"] == "progress" and data.get("node") == node) or (
                when == "executing" and msg["type"] == "executing" and data.get("node") == node):
            comfy.interrupt()
            sent.append(msg["type"])

    result = comfy.run(graph, on_message=on_message)
    assert sent, "the sampler never started"
    return result


def test_lcm_ksampler_progress_and_cancel(comfy):
    graph, node = lcm_ksampler_graph(random.randrange(1, 2**31))  # fresh seed: nothing cached
    result = run_and_cancel(comfy, graph, node, "progress")
    progress = result.progress(node)
    assert progress and progress[0] == (1, STEPS) and all(m == STEPS for _, m in progress)
    assert result.status == "interrupted", result.message()
    assert max(v for v, _ in progress) < STEPS
    assert result.history["status"]["status_str"] == "error"
    assert not result.outputs.get("save")
    assert comfy.run(cheap_prompt("after_cancel_ks")).status == "success"


def test_sampler_custom_with_lcm_sampler_cancel(comfy):
    graph, node = sampler_custom_graph(random.randrange(1, 2**31))
    result = run_and_cancel(comfy, graph, node, "executing")
    assert result.status == "interrupted", result.message()
    assert len(result.progress(node)) < STEPS
    assert not result.outputs.get("save")
    assert comfy.run(cheap_prompt("after_cancel_custom")).status == "success"
