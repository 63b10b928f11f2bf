"""LCM Scheduler inside ComfyUI: its sigmas land exactly on diffusers' LCM timesteps.

The node is imported the way ComfyUI imports the pack and run in ComfyUI's python; the
sigmas are mapped back to timesteps by ComfyUI's own model sampling — the LCM one that
"patch sampling to LCM" / ModelSamplingDiscrete(lcm) installs, and the plain discrete one —
and compared with ``diffusers.LCMScheduler.set_timesteps`` (the reference).
"""
from __future__ import annotations

import pytest

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
