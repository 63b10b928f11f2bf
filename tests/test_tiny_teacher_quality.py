"""``training.tiny_teacher_quality`` against closed forms.

* ``per_pixel_w2``: the 2-Wasserstein distance of 1-D Gaussians from their quantile functions
  (W2² = ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, numerically), pixel by pixel.
* ``guided_ddim``: with the exact ε of a point mass (conditional at x_c, unconditional at x_u) the guided ε is the
  exact ε of x* = x_u + (1 + ω)(x_c − x_u), and deterministic DDIM keeps ε₀ = (x_T − √ᾱ_T x*)/√(1 − ᾱ_T): it ends at
  √ᾱ₀ x* + √(1 − ᾱ₀) ε₀ (diffusers' last step goes to ᾱ₀ with ``set_alpha_to_one=False``).

(``fit_tiny_teacher`` is exercised by the slow ``test_train_tiny_sample_quality.py``.)
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from lcm_lora.training.teacher_common import sd_noise_scheduler
from lcm_lora.training.tiny_teacher_quality import guided_ddim, per_pixel_w2
from tests.test_demo_samplers import ACS, PointMassUnet, _emb


def _with_moments(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = (z - z.mean(0)) / z.std(0)  # exactly zero mean, unit (unbiased) std per pixel
    return mean + std * z


def test_per_pixel_w2_is_the_gaussian_w2_summed_over_pixels():
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 3)
    mu_a, mu_b = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    sd_a, sd_b = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.2 for _ in range(2))
    a = _with_moments(torch.randn(500, *shape, generator=g, dtype=torch.float64), mu_a, sd_a)
    b = _with_moments(torch.randn(700, *shape, generator=g, dtype=torch.float64), mu_b, sd_b)
    u = (np.arange(200_000) + 0.5) / 200_000
    z = stats.norm.ppf(u)
    total = 0.0
    for ma, mb, sa, sb in zip(mu_a.flatten().tolist(), mu_b.flatten().tolist(), sd_a.flatten().tolist(), sd_b.flatten().tolist()):
        total += np.mean(((ma + sa * z) - (mb + sb * z)) ** 2)
    assert abs(per_pixel_w2(a, b) - np.sqrt(total)) < 1e-3 * np.sqrt(total)
    assert per_pixel_w2(a, a) == 0.0


class _SampleOutput(torch.nn.Module):
    """``PointMassUnet`` with diffusers' ``.sample`` output."""

    def __init__(self):
        super().__init__()
        self.inner = PointMassUnet()

    def forward(self, sample, t, **kwargs):
        return SimpleNamespace(sample=self.inner(sample, t, **kwargs)[0])


@pytest.mark.parametrize("steps,omega", [(1, 0.0), (4, 1.0), (8, 2.5)])
def test_guided_ddim_follows_the_point_mass_ode(steps, omega):
    g = torch.Generator().manual_seed(steps)
    x_c, x_u = (torch.rand(3, 1, 4, 4, generator=g) * 2 - 1 for _ in range(2))
    noise = torch.randn(3, 1, 4, 4, generator=g)
    teacher = SimpleNamespace(unet=_SampleOutput(), noise_scheduler=sd_noise_scheduler())
    out = guided_ddim(teacher, {"encoder_hidden_states": _emb(x_c)}, {"encoder_hidden_states": _emb(x_u)}, noise,
                      steps, omega)
    target = x_u + (1 + omega) * (x_c - x_u)
    a_T, a_0 = ACS[999].double(), ACS[0].double()
    eps0 = (noise.double() - a_T.sqrt() * target) / (1 - a_T).sqrt()
    expected = a_0.sqrt() * target + (1 - a_0).sqrt() * eps0
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)
