"""LCM Scheduler inside ComfyUI: its sigmas land exactly on diffusers' LCM timesteps.

The node is imported the way ComfyUI imports the pack and run in ComfyUI's python; the
sigmas are mapped back to timesteps by ComfyUI's own model sampling — the LCM one that
"patch sampling to LCM" / ModelSamplingDiscrete(lcm) installs, and the plain discrete one —
and compared with ``diffusers.LCMScheduler.set_timesteps`` (the reference).

``schedule: pcm / tscd`` (phased adapters: PCM, arXiv 2405.18407; Hyper-SD TSCD, arXiv 2404.13686)
gives ComfyUI's own table sigmas at ``lcm_core.phased_timesteps``; ``schedule: lcm`` (whatever
``phases``) is the old output bit for bit.
"""
from __future__ import annotations

import pytest

from conftest import PHASED_SIGMA_CASES
from conftest import SIGMA_CASES as CASES

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def node_sigmas(comfy_facts):
    return {tuple(r["case"]): r for r in comfy_facts["sigmas"]}


def diffusers_timesteps(steps, original, denoise):
    from diffusers import LCMScheduler

    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         original_inference_steps=original)
    sched.set_timesteps(steps, strength=denoise)
    return [int(t) for t in sched.timesteps]


@pytest.mark.parametrize("case", [c for c in CASES if c[2] > 0])
def test_sigmas_map_back_to_diffusers_timesteps(node_sigmas, case):
    r = node_sigmas[case]
    expected = diffusers_timesteps(*case)
    assert len(r["sigmas"]) == len(expected) + 1 and r["sigmas"][-1] == 0.0
    assert r["sigmas"][:-1] == sorted(r["sigmas"][:-1], reverse=True)
    assert [round(t) for t in r["lcm_timesteps"]] == expected
    assert r["eps_timesteps"] == pytest.approx(expected, abs=1e-3)
    # the sigmas are ComfyUI's own table entries for those timesteps
    assert r["sigmas"][:-1] == pytest.approx(r["eps_table"], rel=1e-6)


def test_denoise_zero_gives_no_steps(node_sigmas):
    assert node_sigmas[(4, 50, 0.0)]["sigmas"] == []


def phased_reference(steps, denoise, family, phases, starts=None):
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps

    return phased_timesteps(steps, phases, family, denoise=denoise,
                            starts=[int(v) for v in starts.split("/")] if starts else None)


@pytest.mark.parametrize("case", [c for c in PHASED_SIGMA_CASES if c[3] != "lcm" and c[2] > 0])
def test_phased_schedule_sigmas_are_comfyui_table_entries_at_the_phase_edges(node_sigmas, case):
    steps, _, denoise, family, phases, *starts = case
    r = node_sigmas[case]
    expected = phased_reference(steps, denoise, family, phases, *starts)
    assert len(r["sigmas"]) == len(expected) + 1 and r["sigmas"][-1] == 0.0
    assert r["eps_timesteps"] == pytest.approx(expected, abs=1e-3)  # ComfyUI's model sampling maps them back
    assert r["sigmas"][:-1] == pytest.approx(r["eps_table"], rel=1e-6)  # ComfyUI's own table entries


def test_phased_schedule_four_phases_are_the_papers_edges(node_sigmas):
    # PCM: phase edges 0 / 239 / 499 / 739 on the 50-step DDIM grid; TSCD: 4 segments of 250 timesteps
    assert [round(t) for t in node_sigmas[(4, 50, 1.0, "pcm", 4)]["eps_timesteps"]] == [999, 739, 499, 239]
    assert [round(t) for t in node_sigmas[(4, 50, 1.0, "tscd", 4)]["eps_timesteps"]] == [999, 749, 499, 249]
    assert [round(t) for t in node_sigmas[(1, 50, 1.0, "tscd", 4)]["eps_timesteps"]] == [999]
    assert node_sigmas[(4, 50, 0.0, "pcm", 4)]["sigmas"] == []


def test_phase_starts_move_the_pcm_edges(node_sigmas):
    # an adapter trained with lcd.phase_starts [0, 15, 30, 41]: edge = start·20 − 1 on the 50-step DDIM grid
    starts = "0/15/30/41"
    assert [round(t) for t in node_sigmas[(4, 50, 1.0, "pcm", 4, starts)]["eps_timesteps"]] == [999, 819, 599, 299]
    assert [round(t) for t in node_sigmas[(2, 50, 0.5, "pcm", 4, starts)]["eps_timesteps"]] == [599, 299]
    assert node_sigmas[(4, 50, 1.0, "lcm", 4, starts)]["sigmas"] == node_sigmas[(4, 50, 1.0)]["sigmas"]  # lcm ignores it


def test_lcm_schedule_is_the_old_output_bit_for_bit(node_sigmas):
    assert node_sigmas[(4, 50, 1.0, "lcm", 7)]["sigmas"] == node_sigmas[(4, 50, 1.0)]["sigmas"]
    assert node_sigmas[(6, 50, 0.5, "lcm", 2)]["sigmas"] == node_sigmas[(6, 50, 0.5)]["sigmas"]
