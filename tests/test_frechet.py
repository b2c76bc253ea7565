"""The Fréchet distance against scipy's general matrix square root and closed forms."""

import numpy as np
import pytest
import scipy.linalg
import torch

from convsim.frechet import frechet_distance, frechet_distance_between, gaussian_statistics


def _scipy_fd(mu1, s1, mu2, s2) -> float:
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def _random_psd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_fd_matches_scipy_sqrtm_on_random_gaussians(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    got = frechet_distance(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_fd_of_isotropic_gaussians_has_the_closed_form():
    # W2² between N(m1, a²I) and N(m2, b²I) in d dimensions is ‖m1 − m2‖² + d (a − b)².
    d, a, b = 7, 0.5, 3.0
    m1, m2 = torch.zeros(d), torch.arange(d, dtype=torch.float64)
    got = frechet_distance(m1, a**2 * torch.eye(d), m2, b**2 * torch.eye(d))
    assert got == pytest.approx(float((m1 - m2).pow(2).sum()) + d * (a - b) ** 2, rel=1e-12)


def test_fd_of_commuting_covariances_is_the_sum_over_eigen_directions():
    # diagonal covariances commute: tr (S1 S2)^{1/2} = Σ sqrt(s1_i s2_i)
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.0])
    got = frechet_distance(torch.zeros(3), torch.diag(s1), torch.zeros(3), torch.diag(s2))
    assert got == pytest.approx(float((s1.sqrt() - s2.sqrt()).pow(2).sum()), rel=1e-12)


def test_fd_is_symmetric_in_its_two_gaussians():
    rng = np.random.default_rng(3)
    a = [torch.from_numpy(t) for t in (rng.standard_normal(4), _random_psd(rng, 4))]
    b = [torch.from_numpy(t) for t in (rng.standard_normal(4), _random_psd(rng, 4))]
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-10)


def test_fd_between_samples_converges_to_the_populations_fd():
    torch.manual_seed(0)
    x, y = torch.randn(20000, 3), 2 * torch.randn(20000, 3) + 1  # N(0, I) against N(1, 4I): 3 + 3
    assert frechet_distance_between(x, y) == pytest.approx(6.0, rel=0.05)


def test_gaussian_statistics_match_numpy():
    x = torch.randn(50, 6, dtype=torch.float64)
    mu, sigma = gaussian_statistics(x)
    np.testing.assert_allclose(mu.numpy(), x.numpy().mean(0))
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False))


@pytest.mark.parametrize(
    "bad", [torch.zeros(1, 3), torch.zeros(5), torch.tensor([[0.0, float("nan")], [1.0, 2.0]])], ids=str
)
def test_gaussian_statistics_refuse_unusable_features(bad):
    with pytest.raises(ValueError, match="features"):
        gaussian_statistics(bad)


def test_fd_names_the_argument_of_the_wrong_shape():
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
