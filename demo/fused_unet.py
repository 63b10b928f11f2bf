"""A copy of the teacher UNet with adapters fused in at given strengths: the demo's students, merges and styled
teachers (the paper's θ' = θ_pre + Σ λ_i·τ_i)."""
from __future__ import annotations

import copy

from ..lcm_core.fuse import fuse_into_module


def unet_with(teacher_unet, adapters_and_strengths):
    """A float32 copy of the teacher UNet with LoRA updates fused in (θ + Σ λ ΔW)."""
    unet = copy.deepcopy(teacher_unet)
    for adapter, strength in adapters_and_strengths:
        if strength:
            fuse_into_module(unet, adapter, float(strength), component="unet", strict=True)
    return unet.eval()
