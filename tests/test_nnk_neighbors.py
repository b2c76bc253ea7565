"""nnk_neighbors against a slow float64 reference, geometric properties and degenerate data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import test_nnk_oracles as oracles
from convsim.nnk import nnk_neighbors
from convsim.nnk.search import faiss_available


def points(n, d, seed):
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, d)))


def subspace_points(n, dim, ambient, seed):
    """n points uniform in a cube of a random dim-dimensional linear subspace of R^ambient."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, dim)))
    return torch.tensor(rng.uniform(-1, 1, (n, dim)) @ basis.T)


@pytest.mark.parametrize("kernel,sigma", [("cosine", None), ("gaussian", None), ("gaussian", 0.7)])
def test_matches_slow_reference(kernel, sigma):
    """Candidates, weights, errors and counts equal the by-the-book float64 computation."""
    X = points(120, 5, seed=0)
    r = nnk_neighbors(X, k=10, kernel=kernel, sigma=sigma)
    for i in range(0, 120, 7):
        S, theta, err, sig = oracles.nnk_query(X.numpy(), i, 10, kernel, sigma)
        assert r.indices[i].tolist() == S.tolist()
        assert np.allclose(r.weights[i].numpy(), np.where(theta > 1e-10, theta, 0), atol=1e-8)
        assert np.isclose(float(r.error[i]), err, atol=1e-8)
        assert int(r.count[i]) == int((theta > 1e-10).sum())
        if kernel == "gaussian":
            assert np.isclose(float(r.sigma[i]), sig)


def test_queries_are_scored_against_X_without_exclusion():
    """Outside queries use their k nearest points of X, all of them eligible."""
    X, Q = points(80, 4, seed=1), points(9, 4, seed=2)
    r = nnk_neighbors(X, k=8, kernel="gaussian", queries=Q)
    assert r.indices.shape == (9, 8)
    for i in range(9):
        S, theta, err, _ = oracles.nnk_query(X.numpy(), None, 8, "gaussian", query=Q[i].numpy())
        assert r.indices[i].tolist() == S.tolist()
        assert np.allclose(r.weights[i].numpy(), np.where(theta > 1e-10, theta, 0), atol=1e-8)
        assert np.isclose(float(r.error[i]), err, atol=1e-8)


def test_query_is_excluded_by_identity_not_position():
    """With many exact copies of a point, no point lists itself, and its copies are candidates."""
    X = torch.cat([torch.zeros(12, 3) + 1.0, points(40, 3, seed=3)])
    r = nnk_neighbors(X, k=5, kernel="gaussian")
    assert not bool((r.indices == torch.arange(52).unsqueeze(1)).any())
    assert bool((r.indices[:12] < 12).all())  # the copies are the nearest points


def test_duplicates_keep_gives_exact_reconstruction_and_flag():
    """A duplicated point is reconstructed exactly by its copy (error 0), flagged, no NaN."""
    X = points(60, 3, seed=4)
    X[1] = X[0]
    r = nnk_neighbors(X, k=6, kernel="cosine")
    assert bool(r.duplicate[0]) and bool(r.duplicate[1]) and int(r.duplicate.sum()) == 2
    assert float(r.error[0]) < 1e-12 and int(r.count[0]) == 1
    assert int(r.indices[0, r.weights[0].argmax()]) == 1
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.error).all()


def test_duplicates_drop_removes_copies_of_the_query():
    """duplicates='drop': a copy of the query is not a neighbour and the query gets others."""
    X = points(60, 3, seed=4)
    X[1] = X[0]
    r = nnk_neighbors(X, k=6, kernel="cosine", duplicates="drop")
    row = r.indices[0].tolist()
    assert 1 in row and float(r.weights[0, row.index(1)]) == 0
    assert int(r.count[0]) >= 2 and bool(r.duplicate[0])


def test_three_identical_candidates_share_the_weight():
    """Identical candidates are handled by the jitter: equal weights, no NaN, flagged ill-conditioned."""
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0], [-5.0, 4.0]])
    r = nnk_neighbors(X, k=3, kernel="gaussian", sigma=1.0)
    w = r.weights[0]
    assert torch.allclose(w, w[0].expand(3), rtol=1e-5) and float(w[0]) > 0
    assert bool(r.ill_conditioned[0])
    assert torch.isfinite(r.error).all()


def test_zero_vectors_under_cosine_are_flagged_and_isolated():
    """Cosine is undefined at 0: zero queries get no neighbours (error 1) and are never candidates."""
    X = points(50, 4, seed=5)
    X[[3, 7]] = 0
    r = nnk_neighbors(X, k=6, kernel="cosine")
    assert r.zero.tolist() == [i in (3, 7) for i in range(50)]
    assert int(r.count[3]) == 0 and float(r.error[3]) == 1.0 and bool((r.weights[3] == 0).all())
    others = r.indices[~r.zero]
    assert not bool(((others == 3) | (others == 7)).any())
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.error).all()


def test_zero_vectors_under_gaussian_are_ordinary_points():
    """Under the Gaussian kernel a zero vector is flagged but gets neighbours."""
    X = points(50, 4, seed=5)
    X[3] = 0
    r = nnk_neighbors(X, k=6, kernel="gaussian")
    assert bool(r.zero[3]) and int(r.count[3]) >= 1


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_kri_two_candidates_both_kept_iff_ratio_in_interval(kernel):
    """With candidates j, k both weights are positive iff K_jk < K_ik / K_ij < 1 / K_jk (spec §1.5)."""
    rng = np.random.default_rng(6)
    checked = 0
    for _ in range(200):
        P = rng.standard_normal((3, 2))
        K = oracles.kernel_matrix(P, kernel, sigma=1.0)
        ratio = K[0, 2] / K[0, 1]
        margin = min(abs(ratio - K[1, 2]), abs(ratio - 1 / K[1, 2]))
        if margin < 1e-4:
            continue
        r = nnk_neighbors(torch.tensor(P), k=2, kernel=kernel, sigma=1.0 if kernel == "gaussian" else None, jitter=0.0)
        both = int(r.count[0]) == 2
        assert both == (K[1, 2] < ratio < 1 / K[1, 2])
        checked += 1
    assert checked > 150


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_gaussian_prunes_behind_the_hyperplane_of_the_nearer_candidate(sigma):
    """Candidate k is pruned iff (x_i - x_j)'(x_k - x_j) <= 0 for the nearer j, for any sigma."""
    rng = np.random.default_rng(int(sigma * 10))
    checked = 0
    for _ in range(150):
        P = rng.standard_normal((3, 2)) * sigma
        dj, dk = np.linalg.norm(P[1] - P[0]), np.linalg.norm(P[2] - P[0])
        j, kk = (1, 2) if dj < dk else (2, 1)
        side = (P[0] - P[j]) @ (P[kk] - P[j])
        if abs(side) < 1e-3 * sigma**2 or abs(dj - dk) < 1e-6:
            continue
        r = nnk_neighbors(torch.tensor(P), k=2, kernel="gaussian", sigma=sigma, jitter=0.0)
        w = dict(zip(r.indices[0].tolist(), r.weights[0].tolist(), strict=True))
        assert w[j] > 0
        assert (w[kk] == 0) == (side <= 0)
        checked += 1
    assert checked > 100


def test_collinear_points_have_at_most_two_neighbours():
    """Points on a line (ID 1) keep one neighbour per side: 2 inside, 1 at the ends (spec §1.14)."""
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0, 10, 80))
    X = torch.tensor(np.outer(t, rng.standard_normal(6)))
    r = nnk_neighbors(X, k=10, kernel="gaussian")
    assert int(r.count.max()) <= 2
    assert r.count[0] == 1 and r.count[-1] == 1
    assert bool((r.count[10:-10] == 2).all())


def test_counts_grow_with_intrinsic_dimension():
    """Mean NNK count rises with the dimension of the subspace the data lie on (spec §1.7)."""
    means = [
        float(nnk_neighbors(subspace_points(300, d, 16, seed=d), k=30, kernel="gaussian").count.double().mean())
        for d in (1, 2, 4)
    ]
    assert means[0] < means[1] < means[2]
    assert abs(means[0] - 2) < 0.1


def test_gaussian_layer_kernel_is_the_product_of_channel_kernels():
    """With one sigma, NNK on concatenated channels equals NNK with the product of channel kernels."""
    rng = np.random.default_rng(19)
    A, B = rng.standard_normal((70, 3)), rng.standard_normal((70, 2))
    r = nnk_neighbors(torch.tensor(np.hstack([A, B])), k=8, kernel="gaussian", sigma=1.3)
    for i in range(0, 70, 9):
        S = r.indices[i].numpy()
        P = [i, *S]
        K = oracles.kernel_matrix(A[P], "gaussian", 1.3) * oracles.kernel_matrix(B[P], "gaussian", 1.3)
        theta = oracles.nnls_cholesky(K[1:, 1:] + 1e-8 * np.eye(8), K[1:, 0])
        assert np.allclose(r.weights[i].numpy(), np.where(theta > 1e-10, theta, 0), atol=1e-8)


def test_gram_and_point_paths_agree(monkeypatch):
    """Long vectors, few points (whole-group Gram path) give what small blocks (gather path) give."""
    from convsim.nnk import neighbors

    calls = []
    real = neighbors._gram_systems
    monkeypatch.setattr(neighbors, "_gram_systems", lambda *a: calls.append(1) or real(*a))
    X = points(90, 40, seed=8)
    for kernel in ("cosine", "gaussian"):
        a = nnk_neighbors(X, k=10, kernel=kernel)  # d >= 4k and n <= k^2: Gram path
        b = nnk_neighbors(X, k=10, kernel=kernel, max_elements=3000)  # no room for a Gram block
        assert torch.equal(a.indices, b.indices)
        assert torch.allclose(a.weights, b.weights, atol=1e-9)
        assert torch.allclose(a.error, b.error, atol=1e-9)
    assert len(calls) == 2


def test_blocking_does_not_change_results():
    """Any block size gives the same neighbourhoods."""
    X = points(100, 3, seed=9)
    a = nnk_neighbors(X, k=7)
    b = nnk_neighbors(X, k=7, max_elements=700)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.weights, b.weights, atol=1e-12)


def test_float32_input_matches_float64_input():
    """The input dtype only affects the candidate search precision."""
    X = points(100, 5, seed=10)
    a, b = nnk_neighbors(X, k=8), nnk_neighbors(X.float(), k=8)
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.weights, b.weights, atol=1e-5)


def test_pgd_solver_close_to_exact():
    """solver='pgd' gives the exact neighbour counts on well-separated data and close weights."""
    X = points(150, 4, seed=11)
    a = nnk_neighbors(X, k=10, kernel="gaussian")
    b = nnk_neighbors(X, k=10, kernel="gaussian", solver="pgd", solver_options={"max_iter": 20000})
    assert float((a.weights - b.weights).abs().max()) < 1e-3
    assert float((a.count != b.count).double().mean()) < 0.05


def test_normalized_weights_sum_to_one_where_there_are_neighbours():
    """Interpolation weights are theta / sum(theta), zero rows stay zero."""
    X = points(40, 3, seed=12)
    X[0] = 0
    r = nnk_neighbors(X, k=5)
    s = r.normalized_weights().sum(-1)
    assert torch.allclose(s[1:], torch.ones(39, dtype=s.dtype)) and float(s[0]) == 0


def test_threshold_controls_the_count():
    """Weights at or below the threshold are zeroed and not counted."""
    X = points(80, 5, seed=13)
    r = nnk_neighbors(X, k=10, threshold=0.05)
    assert bool(((r.weights == 0) | (r.weights > 0.05)).all())
    assert torch.equal(r.count, (r.weights > 0).sum(-1))


def test_k_not_smaller_than_n_raises():
    """k >= n leaves no k candidates once the query is excluded."""
    X = points(10, 2, seed=14)
    with pytest.raises(ValueError, match="must be smaller than the number of points"):
        nnk_neighbors(X, k=10)
    assert nnk_neighbors(X, k=10, queries=X[:2]).indices.shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"kernel": "rbf"}, ValueError, "kernel must be one of"),
        ({"solver": "lbfgs"}, ValueError, "solver must be one of"),
        ({"sigma": 1.0}, ValueError, "sigma is only used by the gaussian kernel"),
        ({"kernel": "gaussian", "sigma": -1.0}, ValueError, "sigma must be a positive number"),
        ({"k": 0}, ValueError, "k must be an int >= 1"),
        ({"k": 2.5}, TypeError, "k must be an int"),
        ({"duplicates": "merge"}, ValueError, "duplicates must be one of"),
        ({"search": "annoy"}, ValueError, "search must be one of"),
    ],
)
def test_invalid_options_raise(kwargs, err, match):
    """Bad options raise with a message naming what was expected."""
    with pytest.raises(err, match=match):
        nnk_neighbors(points(20, 2, seed=15), **kwargs)


def test_invalid_inputs_raise():
    """Non-tensors, wrong shapes and non-finite values are rejected."""
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        nnk_neighbors(np.zeros((5, 2)), k=2)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        nnk_neighbors(torch.zeros(5), k=2)
    X = points(20, 2, seed=16)
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        nnk_neighbors(X, k=2)
    with pytest.raises(ValueError, match="queries must be a tensor of shape"):
        nnk_neighbors(points(20, 2, seed=16), k=2, queries=torch.zeros(3, 5))


@pytest.mark.skipif(not faiss_available(), reason="faiss is optional")
def test_faiss_search_matches_torch_search():
    """The FAISS flat index finds the same candidates as the torch search."""
    X = points(120, 6, seed=17).float()
    a = nnk_neighbors(X, k=8, search="torch")
    b = nnk_neighbors(X, k=8, search="faiss")
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.weights, b.weights, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """Device-agnostic: the same neighbourhoods on CUDA."""
    X = points(100, 5, seed=18)
    a = nnk_neighbors(X, k=8)
    b = nnk_neighbors(X.cuda(), k=8)
    assert torch.equal(a.indices, b.indices.cpu()) and torch.allclose(a.weights, b.weights.cpu(), atol=1e-9)


def test_kdtree_search_matches_torch_search():
    """The exact k-d tree search gives the brute-force candidates, distances and weights."""
    X = points(300, 6, seed=19)
    a = nnk_neighbors(X, k=8, search="torch")
    b = nnk_neighbors(X, k=8, search="kdtree")
    assert torch.equal(a.indices, b.indices)
    assert torch.allclose(a.distances, b.distances, atol=1e-9)
    assert torch.allclose(a.weights, b.weights, atol=1e-9)


def test_kdtree_search_excludes_self_among_duplicates_and_skips_zero_points():
    """Exact copies: the query is dropped by identity; zero points are never cosine candidates."""
    X = points(40, 3, seed=20)
    X[5:9] = X[4]  # five copies of one point
    X[10] = 0
    for search in ("torch", "kdtree"):
        r = nnk_neighbors(X, k=6, search=search)
        assert not (r.indices == torch.arange(40).unsqueeze(1)).any()
        assert not (r.indices == 10).any()
        assert set(r.indices[4, :4].tolist()) == {5, 6, 7, 8}
    a, b = (nnk_neighbors(X, k=6, search=s) for s in ("torch", "kdtree"))
    assert torch.allclose(a.distances, b.distances, atol=1e-9)
