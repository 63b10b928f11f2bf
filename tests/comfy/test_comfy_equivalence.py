"""Our nodes against ComfyUI's own nodes, tensor for tensor (64×64 latents, SaveLatent).

* LCM-LoRA Loader (patch sampling) + LCM Sampler + LCM Scheduler sigmas  ==
  LoraLoader + ModelSamplingDiscrete(lcm) + built-in ``lcm`` sampler, same seed and sigmas
  (2 steps, so the re-noising between steps is covered).
* LCM Adapter Merge (concat, 0.8·style + 1.0·LCM)  ==  two chained LoraLoaders at 0.8 and 1.0,
  and so do the merge's ``fuse`` method and a stock LoraLoader followed by the LCM-LoRA Loader
  (the loader's patches stack with other loaders').

Each comparison also checks that the adapters change the result by far more than the
tolerance, so an adapter that silently did nothing could not pass.
"""
from __future__ import annotations

import pytest

import graphs as G

pytestmark = pytest.mark.comfyui


def test_lcm_loader_and_sampler_match_comfyui_builtin_lcm(probes):
    ours = probes.latent("lora_ours")
    reference = probes.latent("lora_builtin")
    assert ours.shape == reference.shape == (1, 4, 8, 8)
    # Same ops in the same order: ComfyUI's LCM model sampling, the same noise stream and
    # x_next = denoised + sigma_next * noise, so the results are bit-identical.
    assert G.rel_diff(ours, reference) == 0.0


def test_lora_changes_the_result(probes):
    # 1-step base vs the 2-step LoRA runs are different experiments anyway; compare the
    # 1-step merge (which contains the LCM adapter) with the 1-step base instead.
    assert G.rel_diff(probes.latent("merge"), probes.latent("base")) > 1e-3


def test_concat_merge_equals_chained_lora_loaders(probes):
    merged = probes.latent("merge")
    chained = probes.latent("chained")
    base = probes.latent("base")
    effect = G.rel_diff(chained, base)
    assert effect > 1e-3, "the adapters should visibly change the latent"
    # concat keeps the exact low-rank factors (λ·alpha/rank folded into up, float32):
    # only float32 rounding separates the two patch sums.
    assert G.rel_diff(merged, chained) < 1e-4 * max(effect, 1.0)


def test_merge_report_shows_zero_error_for_concat(probes):
    result, _ = probes.run("merge")
    ui = result.outputs["merge"]
    assert ui["lcm_merge"][0]["total_relative_error"] == 0.0
    assert "concat" in ui["text"][0] and "relative error 0" in ui["text"][0]


def test_lcm_loader_stacks_on_a_stock_lora_loader(probes):
    # LoraLoader(style) → LCM-LoRA Loader(lcm) registers the same patches, in the same order,
    # as LoraLoader(style) → LoraLoader(lcm) → ModelSamplingDiscrete(lcm).
    assert G.rel_diff(probes.latent("stacked"), probes.latent("chained")) == 0.0


def test_fuse_merge_equals_chained_lora_loaders(probes):
    assert G.rel_diff(probes.latent("fuse"), probes.latent("chained")) == 0.0
    result, _ = probes.run("fuse")
    assert "fuse" in result.outputs["merge"]["text"][0]
