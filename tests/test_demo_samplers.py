"""The demo's samplers against a closed form: an exact ε model of a point-mass data distribution.

For data concentrated at x0, the exact ε prediction is ε(x_t, t) = (x_t − √ᾱ_t·x0)/√(1−ᾱ_t); every
deterministic sampler that integrates the probability-flow ODE then lands exactly on x0, at any step
count. With CFG between two such models (x0_c, x0_u) the guided ε is the exact ε of the point
x0_u + g·(x0_c − x0_u), so a correct CFG + sampler loop returns that point.
"""
import pytest
import torch

from lcm_lora.demo.student_sampling import sample_lcm_student
from lcm_lora.demo.teacher_samplers import SAMPLERS, make_scheduler, sample_teacher


def sd_noise_scheduler():
    """SD 1.5's scheduler config (scheduler/scheduler_config.json)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, steps_offset=1)


ACS = sd_noise_scheduler().alphas_cumprod


class PointMassUnet(torch.nn.Module):
    """Fake UNet: the exact ε of a point mass whose location is the conditioning's mean vector."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, sample, t, encoder_hidden_states, return_dict=False, **_):
        self.calls += 1
        x0 = encoder_hidden_states[:, 0, : sample[0].numel()].reshape(sample.shape)
        t = torch.as_tensor(t).reshape(-1)
        # Euler passes float timesteps; interpolate ᾱ linearly like a continuous-time model would not:
        # every scheduler here evaluates at integer timesteps (trailing spacing), so index directly.
        a = ACS[t.round().long()].reshape(-1, 1, 1, 1)
        return ((sample - a.sqrt() * x0) / (1 - a).sqrt(),)


def _emb(points):
    n = points.shape[0]
    e = torch.zeros(n, 2, points[0].numel())
    e[:, 0] = points.reshape(n, -1)
    return e


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])  # DDIM "trailing" ends at t=0, not x0, when 1000 % steps leaves a gap (e.g. 7)
def test_teacher_samplers_land_on_the_point_mass(sampler, steps):
    g = torch.Generator().manual_seed(steps)
    x_c = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    x_u = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g)
    unet = PointMassUnet()
    cfg = dict(sd_noise_scheduler().config)
    res = sample_teacher(unet, _emb(x_c), _emb(x_u), noise, sampler, steps, cfg, guidance_scale=3.0)
    expected = x_u + 3.0 * (x_c - x_u)
    torch.testing.assert_close(res.images, expected, atol=2e-3, rtol=1e-3)
    assert res.nfe == 2 * steps  # CFG: two evaluations per step (one batched call)
    assert unet.calls == steps
    no_cfg = sample_teacher(PointMassUnet(), _emb(x_c), None, noise, sampler, steps, cfg, guidance_scale=1.0)
    torch.testing.assert_close(no_cfg.images, x_c, atol=2e-3, rtol=1e-3)
    assert no_cfg.nfe == steps


def test_trailing_spacing_starts_at_the_last_timestep():
    cfg = dict(sd_noise_scheduler().config)
    for name in SAMPLERS:
        s = make_scheduler(name, cfg)
        s.set_timesteps(1)
        assert int(s.timesteps[0]) == 999, name
    with pytest.raises(ValueError):
        make_scheduler("heun", cfg)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lcm_student_sampler_lands_on_the_point_mass(steps):
    g = torch.Generator().manual_seed(steps)
    x_c = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 1, 4, 4, generator=g)
    res = sample_lcm_student(PointMassUnet(), _emb(x_c), noise, steps, seed=0)
    # boundary condition c_skip(t) <= 4e-8 at the LCM timesteps used here, so f(x, t) = x0
    torch.testing.assert_close(res.images, x_c, atol=1e-4, rtol=1e-4)
    assert res.nfe == steps


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5])
def test_tcd_student_sampler_matches_diffusers_tcd_scheduler(steps, gamma):
    """The demo's TCD sampling (lcm_core.sample_tcd on tcd_timesteps, no boundary) against diffusers'
    TCDScheduler driven by the same ε model and the same noise generator."""
    from diffusers import TCDScheduler

    from lcm_lora.demo.student_sampling import sample_tcd_student

    g = torch.Generator().manual_seed(steps)
    x_c = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 1, 4, 4, generator=g)
    res = sample_tcd_student(PointMassUnet(), _emb(x_c), noise, steps, gamma=gamma, seed=7)
    assert res.nfe == steps

    sched = TCDScheduler.from_config(dict(sd_noise_scheduler().config), timestep_spacing="leading")
    sched.set_timesteps(steps)
    unet, gen = PointMassUnet(), torch.Generator().manual_seed(7)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = unet(x, t.expand(2), _emb(x_c))[0]
        x = sched.step(eps, t, x, eta=gamma, generator=gen).prev_sample
    torch.testing.assert_close(res.images, x, atol=1e-5, rtol=1e-5)
    # a point mass: TCD lands on x0 up to diffusers' final σ(0) ≈ 0.03 re-noising
    torch.testing.assert_close(res.images, x_c, atol=0.15, rtol=0)


def _cfg_setup(which: str, seed: int):
    """The student sampler for ``which`` and two point masses (conditional, negative), noise and the sampler's
    tolerance: LCM lands exactly on the point, TCD up to diffusers' final re-noising."""
    from lcm_lora.demo.student_sampling import sample_lcm_student, sample_tcd_student

    g = torch.Generator().manual_seed(seed)
    x_c = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    x_u = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 1, 4, 4, generator=g)
    if which == "lcm":
        return sample_lcm_student, x_c, x_u, noise, dict(atol=1e-4, rtol=1e-4)
    return sample_tcd_student, x_c, x_u, noise, dict(atol=0.15, rtol=0)


@pytest.mark.parametrize("which", ["lcm", "tcd"])
def test_cfg_on_the_first_steps_only(which):
    """cfg_steps = k: real CFG (negative prompt) on the first k steps, plain steps after; steps + k evaluations."""
    fn, x_c, x_u, noise, tol = _cfg_setup(which, 1)
    full = fn(PointMassUnet(), _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u))
    torch.testing.assert_close(full.images, x_u + 2.0 * (x_c - x_u), **tol)
    assert full.nfe == 8
    unet = PointMassUnet()
    first = fn(unet, _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_steps=2)
    assert first.nfe == 6 and unet.calls == 4  # the guided steps are one batched call of 2B
    torch.testing.assert_close(first.images, x_c, **tol)  # the last (plain) step decides the point mass
    off = fn(PointMassUnet(), _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_steps=0)
    plain = fn(PointMassUnet(), _emb(x_c), noise, 4)
    assert off.nfe == 4
    torch.testing.assert_close(off.images, plain.images)


@pytest.mark.parametrize("which", ["lcm", "tcd"])
def test_cfg_interval_guides_the_steps_whose_timestep_is_inside(which):
    """cfg_interval = (lo, hi): real CFG on the steps at timesteps in [lo, hi] only (4 steps: LCM 999/759/499/259,
    TCD 999/759/499/259 on its 50-grid); (700, 999) is cfg_steps = 2, (0, 600) guides the last two steps."""
    fn, x_c, x_u, noise, tol = _cfg_setup(which, 2)
    first = fn(PointMassUnet(), _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_steps=2)
    early = fn(PointMassUnet(), _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_interval=(700, 999))
    assert early.nfe == 6
    torch.testing.assert_close(early.images, first.images, rtol=0, atol=0)
    unet = PointMassUnet()
    late = fn(unet, _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_interval=(0, 600))
    assert late.nfe == 6 and unet.calls == 4
    torch.testing.assert_close(late.images, x_u + 2.0 * (x_c - x_u), **tol)  # the last (guided) step decides
    every = fn(PointMassUnet(), _emb(x_c), noise, 4, guidance_scale=2.0, uncond=_emb(x_u), cfg_interval=(0, 999))
    assert every.nfe == 8


def test_sampler_noise_stream_is_independent_of_the_plan_noise():
    """A sampler re-noising from a generator seeded like the plan would re-inject the initial noise
    (the bug behind TCD's γ 0.3 dip, demo/README.md); sampler_seeds.sampler_seed keeps the streams apart."""
    from lcm_lora.demo.evaluate import SamplePlan
    from lcm_lora.demo.sampler_seeds import sampler_seed
    from lcm_lora.lcm_core.sampling import default_noise_sampler

    plan = SamplePlan.make(50, 16, seed=3)
    collided = default_noise_sampler(plan.noise, seed=3)(None, None)
    assert torch.equal(collided, plan.noise)  # the collision this guards against
    z = default_noise_sampler(plan.noise, seed=sampler_seed(3))(None, None)
    corr = torch.corrcoef(torch.stack([z.flatten(), plan.noise.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.05


@pytest.mark.parametrize("which", ["teacher", "lcm", "tcd"])
def test_cfg_with_equal_prompts_is_the_plain_run(which, tmp_path):
    """The negative-prompt study draws its "without a negative prompt" samples (negative = positive = the empty
    prompt) as the plain run: ε(neg) + g·(ε(pos) − ε(neg)) with ε(pos) = ε(neg) is ε, up to float rounding. Checked on a real
    (tiny, random) UNet2DConditionModel through the demo's own sampling functions, at one torch thread as
    the demo's processes run."""
    from lcm_lora.demo.evaluate import load_teacher
    from lcm_lora.demo.student_sampling import sample_tcd_student
    from lcm_lora.training.tiny_models import build_tiny_teacher

    teacher = load_teacher(build_tiny_teacher(tmp_path / "t", image_channels=1, image_size=16, with_vae=False))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(12, 1, 16, 16, generator=g)
        _, empty = teacher.embed(torch.zeros(12, dtype=torch.long))
        if which == "teacher":
            sc = teacher.scheduler_config
            guided = sample_teacher(teacher.unet, empty, empty, noise, "ddim", 4, sc, 2.0)
            plain = sample_teacher(teacher.unet, empty, None, noise, "ddim", 4, sc, 2.0)
            assert guided.nfe == 8 and plain.nfe == 4
        else:
            fn = sample_lcm_student if which == "lcm" else sample_tcd_student
            guided = fn(teacher.unet, empty, noise, 4, seed=3, guidance_scale=3.0, uncond=empty, cfg_steps=2)
            plain = fn(teacher.unet, empty, noise, 4, seed=3)
            assert guided.nfe == 6 and plain.nfe == 4
    finally:
        torch.set_num_threads(before)
    assert plain.images.abs().max() > 0
    # float rounding only: the CFG batch is twice as large (measured here ≤ 1e-5; bit-identical on the digit
    # teacher at the demo's batch sizes)
    torch.testing.assert_close(guided.images, plain.images, rtol=1e-4, atol=1e-4)


class _RecordingUnet(PointMassUnet):
    """PointMassUnet that records the timesteps it is evaluated at."""

    def __init__(self):
        super().__init__()
        self.timesteps = []

    def forward(self, sample, t, encoder_hidden_states, return_dict=False, **kw):
        self.timesteps.append(int(torch.as_tensor(t).reshape(-1)[0].round()))
        return super().forward(sample, t, encoder_hidden_states, return_dict, **kw)


@pytest.mark.parametrize("phases", [4, 2])
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16])
def test_phased_student_samples_on_the_adapters_phase_edges(steps, phases):
    """The demo's PCM sampling reads the phases from the adapter's recipe metadata and steps on
    lcm_core.phased_timesteps' edges with the TCD sampler at γ 0, i.e. diffusers' TCDScheduler (eta 0)
    on those custom timesteps."""
    from diffusers import TCDScheduler

    from lcm_lora.lcm_core.lora import LoraAdapter
    from lcm_lora.lcm_core.phased_timesteps import pcm_phase_edges, phased_timesteps
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective
    from lcm_lora.demo.student_sampling import phased_recipe, sample_phased_student

    adapter = LoraAdapter(modules={}, metadata=recipe_for_objective("pcm", phases=phases).to_metadata())
    recipe = phased_recipe(adapter)
    assert (recipe.objective, recipe.phases, recipe.gamma) == ("pcm", phases, 0.0)
    g = torch.Generator().manual_seed(steps)
    x_c = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 1, 4, 4, generator=g)
    unet = _RecordingUnet()
    res = sample_phased_student(unet, _emb(x_c), noise, steps, recipe=recipe, seed=7)
    expected = phased_timesteps(steps, phases, "pcm")
    assert res.nfe == steps and unet.timesteps == expected
    if steps == phases:  # edge to edge: T − 1, then every phase edge above 0
        assert expected == [999] + sorted(pcm_phase_edges(phases)[1:], reverse=True)

    sched = TCDScheduler.from_config(dict(sd_noise_scheduler().config))
    sched.set_timesteps(timesteps=expected)
    ref, x = PointMassUnet(), noise * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(ref(x, t.expand(2), _emb(x_c))[0], t, x, eta=0.0).prev_sample
    torch.testing.assert_close(res.images, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("steps", [2, 4])
def test_normal_cfg_phased_student_is_guided_at_its_recipes_cfg(steps):
    """A normal-CFG phased adapter (``lcd.solver_guidance=false``: recipe cfg 2) is sampled with real CFG on
    every step, ε_u + g·(ε_c − ε_u) (2 evaluations per step): diffusers' TCDScheduler (eta 0) on the phase
    edges fed that combination. Without ``uncond`` it is an error, not a silently unguided run."""
    from dataclasses import replace

    from diffusers import TCDScheduler

    from lcm_lora.lcm_core.lora import LoraAdapter
    from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective
    from lcm_lora.demo.student_sampling import phased_recipe, sample_phased_student

    meta = replace(recipe_for_objective("pcm", phases=4), cfg=2.0, w_range=None).to_metadata()
    recipe = phased_recipe(LoraAdapter(modules={}, metadata=meta))
    assert recipe.cfg == 2.0
    g = torch.Generator().manual_seed(steps)
    x_c, x_u = (torch.rand(2, 1, 4, 4, generator=g) * 2 - 1 for _ in range(2))
    noise = torch.randn(2, 1, 4, 4, generator=g)
    res = sample_phased_student(PointMassUnet(), _emb(x_c), noise, steps, recipe=recipe, seed=7, uncond=_emb(x_u))
    assert res.nfe == 2 * steps

    sched = TCDScheduler.from_config(dict(sd_noise_scheduler().config))
    sched.set_timesteps(timesteps=phased_timesteps(steps, 4, "pcm"))
    ref, x = PointMassUnet(), noise * sched.init_noise_sigma
    for t in sched.timesteps:
        e_c, e_u = ref(x, t.expand(2), _emb(x_c))[0], ref(x, t.expand(2), _emb(x_u))[0]
        x = sched.step(e_u + 2.0 * (e_c - e_u), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(res.images, x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="uncond"):
        sample_phased_student(PointMassUnet(), _emb(x_c), noise, steps, recipe=recipe, seed=7)


def test_phased_student_needs_a_phased_recipe():
    from lcm_lora.lcm_core.errors import LcmLoraError
    from lcm_lora.lcm_core.lora import LoraAdapter
    from lcm_lora.lcm_core.sampling_recipe import recipe_for_objective
    from lcm_lora.demo.student_sampling import phased_recipe

    for md in ({}, recipe_for_objective("tcd").to_metadata()):
        with pytest.raises(LcmLoraError, match="PCM adapter: carries no phased sampling recipe"):
            phased_recipe(LoraAdapter(modules={}, metadata=md))
