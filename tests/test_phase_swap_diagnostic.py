"""``benchmarks/demo_quality/phase_swap.py`` (teacher and student swapped phase by phase) against closed forms.

With the exact ε of a point mass at x0 (``PointMassUnet``), every DDIM jump follows the probability-flow ODE
exactly: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε₀, with ε₀ fixed by the start x_999 = noise. A CFG-g teacher is the exact ε of the point
x0_u + g·(x0_c − x0_u). So each all-teacher or all-student variant ends at timestep 0 on a known latent, and the
student's variant equals the project's own phased sampler (TCD at γ 0 on the phase edges).
"""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from lcm_lora.demo.student_sampling import sample_tcd_student
from lcm_lora.lcm_core.phased_timesteps import phased_timesteps
from tests.test_demo_samplers import ACS, PointMassUnet, _emb

ROOT = Path(__file__).resolve().parents[1]
EDGES = phased_timesteps(4, 4, "pcm") + [0]


def _script(name: str):
    """A script of ``benchmarks/demo_quality`` loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/demo_quality/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _phase_swap():
    return _script("phase_swap")


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_c, x_u = (torch.rand(3, 1, 4, 4, generator=g) * 2 - 1 for _ in range(2))
    noise = torch.randn(3, 1, 4, 4, generator=g)
    return x_c, x_u, noise


def _at_t0(x0, noise):
    """The ODE's latent at timestep 0 through x_999 = noise."""
    eps0 = (noise - ACS[999].sqrt() * x0) / (1 - ACS[999]).sqrt()
    return ACS[0].sqrt() * x0 + (1 - ACS[0]).sqrt() * eps0


@pytest.mark.parametrize("variant, steps_per_phase", [("tttt", 5), ("dddd", 1)])
@pytest.mark.parametrize("interval, guided", [((0, 999), True), ((1000, 1000), False)])
def test_teacher_variant_follows_the_guided_ode(variant, steps_per_phase, interval, guided):
    x_c, x_u, noise = _setup()
    g = 2.0
    res = _phase_swap().sample_swapped(variant, PointMassUnet(), PointMassUnet(), _emb(x_c), _emb(x_u), noise,
                                       ACS.double(), EDGES, g, interval, substeps=5)
    target = x_u + g * (x_c - x_u) if guided else x_c
    torch.testing.assert_close(res.images, _at_t0(target, noise), atol=1e-5, rtol=0)
    assert res.nfe == 4 * steps_per_phase * (2 if guided else 1)


def test_student_variant_is_the_phased_sampler():
    x_c, x_u, noise = _setup(1)
    student = PointMassUnet()
    # a student that is not the teacher: its point is shifted, so a swapped phase would show
    res = _phase_swap().sample_swapped("ssss", PointMassUnet(), student, _emb(x_c + 0.5), _emb(x_u), noise,
                                       ACS.double(), EDGES, 2.0, (0, 999), substeps=5)
    ref = sample_tcd_student(student, _emb(x_c + 0.5), noise, 4, gamma=0.0, timesteps=EDGES[:-1])
    torch.testing.assert_close(res.images, ref.images, atol=1e-5, rtol=0)
    assert res.nfe == 4


def test_a_swapped_phase_moves_the_sample():
    """Teacher on the first phase, student after: between the all-student and the all-teacher endings."""
    x_c, x_u, noise = _setup(2)
    swap = _phase_swap().sample_swapped
    args = (_emb(x_c), _emb(x_u), noise, ACS.double(), EDGES, 2.0, (0, 999))
    out = {v: swap(v, PointMassUnet(), PointMassUnet(), *args, substeps=5).images for v in ("ssss", "tsss", "tttt")}
    assert not torch.allclose(out["tsss"], out["ssss"], atol=1e-3)
    assert not torch.allclose(out["tsss"], out["tttt"], atol=1e-3)


def _phase_regression():
    return _script("phase_regression")


def _dmd_finetune():
    return _script("dmd_finetune")


@pytest.mark.parametrize("t, end", [(999, 739), (739, 499), (519, 499), (239, 0), (19, 0)])
def test_regression_target_is_the_ode_at_the_phase_edge(t, end):
    """phase_regression.py's target: the guided teacher's DDIM solve from grid timestep t to the phase edge below."""
    module = _phase_regression()
    assert module.phase_end(t) == end
    x_c, x_u, noise = _setup(3)
    g = 2.0
    point = x_u + g * (x_c - x_u)
    x_t = ACS[t].sqrt() * point + (1 - ACS[t]).sqrt() * noise
    out = module.teacher_solve(PointMassUnet(), x_t, t, end, _emb(x_c), _emb(x_u), ACS.double(), g, (0, 999))
    torch.testing.assert_close(out, ACS[end].sqrt() * point + (1 - ACS[end]).sqrt() * noise, atol=1e-5, rtol=0)


def test_dmd_real_score_is_cfg_inside_the_interval_only():
    """dmd_finetune.py's ε_real: the teacher's CFG-g ε at timesteps inside the interval, the conditional ε outside."""
    module = _dmd_finetune()
    from lcm_lora.lcm_core.denoisers import unet_eps_fn

    x_c, x_u, noise = _setup(4)
    t = torch.tensor([100, 300, 900])
    got = module.guided_eps(PointMassUnet(), noise, t, _emb(x_c), _emb(x_u), 2.5, (200, 700))
    guided = unet_eps_fn(PointMassUnet(), _emb(x_c), negative_encoder_hidden_states=_emb(x_u), guidance_scale=2.5)
    plain = unet_eps_fn(PointMassUnet(), _emb(x_c))
    want = torch.where((t == 300).view(-1, 1, 1, 1), guided(noise, t), plain(noise, t))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_dmd_gan_head_reads_the_fake_unets_bottleneck():
    """DMD2's realism logit = the head on the mid-block output of a *full* forward of the fake UNet (the helper stops
    the forward after the mid block; the result must be the same), one logit per image."""
    from diffusers import UNet2DConditionModel

    from lcm_lora.demo.teacher_training import teacher_unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**teacher_unet_config()).eval()
    module = _dmd_finetune()
    head = module.bottleneck_head(unet.config.block_out_channels[-1], unet.config.norm_num_groups)
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([10, 500, 990])
    cond = torch.randn(3, 4, unet.config.cross_attention_dim)
    seen = []
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        unet(x, t, cond)
        want = head(seen[0]).flatten(1).mean(1)
        got = module.realism(unet, head, x, t, cond)
    handle.remove()
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_dmd_gan_real_images_are_the_teachers_training_split():
    """The GAN's real images are the demo's ``train`` split (what the teacher learnt from), never the reference
    images the FD is measured against."""
    from types import SimpleNamespace

    from lcm_lora.demo.dataset import load_digit_images, split_indices

    images, labels = load_digit_images(16)
    split = split_indices(labels, seed=0)
    x, y = _dmd_finetune().real_training_images(SimpleNamespace(cfg=SimpleNamespace(resolution=16, split_seed=0)))
    assert len(x) == len(split.train) and not set(split.train) & set(split.reference)
    torch.testing.assert_close(x, images[split.train])
    assert torch.equal(y, labels[split.train])


def test_augmentation_teachers_share_one_lora():
    """phase_regression.py's teacher augmentation: the second teacher's LoRA layers hold the *same* parameter
    objects as the student's, so a step on either model moves one adapter, and the second model's LoRA output
    (its forward with minus without the adapter) equals the one its own copy of those weights would give."""
    from diffusers import UNet2DConditionModel

    from lcm_lora.demo.teacher_training import teacher_unet_config
    from lcm_lora.training.student import AdapterSwitch, add_lora

    module = _phase_regression()
    torch.manual_seed(0)
    base, other = (UNet2DConditionModel(**teacher_unet_config()).eval() for _ in range(2))
    named = add_lora(base, 4, 4, 0.0, None)
    for _, p in named:  # peft starts lora_B at zero; give the adapter an effect
        torch.nn.init.normal_(p, std=0.05)
    ref = copy.deepcopy(other)
    shared = module.with_shared_lora(other, named)
    own = {n: p for n, p in shared.named_parameters() if "lora_" in n}
    assert set(own) == {n for n, _ in named} and all(own[n] is p for n, p in named)
    x, t, cond = torch.randn(2, 1, 16, 16), torch.tensor([100, 700]), torch.randn(2, 4, 32)
    loss = shared(x, t, cond).sample.square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in named)
    ref_named = add_lora(ref, 4, 4, 0.0, None)
    with torch.no_grad():
        for (_, q), (_, p) in zip(ref_named, named):
            q.copy_(p)
        switch = AdapterSwitch(shared)
        with switch.disabled():
            plain = shared(x, t, cond).sample
        torch.testing.assert_close(shared(x, t, cond).sample, ref(x, t, cond).sample, atol=1e-6, rtol=0)
        assert (shared(x, t, cond).sample - plain).abs().max() > 1e-4
