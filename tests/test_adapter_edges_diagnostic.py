"""``benchmarks/demo_quality/adapter_edges.py``: a phased adapter is sampled on the edges it was distilled on.

Reference: the closed-form edges (PCM: edge = start·k − 1 on the 50-point grid, k 20; TSCD: diffusers' trailing
spacing of 4 segments), written out as numbers.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _adapter_edges():
    spec = importlib.util.spec_from_file_location("adapter_edges", ROOT / "benchmarks/demo_quality/adapter_edges.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.adapter_edges


@pytest.mark.parametrize("metadata,starts,want", [
    # the trainer's metadata wins: moved edges recorded (lcd.phase_starts [0, 15, 30, 41]: edge = start·20 − 1)
    ({"lcm_lora.objective": "pcm", "lcm_lora.phases": "4", "lcm_lora.phase_starts": "0,15,30,41"}, None,
     [999, 819, 599, 299]),
    ({"lcm_lora.objective": "pcm", "lcm_lora.phases": "4", "lcm_lora.phase_starts": "0,15,30,41"}, (0, 19, 34, 44),
     [999, 819, 599, 299]),
    # a PCM adapter that records no moved edges: PCM's even split, or --phase-starts (the flag's first version)
    ({"lcm_lora.objective": "pcm", "lcm_lora.phases": "4"}, None, [999, 739, 499, 239]),
    ({"lcm_lora.objective": "pcm", "lcm_lora.phases": "4"}, (0, 15, 30, 41), [999, 819, 599, 299]),
    ({}, None, [999, 739, 499, 239]),
    ({"lcm_lora.objective": "tcd"}, None, [999, 739, 499, 239]),  # not phased: the caller's PCM default
    # a TSCD adapter: Hyper-SD's 4 segments, diffusers' trailing spacing
    ({"lcm_lora.objective": "tscd", "lcm_lora.phases": "4"}, None, [999, 749, 499, 249]),
])
def test_adapters_are_sampled_on_the_edges_they_were_distilled_on(metadata, starts, want):
    assert _adapter_edges()(metadata, 4, starts) == want
