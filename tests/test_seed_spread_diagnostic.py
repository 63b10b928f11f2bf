"""``benchmarks/demo_quality/seed_spread.py`` (goal (a)'s models on other noise seeds) against references.

* The per-step-γ phased sampler is diffusers' ``TCDScheduler`` on the same phase edges with ``step(eta=γ_i)`` per
  step (its γ is called eta), the same ε and the same noise stream; with one γ for every step it is the demo's own
  ``sample_tcd_student`` bit for bit.
* Other seeds are the demo's own prompts and noise for that seed (``SamplePlan.make``).
* The pooled row and goal (a)'s verdict follow ``demo.claims.tcd_claims``' rule.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

from lcm_lora.demo.student_sampling import sample_tcd_student
from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
from tests.test_demo_samplers import PointMassUnet, _emb
from tests.test_samplers import SD_CONFIG  # SD's scheduler config, as the diffusers parity tests

diffusers = pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
EDGES = phased_timesteps(4, 4, "pcm")  # 999, 739, 499, 239


def _seed_spread():
    spec = importlib.util.spec_from_file_location("seed_spread", ROOT / "benchmarks/demo_quality/seed_spread.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ShiftedPointMass(PointMassUnet):
    """A point-mass ε with a smooth error, so the re-noising of each step changes the result."""

    def forward(self, sample, t, encoder_hidden_states, return_dict=False, **kw):
        eps = super().forward(sample, t, encoder_hidden_states, **kw)[0]
        return (0.9 * eps + 0.2 * torch.sin(3 * sample + torch.as_tensor(t).reshape(-1, 1, 1, 1).float() / 300),)


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    return _emb(torch.rand(3, 1, 4, 4, generator=g) * 2 - 1), torch.randn(3, 1, 4, 4, generator=g)


@pytest.mark.parametrize("timesteps,edges", [(None, EDGES),
                                             # moved edges (lcd.phase_starts [0, 15, 30, 41], the demo's PCM adapter)
                                             ([999, 819, 599, 299], [999, 819, 599, 299])])
@pytest.mark.parametrize("gammas", [[0.0, 0.3, 0.8, 0.0], [0.5, 0.0, 1.0, 0.2], [0.3, 0.3, 0.3, 0.3]])
def test_per_step_gamma_is_diffusers_tcd_with_eta_per_step(gammas, timesteps, edges):
    cond, noise = _case(1)
    unet = ShiftedPointMass()
    got = _seed_spread().sample_phased_per_step_gamma(unet, cond, noise, gammas, seed=7, timesteps=timesteps).images
    sched = diffusers.TCDScheduler(**SD_CONFIG)
    sched.set_timesteps(timesteps=edges)
    gen = torch.Generator().manual_seed(7)
    sample = noise
    for t, gamma in zip(sched.timesteps, gammas):
        eps = unet(sample, t.reshape(1).expand(len(sample)), cond)[0]
        sample = sched.step(eps, t, sample, eta=gamma, generator=gen).prev_sample
    torch.testing.assert_close(got, sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_one_gamma_for_every_step_is_the_demos_sampler(gamma):
    cond, noise = _case(2)
    unet = ShiftedPointMass()
    got = _seed_spread().sample_phased_per_step_gamma(unet, cond, noise, [gamma] * 4, seed=11).images
    want = sample_tcd_student(unet, cond, noise, 4, gamma=gamma, seed=11, timesteps=EDGES).images
    assert torch.equal(got, want)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_on_the_tcd_schedule_one_gamma_is_the_demos_tcd_sampler(gamma):
    """``timesteps=tcd_timesteps(4)`` (``tcd_merge_gammas.py``): the demo's TCD adapter sampler, bit for bit."""
    from lcm_lora.lcm_core.timesteps import tcd_timesteps

    cond, noise = _case(3)
    unet = ShiftedPointMass()
    got = _seed_spread().sample_phased_per_step_gamma(unet, cond, noise, [gamma] * 4, seed=5,
                                                      timesteps=tcd_timesteps(4)).images
    assert torch.equal(got, sample_tcd_student(unet, cond, noise, 4, gamma=gamma, seed=5).images)
    assert not torch.equal(got, sample_tcd_student(unet, cond, noise, 4, gamma=gamma, seed=5, timesteps=EDGES).images)


def test_parse_gammas():
    parse = _seed_spread().parse_gammas
    assert parse("0;0.3;0,0.3,0.8,0") == [[0.0] * 4, [0.3] * 4, [0.0, 0.3, 0.8, 0.0]]
    for bad in ("0,0.3", "1.5", "0,0,0,-0.1"):
        with pytest.raises(SystemExit, match="--gammas"):
            parse(bad)


def test_other_seed_is_the_demos_plan_for_that_seed():
    from types import SimpleNamespace

    from lcm_lora.demo.evaluate import SamplePlan
    from lcm_lora.demo.run import PRESETS

    class Teacher:
        def embed(self, labels):
            return labels.float()[:, None], -labels.float()[:, None]

    bench = SimpleNamespace(n=40, cfg=PRESETS["fast"], teacher=Teacher())
    _seed_spread().with_seed(bench, 3)
    want = SamplePlan.make(40, PRESETS["fast"].resolution, 3)
    assert bench.cfg.seed == 3 and torch.equal(bench.plan.labels, want.labels)
    assert torch.equal(bench.plan.noise, want.noise) and torch.equal(bench.cond[:, 0], want.labels.float())


def test_pooled_rows_and_goal_a():
    m = _seed_spread()
    rows = [{"fd": 18.0, "accuracy": 0.99, "n": 1000}, {"fd": 20.0, "accuracy": 1.0, "n": 3000}]
    assert m.pooled(rows) == {"fd": 19.0, "accuracy": 0.9975, "n": 4000}
    lcm, teacher = {"fd": 19.0, "accuracy": 0.99}, {"fd": 30.0, "accuracy": 1.0}
    assert m.goal_a({"fd": 19.0, "accuracy": 0.995}, lcm, teacher)
    assert not m.goal_a({"fd": 19.1, "accuracy": 1.0}, lcm, teacher)
    assert not m.goal_a({"fd": 10.0, "accuracy": 0.9949}, lcm, teacher)


def test_lcm_seedings_plan_reuses_the_initial_noise_independent_does_not():
    """--lcm-seeding: "plan" is earlier demo runs' LCM stream, whose first re-noise draw is the plan's initial noise
    ε₀; "independent" (the demo's now, diffusers' LCMScheduler, ComfyUI on a GPU) draws apart from it."""
    from lcm_lora.demo.evaluate import SamplePlan
    from lcm_lora.demo.sampler_seeds import plan_seed, sampler_seed
    from lcm_lora.lcm_core.sampling import default_noise_sampler

    m = _seed_spread()
    fns = m._lcm_seed_fns()
    assert fns == {"plan": plan_seed, "independent": sampler_seed}
    assert set(m.LCM_ROW) == set(fns) and m.LCM_SEEDINGS["both"] == ("plan", "independent")
    plan = SamplePlan.make(8, 16, 5)
    x = plan.noise.clone()
    first = {k: default_noise_sampler(x, seed=fn(5))(None, None) for k, fn in fns.items()}
    assert torch.equal(first["plan"], plan.noise)
    assert not torch.allclose(first["independent"], plan.noise)
