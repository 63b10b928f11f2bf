"""How an adapter wants to be sampled: the objective it was distilled with and the
recommended sampler, steps, γ and cfg, stored in the safetensors ``__metadata__``.

Keys (all strings, written by ``training/export.py``, read by the nodes and ``inspect``):

* ``lcm_lora.objective``: ``lcm`` (consistency to x₀, Luo et al. 2023, Alg. 1), ``tcd``
  (trajectory consistency to an intermediate s, Zheng et al. 2024, arXiv 2402.19159), ``pcm``
  (phased consistency, Wang et al. 2024, arXiv 2405.18407) or ``tscd`` (Hyper-SD's segmented
  consistency, Ren et al. 2024, arXiv 2404.13686);
* ``lcm_lora.phases``: pcm / tscd only — the number of phases (segments) of the last training
  stage; the sampler steps from edge to edge (``lcm_core.phased_timesteps``);
* ``lcm_lora.phase_starts``: pcm only, when the phases are not PCM's even split (``lcd.phase_starts``) —
  ``"0,15,30,41"``, the solver indices where they start; the sampler steps on those edges;
* ``lcm_lora.w_range``: ``"w_min,w_max"`` (the guidance range distilled in, LCM form);
* ``lcm_lora.recommended_sampler``: ``lcm`` or ``tcd`` (pcm / tscd: ``tcd`` at γ 0 — the
  deterministic edge-to-edge DDIM jump of their map — on the phased timesteps);
* ``lcm_lora.recommended_steps``: an integer;
* ``lcm_lora.recommended_gamma``: TCD's γ (stochasticity), only for ``tcd``;
* ``lcm_lora.recommended_cfg``: the cfg to sample with (1.0 when ω was distilled in; > 1 for a "normal
  CFG" adapter, ``lcd.solver_guidance: false`` — sampled with real CFG, ``lcd.normal_cfg``);
* ``lcm_lora.model_sampling``: ``lcm`` (ComfyUI ModelSamplingDiscrete ``lcm``: consistency
  boundary conditions c_skip/c_out) or ``eps`` (plain ε-prediction; the TCD / PCM / TSCD map has
  no c_skip/c_out, so f(x, t, t) = x by construction).

Adapters without these keys (the released LCM-LoRAs, TCD-SDXL-LoRA, Hyper-SD) get ``None``
from :func:`read_recipe`; callers keep their old behaviour (LCM) and let the user choose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import ConfigError
from .phased_timesteps import check_phase_starts, phased_timesteps

OBJECTIVES = ("lcm", "tcd", "pcm", "tscd")
PHASED = ("pcm", "tscd")  # objectives whose map ends at a phase edge (``lcm_core.phased_timesteps``)
SAMPLERS = ("lcm", "tcd")
DEFAULT_PHASES = 4
# the most phases a phased adapter can be sampled with: PCM's split the 50-point DDIM grid, TSCD's the 1000 timesteps
MAX_PHASES = {"pcm": 50, "tscd": 1000}
MODEL_SAMPLINGS = ("lcm", "eps")

KEY_OBJECTIVE = "lcm_lora.objective"
KEY_W_RANGE = "lcm_lora.w_range"
KEY_SAMPLER = "lcm_lora.recommended_sampler"
KEY_STEPS = "lcm_lora.recommended_steps"
KEY_GAMMA = "lcm_lora.recommended_gamma"
KEY_CFG = "lcm_lora.recommended_cfg"
KEY_MODEL_SAMPLING = "lcm_lora.model_sampling"
KEY_PHASES = "lcm_lora.phases"
KEY_PHASE_STARTS = "lcm_lora.phase_starts"


@dataclass(frozen=True)
class SamplingRecipe:
    objective: str = "lcm"
    sampler: str = "lcm"
    steps: int = 4
    gamma: float | None = None
    cfg: float = 1.0
    model_sampling: str = "lcm"
    w_range: tuple[float, float] | None = None
    phases: int | None = None  # pcm / tscd: phases of the map (sample edge to edge)
    phase_starts: tuple[int, ...] | None = None  # pcm: solver indices of the phase starts; None = the even split

    def to_metadata(self) -> dict[str, str]:
        md = {KEY_OBJECTIVE: self.objective, KEY_SAMPLER: self.sampler, KEY_STEPS: str(int(self.steps)),
              KEY_CFG: repr(float(self.cfg)), KEY_MODEL_SAMPLING: self.model_sampling}
        if self.gamma is not None:
            md[KEY_GAMMA] = repr(float(self.gamma))
        if self.w_range is not None:
            md[KEY_W_RANGE] = f"{self.w_range[0]},{self.w_range[1]}"
        if self.phases is not None:
            md[KEY_PHASES] = str(int(self.phases))
        if self.phase_starts:
            md[KEY_PHASE_STARTS] = ",".join(str(int(i)) for i in self.phase_starts)
        return md


def recipe_for_objective(objective: str, w_range: tuple[float, float] | None = None,
                         steps: int | None = None, gamma: float | None = None,
                         phases: int | None = None, phase_starts: tuple[int, ...] | None = None) -> SamplingRecipe:
    """Defaults per objective: LCM → lcm sampler + LCM model sampling, 4 steps; TCD → tcd sampler
    (γ 0.3, the TCD paper's default) + plain ε model sampling, 4 steps; PCM / TSCD → tcd sampler
    at γ 0 (deterministic edge-to-edge jumps) + plain ε model sampling, steps = phases (default 4)."""
    if objective == "lcm":
        return SamplingRecipe("lcm", "lcm", 4 if steps is None else steps, None, 1.0, "lcm", w_range)
    if objective == "tcd":
        return SamplingRecipe("tcd", "tcd", 4 if steps is None else steps, 0.3 if gamma is None else gamma, 1.0,
                              "eps", w_range)
    if objective in PHASED:
        ph = DEFAULT_PHASES if phases is None else int(phases)
        return SamplingRecipe(objective, "tcd", ph if steps is None else steps, 0.0 if gamma is None else gamma, 1.0,
                              "eps", w_range, ph, tuple(phase_starts) if phase_starts and objective == "pcm" else None)
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _metadata_value(metadata: Mapping[str, str], key: str, parse, default, usable):
    """``parse(metadata[key])`` when it parses and is ``usable``, else ``default`` (key by key: one unreadable
    value does not drop the others)."""
    if key not in metadata:
        return default
    try:
        value = parse(metadata[key])
    except (TypeError, ValueError):
        return default
    return value if usable(value) else default


def _w_range(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(","))
    return lo, hi


def read_recipe(metadata: Mapping[str, str] | None) -> SamplingRecipe | None:
    """The recipe stored in ``metadata``, or ``None`` when the adapter carries none. Metadata is advisory, never a
    reason to refuse an adapter: each unreadable or unusable value falls back to the objective's default (a step
    or phase count outside [1, 1000] (PCM phases: [1, 50]), a cfg that is not finite and ≥ 0, a γ outside [0, 1] — the samplers refuse
    any other —, an unknown sampler or model sampling, phase starts that are not one per phase). A phased
    adapter's sampler is TCD's whatever the metadata names: its map jumps between phase edges."""
    if not metadata or metadata.get(KEY_OBJECTIVE) not in OBJECTIVES:
        return None
    objective = metadata[KEY_OBJECTIVE]
    base = recipe_for_objective(objective)
    if objective in PHASED:
        phases = _metadata_value(metadata, KEY_PHASES, int, base.phases, lambda v: 1 <= v <= MAX_PHASES[objective])
        starts = None
        if objective == "pcm" and metadata.get(KEY_PHASE_STARTS):
            try:
                starts = check_phase_starts(metadata[KEY_PHASE_STARTS].split(","), phases)
            except ConfigError:
                pass
        base = recipe_for_objective(objective, phases=phases, phase_starts=starts)
    steps = _metadata_value(metadata, KEY_STEPS, int, base.steps, lambda v: 1 <= v <= 1000)
    cfg = _metadata_value(metadata, KEY_CFG, float, base.cfg, lambda v: math.isfinite(v) and v >= 0)
    gamma = _metadata_value(metadata, KEY_GAMMA, float, base.gamma, lambda v: math.isfinite(v) and 0 <= v <= 1)
    w_range = _metadata_value(metadata, KEY_W_RANGE, _w_range, None, lambda v: all(map(math.isfinite, v)))
    sampler = base.sampler if objective in PHASED else metadata.get(KEY_SAMPLER, base.sampler)
    sampler = sampler if sampler in SAMPLERS else base.sampler
    ms = metadata.get(KEY_MODEL_SAMPLING, base.model_sampling)
    ms = ms if ms in MODEL_SAMPLINGS else base.model_sampling
    return SamplingRecipe(objective, sampler, steps, gamma, cfg, ms, w_range, base.phases, base.phase_starts)


def merged_recipe(metadatas: Sequence[Mapping[str, str] | None], names: Sequence[str]
                  ) -> tuple[SamplingRecipe | None, str | None]:
    """The sampling recipe a merge of these adapters keeps: the first input's that records one (a style LoRA merged
    with a TCD / PCM adapter is sampled as that adapter), and a note when a later input records a different one."""
    recipes = [(name, read_recipe(md)) for name, md in zip(names, metadatas)]
    recorded = [(name, recipe) for name, recipe in recipes if recipe is not None]
    if not recorded:
        return None, None
    (kept_name, kept), others = recorded[0], [(n, r) for n, r in recorded[1:] if r != recorded[0][1]]
    if not others:
        return kept, None
    ignored = ", ".join(f"{n} ({r.objective})" for n, r in others)
    return kept, (f"the inputs record different sampling recipes: the merge keeps {kept_name}'s ({kept.objective}) "
                  f"and ignores {ignored}; choose one with the loader's sampling input if that is not the one")


def recipe_timesteps(recipe: SamplingRecipe | None, steps: int, denoise: float = 1.0) -> list[int] | None:
    """The phased timesteps a pcm / tscd recipe samples on (``lcm_core.phased_timesteps``);
    ``None`` for lcm / tcd recipes (their sampler's own schedule) and for no recipe."""
    if recipe is None or recipe.objective not in PHASED:
        return None
    return phased_timesteps(steps, recipe.phases or DEFAULT_PHASES, recipe.objective, denoise=denoise,
                            starts=recipe.phase_starts)
