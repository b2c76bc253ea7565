"""The Fréchet distance between Gaussians fitted to two sets of features (the formula behind FID).

For feature sets with means μ₁, μ₂ and covariances Σ₁, Σ₂,

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2},

the 2-Wasserstein distance squared between N(μ₁, Σ₁) and N(μ₂, Σ₂). The trace of the matrix
square root uses symmetric eigendecompositions in float64 (tr (Σ₁Σ₂)^{1/2} equals the trace of the
symmetric PSD root above), so no complex parts arise as with a general ``sqrtm``.

convsim's ``fd`` metric applies it to the features of a Fashion-MNIST classifier that convsim
trains itself (``convsim.training.fd_features``); it is therefore **not** comparable with the
Inception-based FID of the literature, only between runs that use the same classifier.
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_statistics", "frechet_distance", "frechet_distance_between"]


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and unbiased covariance (d, d), in float64, of features (N, d), N >= 2.

    Example:
        >>> mu, sigma = gaussian_statistics(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> mu.tolist(), sigma.tolist()
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor (N, d) with N >= 2, got {shape}")
    f = features.detach().to(torch.float64)
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix; rounding's tiny negative eigenvalues count as 0."""
    vals, vecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2): means (d,), covariances (d, d), PSD.

    Example:
        >>> d = 3  # N(0, I) against N(1, 4I): ‖1‖² + d·(1 − 2)² = 3 + 3
        >>> round(frechet_distance(torch.zeros(d), torch.eye(d), torch.ones(d), 4 * torch.eye(d)), 9)
        6.0
    """
    d = mu1.shape[0] if isinstance(mu1, torch.Tensor) and mu1.dim() == 1 else -1
    expected = (("mu1", mu1, (d,)), ("sigma1", sigma1, (d, d)), ("mu2", mu2, (d,)), ("sigma2", sigma2, (d, d)))
    for label, t, shape in expected:
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or d < 1:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{label} must have shape {shape} (means (d,), covariances (d, d)), got {got}")
    m1, s1, m2, s2 = (t.detach().to(torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root1 = _psd_sqrt(s1)
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp_min(0).sqrt().sum()
    return float((m1 - m2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)


def frechet_distance_between(a: torch.Tensor, b: torch.Tensor) -> float:
    """FD between Gaussians fitted to feature sets ``a`` (N, d) and ``b`` (M, d).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(500, 4)
        >>> round(frechet_distance_between(x, x), 9), frechet_distance_between(x, x + 1) > 3.99
        (0.0, True)
    """
    return max(0.0, frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b)))
