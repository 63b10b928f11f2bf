"""Seeds of the few-step samplers' re-noising streams (shared by ``run`` and ``negative_prompts``): every few-step
sampler of the demo (LCM, TCD, phased) re-noises from a stream independent of the plan's initial noise, as
diffusers' schedulers (one generator advancing past the initial latents) and ComfyUI on a GPU do."""
from __future__ import annotations

from ..lcm_core.sampling import INDEPENDENT_NOISE_SEED_OFFSET, independent_noise_seed

# The few-step samplers re-noise between steps from their own generator (``extra_args["seed"]``). Seeded
# with the sample plan's seed, that generator's first draw *is* the plan's initial noise (same shape, same
# torch CPU stream), so the first injected "fresh" noise equals the noise the sample started from: TCD then
# adds σ_s·ε̂ + σ_up·ε₀ with ε̂ ≈ ε₀ — more noise than σ_next, worst at mid γ (measured: TCD 4 steps γ 0.3
# FD 66.7 / pixel FD 15.9 vs 30.0 / 2.44 with an independent stream; demo/README.md). The offset
# (``lcm_core.sampling.independent_noise_seed``, shared with the nodes' TCD path on the CPU) keeps the
# streams apart.
SAMPLER_SEED_OFFSET = INDEPENDENT_NOISE_SEED_OFFSET


def sampler_seed(seed: int) -> int:
    """The seed of a few-step sampler's re-noising stream, independent of a plan seeded with ``seed``."""
    return independent_noise_seed(seed)


def plan_seed(seed: int) -> int:
    """The re-noising seed earlier runs gave the demo's LCM sampler: the plan's own, so its first re-noise *is*
    the initial noise ε₀. Not neutral (``benchmarks/demo_quality/seed_spread.py --lcm-seeding both``, 12 seeds ×
    1000 samples: LCM-LoRA 4 steps FD 20.1 / 20.6 vs 23.8 / 23.8 with an independent stream), and neither
    diffusers' ``LCMScheduler`` nor ComfyUI on a GPU samples that way, so every sampler of the demo now re-noises
    from :func:`sampler_seed`; this one stays for that diagnostic (BENCHMARKS.md)."""
    return int(seed)
