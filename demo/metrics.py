"""Sample-quality metrics of the demo: Fréchet distance (FD), class accuracy, style score.

FD is the Fréchet (2-Wasserstein) distance between two Gaussians fitted to features
(Dowson & Landau 1982; the formula FID uses, Heusel et al. 2017):

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½

The demo computes it in its own digit classifier's feature space (so it is *not* FID:
no Inception network). The trace of the matrix square root is taken from the eigenvalues
of the symmetric PSD matrix Σ₁^½ Σ₂ Σ₁^½ (``numpy.linalg.eigh``), which is exact and, unlike
``scipy.linalg.sqrtm`` of the non-symmetric Σ₁Σ₂, never returns complex parts for
near-singular covariances (few samples in many dimensions).
"""
from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ``N-1``) covariance of ``N×D`` features, in float64."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N×D feature matrix with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (eigen-based, see module doc)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(cross, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_features(features_a, features_b) -> float:
    """FD between two feature sets (``N×D`` and ``M×D``)."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images whose argmax class is the class named in their prompt."""
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).float().mean())


def style_score(style_logits: torch.Tensor) -> float:
    """Mean probability of class 1 ("styled") under the style classifier, in [0, 1].

    Real plain images score ≈ 0 and real styled images ≈ 1 (checked on held-out images in
    the report), so the score reads as "how much of the style the samples carry".
    """
    return float(torch.softmax(style_logits.float(), dim=1)[:, 1].mean())


def ink_coverage(images: torch.Tensor) -> float:
    """Fraction of pixels brighter than mid-grey (images in [-1, 1], ink = +1); a classifier-free
    check of the bold style (thick strokes cover more of the frame)."""
    return float((images > 0).float().mean())


def frechet_distance_bootstrap_se(features, ref_mu, ref_sigma, n_boot: int = 100, seed: int = 0) -> float:
    """Standard error of FD(features, reference) by the bootstrap (Efron 1979): resample the
    generated samples with replacement ``n_boot`` times, recompute FD against the fixed reference
    statistics, return the standard deviation of those FDs (ddof 1). Measures the sampling noise
    of one row's FD from its own n images (the reference set is held fixed)."""
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(f), len(f))
        vals.append(frechet_distance(*feature_statistics(f[pick]), ref_mu, ref_sigma))
    return float(np.std(vals, ddof=1))
