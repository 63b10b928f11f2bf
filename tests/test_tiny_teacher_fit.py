"""``training.tiny_teacher_fit.per_pixel_w2`` against the 2-Wasserstein distance of 1-D Gaussians computed from their
quantile functions (W2² = ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, numerically), pixel by pixel. (``fit_tiny_teacher`` is exercised
by the slow ``test_train_tiny_sample_quality.py``.)"""
import numpy as np
import torch
from scipy import stats

from lcm_lora.training.tiny_teacher_fit import per_pixel_w2


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
