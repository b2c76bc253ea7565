"""Batched NNK solvers against scipy.optimize.nnls, KKT conditions and degenerate systems."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

import test_nnk_oracles as oracles
from convsim.nnk.solvers import active_set, objective, projected_gradient, pruning, solve


@pytest.fixture(params=["torch", "numba"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every exact-solver test runs on both engines: the torch path stays covered when numba is installed."""
    if request.param == "numba":
        pytest.importorskip("numba", reason="numba (the optional compiled NNK solver) is not installed")
    return request.param


def random_systems(B, k, seed, rank=None, dtype=torch.float64):
    """Gram matrices of random features (rank = feature dim) and right-hand sides of NNK type."""
    g = torch.Generator().manual_seed(seed)
    r = rank or k + 3
    F = torch.randn(B, r, k, generator=g, dtype=dtype)
    A = F.transpose(1, 2) @ F / r
    b = F.transpose(1, 2) @ torch.randn(B, r, 1, generator=g, dtype=dtype) / r
    return A, b.squeeze(-1)


def kernel_systems(kernel, seed, n=200, d=6, k=12):
    """Candidate systems of real NNK queries (kernel among candidates, kernel to the query)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    As, bs = [], []
    for i in range(0, n, 5):
        d_ = np.sqrt(((X - X[i]) ** 2).sum(1))
        d_[i] = np.inf
        S = np.argsort(d_)[:k]
        K = oracles.kernel_matrix(np.vstack([X[i][None], X[S]]), kernel, d_[S[-1]] / 3)
        As.append(K[1:, 1:] + 1e-8 * np.eye(k))
        bs.append(K[1:, 0])
    return torch.tensor(np.array(As)), torch.tensor(np.array(bs))


@pytest.mark.parametrize("k", [1, 4, 15, 30])
def test_exact_matches_scipy_nnls_on_random_pd_systems(k, engine):
    """Same support as scipy's NNLS on the Cholesky factor and an objective no worse."""
    A, b = random_systems(40, k, seed=k)
    theta = active_set(A, b, engine=engine).theta
    for s in range(A.shape[0]):
        ref = oracles.nnls_cholesky(A[s].numpy(), b[s].numpy())
        assert np.array_equal(theta[s].numpy() > 1e-10, ref > 1e-10)
        ours = oracles.objective(A[s].numpy(), b[s].numpy(), theta[s].numpy())
        assert ours <= oracles.objective(A[s].numpy(), b[s].numpy(), ref) + 1e-12


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_exact_matches_scipy_nnls_on_kernel_systems(kernel, engine):
    """NNK systems of both kernels: weights equal scipy's to 1e-8, supports identical."""
    A, b = kernel_systems(kernel, seed=1)
    theta = active_set(A, b, engine=engine).theta.numpy()
    for s in range(A.shape[0]):
        ref = oracles.nnls_cholesky(A[s].numpy(), b[s].numpy())
        assert np.array_equal(theta[s] > 1e-10, ref > 1e-10)
        assert np.allclose(theta[s], ref, atol=1e-8)


def test_exact_solution_satisfies_kkt(engine):
    """theta_P = A_PP^{-1} b_P > 0 and A_jP theta_P >= b_j off the support (spec §1.4)."""
    A, b = kernel_systems("gaussian", seed=2)
    theta = active_set(A, b, engine=engine).theta
    for s in range(A.shape[0]):
        a, bb, t = A[s].numpy(), b[s].numpy(), theta[s].numpy()
        P = t > 0
        assert P.any()
        assert np.allclose(t[P], np.linalg.solve(a[np.ix_(P, P)], bb[P]), atol=1e-9)
        assert np.all(a[~P][:, P] @ t[P] >= bb[~P] - 1e-10)


def test_exact_reports_small_kkt_violation_and_convergence(engine):
    """The reported KKT violation is tiny and every system converged."""
    A, b = random_systems(60, 20, seed=3)
    res = active_set(A, b, engine=engine)
    assert bool(res.converged.all())
    assert float(res.kkt.max()) < 1e-10


def test_exact_on_rank_deficient_gram_matches_nnls_on_features(engine):
    """Cosine kernel of 3-d points with 20 candidates has rank 4: optimum of min||F t - f|| anyway.

    With the explicit features f = [1, x/|x|]/sqrt(2) scipy solves the NNLS without a Cholesky;
    the query is never in the cone of the candidates (points on a sphere), so the optimum is
    unique and uses at most rank-many candidates.
    """
    g = torch.Generator().manual_seed(4)
    U = torch.nn.functional.normalize(torch.randn(30, 21, 3, generator=g, dtype=torch.float64), dim=-1)
    F = torch.cat([torch.ones(30, 21, 1, dtype=torch.float64), U], -1).transpose(1, 2) / 2**0.5
    Fs, fq = F[:, :, 1:], F[:, :, 0]
    A = Fs.transpose(1, 2) @ Fs
    b = (Fs.transpose(1, 2) @ fq.unsqueeze(-1)).squeeze(-1)
    res = active_set(A + 1e-10 * torch.eye(20, dtype=torch.float64), b, engine=engine)
    for s in range(30):
        ref, _ = scipy.optimize.nnls(Fs[s].numpy(), fq[s].numpy())
        ours = oracles.objective(A[s].numpy(), b[s].numpy(), res.theta[s].numpy())
        assert ours <= oracles.objective(A[s].numpy(), b[s].numpy(), ref) + 1e-9
        assert int((res.theta[s] > 1e-6).sum()) <= 4


def test_exact_is_invariant_to_batch_size(engine):
    """Chunking the batch changes nothing."""
    A, b = random_systems(50, 10, seed=5)
    full = active_set(A, b, engine=engine).theta
    assert torch.equal(active_set(A, b, batch_size=7, engine=engine).theta, full)


def test_exact_zero_rhs_gives_zero_solution(engine):
    """b <= 0 everywhere: theta = 0 is optimal, converged after one check."""
    A, _ = random_systems(5, 6, seed=6)
    res = active_set(A, -torch.rand(5, 6, dtype=torch.float64), engine=engine)
    assert torch.equal(res.theta, torch.zeros(5, 6, dtype=torch.float64))
    assert bool(res.converged.all())
    assert torch.equal(res.iterations, torch.ones(5, dtype=torch.long))


def test_exact_flags_iteration_limit(engine):
    """max_iter=1 cannot finish systems with several neighbours: converged is False."""
    A, b = kernel_systems("gaussian", seed=7)
    res = active_set(A, b, max_iter=1, engine=engine)
    assert not bool(res.converged.all())


def test_exact_reports_pivot_of_near_duplicate_support(engine):
    """Two identical candidates share the weight; the support pivot is of the jitter's size."""
    A = torch.tensor([[[1.0, 1.0, 0.2], [1.0, 1.0, 0.2], [0.2, 0.2, 1.0]]], dtype=torch.float64)
    A = A + 1e-8 * torch.eye(3, dtype=torch.float64)
    b = torch.tensor([[0.9, 0.9, 0.1]], dtype=torch.float64)
    res = active_set(A, b, engine=engine)
    assert torch.isfinite(res.theta).all()
    assert torch.allclose(res.theta[0, 0], res.theta[0, 1], rtol=1e-6)
    assert float(res.pivot[0]) < 1e-6


@pytest.mark.parametrize("accelerated", [True, False])
def test_pgd_solver_within_documented_objective_gap(accelerated):
    """Projected gradient ends within 1e-6 (objective) of the exact optimum on NNK systems."""
    A, b = kernel_systems("gaussian", seed=8)
    exact = active_set(A, b).theta
    pgd = projected_gradient(A, b, accelerated=accelerated, max_iter=20000)
    gap = objective(A, b, pgd.theta) - objective(A, b, exact)
    assert float(gap.max()) < 1e-6
    assert float(gap.min()) > -1e-12  # never better than the optimum
    assert bool((pgd.theta >= 0).all())


def test_pgd_solver_zeroes_weights_below_threshold():
    """Weights under the threshold are exactly 0."""
    A, b = kernel_systems("cosine", seed=9)
    theta = projected_gradient(A, b, threshold=1e-3).theta
    assert bool(((theta == 0) | (theta >= 1e-3)).all())


def test_solve_dispatches_and_rejects_unknown_solver():
    """solve() picks the solver by name; an unknown name (or the old name "fast") raises."""
    A, b = random_systems(3, 4, seed=10)
    assert torch.equal(solve(A, b, "exact").theta, active_set(A, b).theta)
    assert torch.equal(solve(A, b, "pgd", max_iter=50).theta, projected_gradient(A, b, max_iter=50).theta)
    assert torch.equal(solve(A, b, "pruning", tol=1e-4).theta, pruning(A, b, tol=1e-4).theta)
    for name in ("lbfgs", "fast"):
        with pytest.raises(ValueError, match="solver must be one of"):
            solve(A, b, name)


def test_solvers_validate_shapes_and_dtypes():
    """Mismatched shapes and dtypes raise with a message."""
    A, b = random_systems(3, 4, seed=11)
    with pytest.raises(ValueError, match=r"A must have shape \(B, k, k\)"):
        active_set(A[0], b)
    with pytest.raises(ValueError, match="b must have shape"):
        active_set(A, b[:, :3])
    with pytest.raises(TypeError, match="share one floating dtype"):
        projected_gradient(A, b.float())
