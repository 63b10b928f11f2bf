"""Fréchet distance and the other demo metrics against independent references (closed forms, scipy)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from lcm_lora.demo import metrics


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (1e-9 if rank else 0.1) * np.eye(d)


def _fd_scipy(mu1, s1, mu2, s2):
    """FID's reference formula (pytorch-fid ``calculate_frechet_distance``): sqrtm of Σ1Σ2."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_fd_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_scipy(mu1, s1, mu2, s2), rel=1e-7, abs=1e-8)


def test_fd_closed_form_for_diagonal_covariances():
    # W2² between N(μ1, diag a) and N(μ2, diag b) = |μ1-μ2|² + Σ (√a - √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_is_stable_for_singular_covariances():
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(rng, 32, rank=5), _random_spd(rng, 32, rank=7)
    mu = np.zeros(32)
    value = metrics.frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(value) and value >= -1e-9
    assert metrics.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))
    assert value == pytest.approx(metrics.frechet_distance(mu, s2, mu, s1), rel=1e-6)  # symmetric


def test_feature_statistics_match_numpy():
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    mu, sigma = metrics.feature_statistics(f)
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.double().numpy().T, ddof=1), rtol=1e-12)
    with pytest.raises(ValueError):
        metrics.feature_statistics(torch.zeros(1, 4))


def test_fd_shape_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_accuracy_style_and_ink():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert metrics.class_accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    p = torch.softmax(logits, 1)[:, 1].mean().item()
    assert metrics.style_score(logits) == pytest.approx(p)
    img = -torch.ones(1, 1, 4, 4)
    img[..., :2, :] = 1.0
    assert metrics.ink_coverage(img) == pytest.approx(0.5)
