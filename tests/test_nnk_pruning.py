"""solver="pruning": the released one-way pruning solver against a loop written from the spec (§1.9(b)).

The reference below follows the spec's words one system at a time (numpy, float64, a Cholesky
written out so the singular-round rule is visible). Then: equality with the exact solver where
one-way pruning provably reaches the optimum, its known failure to, duplicates, zero vectors and
singular systems, the NNK entry points, and the solver recorded in their outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import test_nnk_oracles as oracles
from convsim.nnk import (
    NNKOptions,
    channel_loo_error,
    channel_overlap,
    layer_overlap,
    nnk_graph,
    nnk_neighbors,
)
from convsim.nnk.solvers import active_set, objective, pruning

EPS = np.finfo(np.float64).eps


@pytest.fixture(params=["torch", "numba"])
def engine(request: pytest.FixtureRequest) -> str:
    """Every solver test runs on both engines (the torch path is what GPUs and users without numba get)."""
    if request.param == "numba":
        pytest.importorskip("numba", reason="numba (the optional compiled NNK solvers) is not installed")
    return request.param


# ----------------------------------------------------------------------------- the slow reference


def cholesky_or_none(M: np.ndarray, floor: float) -> np.ndarray | None:
    """Lower Cholesky factor of M by the textbook loop; None when a squared pivot is <= floor."""
    p = M.shape[0]
    L = np.zeros((p, p))
    for r in range(p):
        for c in range(r + 1):
            s = M[r, c] - L[r, :c] @ L[c, :c]
            if r == c:
                if not s > floor:
                    return None
                L[r, r] = np.sqrt(s)
            else:
                L[r, c] = s / L[c, c]
    return L


def solve_kept(A_FF: np.ndarray, b_F: np.ndarray, tol: float, floor: float) -> tuple[np.ndarray, float]:
    """x_F = A_FF^{-1} b_F by Cholesky; a singular block is shifted by max(tol, floor) * 10^t."""
    p = len(b_F)
    L, shift = cholesky_or_none(A_FF, floor), 0.0
    if L is None:
        shift = max(tol, floor)
        while (L := cholesky_or_none(A_FF + shift * np.eye(p), floor)) is None:
            shift *= 10
    if p == 0:
        return np.zeros(0), shift
    y = scipy.linalg.solve_triangular(L, b_F, lower=True)
    return scipy.linalg.solve_triangular(L.T, y, lower=False), shift


def pruning_loop(A, b, tol: float = 1e-6, max_iter: int | None = None) -> tuple[np.ndarray, dict]:
    """One system, in the spec's words: eps_low = eps_high = check_tol = tol, max_iter = 50 k."""
    A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
    k = len(b)
    max_iter = 50 * k if max_iter is None else max_iter
    floor = k * EPS * max(1.0, float(np.max(np.diag(A)))) if k else 0.0
    if np.any(b > 1 - tol):  # near-duplicate candidate: nodes collapse
        return np.where(b > 1 - tol, b, 0.0), {"rounds": 0, "converged": True, "jitter": 0.0}
    x = b.copy()
    F = [j for j in range(k) if x[j] > tol]
    rounds, converged, jitter = 0, False, 0.0
    while rounds < max_iter:
        rounds += 1
        x_F, shift = solve_kept(A[np.ix_(F, F)], b[F], tol, floor)
        jitter = max(jitter, shift)
        x = np.zeros(k)
        x[F] = x_F
        below = [abs(x[j]) for j in range(k) if x[j] < tol]
        check = max(below, default=0.0)
        F = [j for j in F if x[j] > tol]  # only ever removed
        if check <= tol:
            converged = True
            break
    x[x < tol] = 0.0
    return x, {"rounds": rounds, "converged": converged, "jitter": jitter}


def test_reference_follows_the_spec_on_a_two_candidate_system():
    """The reference itself: A^{-1} b = (1.11, -0.47) drops candidate 2, then 0.8 / 1 remains."""
    A = np.array([[1.0, 0.9], [0.9, 1.0]])
    x, info = pruning_loop(A, np.array([0.8, 0.5]))
    assert np.allclose(x, [0.8, 0.0]) and info == {"rounds": 2, "converged": True, "jitter": 0.0}


# ----------------------------------------------------------------------------- systems


def kernel_systems(kernel: str, seed: int, n: int = 200, d: int = 6, k: int = 12, jitter: float = 1e-8):
    """Candidate systems of real NNK queries: K_SS + jitter I and K_Si."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    As, bs = [], []
    for i in range(0, n, 4):
        dist = np.sqrt(((X - X[i]) ** 2).sum(1))
        dist[i] = np.inf
        S = np.argsort(dist)[:k]
        K = oracles.kernel_matrix(np.vstack([X[i][None], X[S]]), kernel, dist[S[-1]] / 3)
        As.append(K[1:, 1:] + jitter * np.eye(k))
        bs.append(K[1:, 0])
    return torch.tensor(np.array(As)), torch.tensor(np.array(bs))


def nonneg_systems(B: int, k: int, seed: int, rank: int | None = None):
    """Gram matrices of non-negative features (entrywise >= 0, like kernels) and b in (0, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    r = rank or k + 4
    F = torch.rand(B, r, k, generator=g, dtype=torch.float64)
    A = F.transpose(1, 2) @ F / r
    b = A @ torch.rand(B, k, 1, generator=g, dtype=torch.float64) - 0.15 * torch.rand(B, k, 1, generator=g)
    b = b.squeeze(-1)
    return A, 0.8 * b / b.amax(1, keepdim=True)


def assert_matches_reference(A: torch.Tensor, b: torch.Tensor, res, tol: float = 1e-6) -> None:
    for s in range(A.shape[0]):
        ref, info = pruning_loop(A[s].numpy(), b[s].numpy(), tol)
        got = res.theta[s].numpy()
        assert np.array_equal(got > 0, ref > 0), s
        assert np.allclose(got, ref, rtol=1e-9, atol=1e-12), s
        assert int(res.iterations[s]) == info["rounds"] and bool(res.converged[s]) == info["converged"]
        assert float(res.jitter[s]) == pytest.approx(info["jitter"], rel=1e-12)


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_matches_loop_reference_on_kernel_systems(kernel, engine):
    """NNK systems of both kernels: same supports, weights, rounds and convergence as the loop."""
    A, b = kernel_systems(kernel, seed=3)
    res = pruning(A, b, engine=engine)
    assert_matches_reference(A, b, res)
    assert (res.iterations >= 2).any()  # some systems needed to prune


@pytest.mark.parametrize("k", [1, 4, 15, 30])
@pytest.mark.parametrize("tol", [1e-6, 1e-3, 0.0])
def test_matches_loop_reference_on_random_systems(k, tol, engine):
    """Random non-negative Gram systems (some b_j <= tol never enter), several k and tolerances."""
    A, b = nonneg_systems(30, k, seed=k)
    assert_matches_reference(A, b, pruning(A, b, tol=tol, engine=engine), tol)


def test_round_limit_stops_early_and_reports_it(engine):
    """max_iter = 1: one unconstrained solve, thresholded; systems that needed more are not converged."""
    A, b = kernel_systems("gaussian", seed=4)
    res = pruning(A, b, max_iter=1, engine=engine)
    for s in range(A.shape[0]):
        ref, info = pruning_loop(A[s].numpy(), b[s].numpy(), max_iter=1)
        assert np.allclose(res.theta[s].numpy(), ref, rtol=1e-9, atol=1e-12)
        assert bool(res.converged[s]) == info["converged"]
    assert not bool(res.converged.all())


def test_near_duplicate_collapses_onto_the_candidates_above_one_minus_tol(engine):
    """Some b_j > 1 - tol: return b on those candidates and 0 elsewhere, without solving."""
    A = torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone() * 0.5 + 0.5
    b = torch.tensor(
        [[0.9999995, 0.7, 0.99999995, 0.2], [0.9995, 0.7, 0.6, 0.2], [0.9999990, 0.7, 0.6, 0.2]], dtype=torch.float64
    )
    res = pruning(A, b, engine=engine)
    assert res.theta[0].tolist() == [0.9999995, 0.0, 0.99999995, 0.0] and int(res.iterations[0]) == 0
    assert int(res.iterations[1]) >= 1 and int(res.iterations[2]) >= 1  # 0.999999 is not > 1 - 1e-6
    assert_matches_reference(A, b, res)
    assert pruning(A, b, tol=1e-3, engine=engine).theta[1].tolist() == [0.9995, 0.0, 0.0, 0.0]


def test_engines_agree_on_larger_batches():
    """The compiled loop and the batched torch Cholesky give the same supports and weights."""
    pytest.importorskip("numba", reason="numba (the optional compiled NNK solvers) is not installed")
    A, b = kernel_systems("cosine", seed=5, n=800, d=9, k=25)
    a, c = pruning(A, b, engine="torch"), pruning(A, b, engine="numba")
    assert torch.equal(a.theta > 0, c.theta > 0) and torch.equal(a.iterations, c.iterations)
    assert torch.allclose(a.theta, c.theta, rtol=1e-9, atol=1e-12)
    assert torch.allclose(a.kkt, c.kkt, atol=1e-12) and torch.allclose(a.pivot, c.pivot, rtol=1e-6)


# ----------------------------------------------------------------------------- against the exact solver


def test_equals_exact_when_the_unconstrained_solution_is_positive(engine):
    """b = A x with x > tol: the first Cholesky solve is feasible, hence optimal; one round."""
    A, _ = nonneg_systems(40, 12, seed=6)
    x = 0.05 + torch.rand(40, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    b = (A @ x.unsqueeze(-1)).squeeze(-1)
    scale = 0.9 / b.amax(1, keepdim=True)
    b, x = b * scale, x * scale
    res, ex = pruning(A, b, engine=engine), active_set(A, b)
    assert (res.iterations == 1).all() and res.converged.all()
    assert torch.allclose(res.theta, x, rtol=1e-8) and torch.allclose(res.theta, ex.theta, rtol=1e-8, atol=1e-12)


def test_equals_exact_on_diagonal_systems(engine):
    """Independent candidates: both give max(b, 0) / a (pruning drops b_j <= tol at the start)."""
    g = torch.Generator().manual_seed(8)
    a = 0.5 + torch.rand(20, 6, generator=g, dtype=torch.float64)
    b = torch.rand(20, 6, generator=g, dtype=torch.float64) * 0.9 - 0.3
    A = torch.diag_embed(a)
    res, ex = pruning(A, b, engine=engine), active_set(A, b)
    assert torch.allclose(res.theta, ex.theta, atol=1e-14) and torch.allclose(res.theta, b.clamp_min(0) / a)


def test_never_better_than_exact_and_sometimes_worse(engine):
    """One-way pruning can stop short of the optimum (spec §1.9(b)); where its result satisfies
    the KKT conditions it is the optimum."""
    A, b = kernel_systems("gaussian", seed=9, d=6, k=20)
    res, ex = pruning(A, b, engine=engine), active_set(A, b)
    f_p, f_e = objective(A, b, res.theta), objective(A, b, ex.theta)
    assert (f_p >= f_e - 1e-12).all()
    assert (f_p > f_e + 1e-9).any()  # it does miss the optimum on some queries
    kkt_ok = res.kkt < 1e-8
    assert kkt_ok.any()
    assert torch.allclose(res.theta[kkt_ok], ex.theta[kkt_ok], atol=1e-8)
    assert torch.equal((res.theta > 0)[kkt_ok], (ex.theta > 0)[kkt_ok])


# ----------------------------------------------------------------------------- singular systems


def test_duplicate_candidates_without_jitter_get_an_explicit_shift(engine):
    """Two identical candidates and no jitter in A: Cholesky fails, the round is shifted by tol;
    the result is finite, equals the reference and records the shift."""
    A = torch.tensor([[[1.0, 1.0, 0.6], [1.0, 1.0, 0.6], [0.6, 0.6, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[0.9, 0.9, 0.7]], dtype=torch.float64)
    res = pruning(A, b, engine=engine)
    assert torch.isfinite(res.theta).all() and float(res.jitter[0]) == 1e-6
    assert_matches_reference(A, b, res)
    assert torch.allclose(res.theta[0, 0], res.theta[0, 1])  # the copies share the weight


def test_more_candidates_than_dimensions_plus_one_never_nan(engine):
    """Cosine kernels of k = 20 candidates in 3 dims have rank <= 4: with no jitter every first
    round is singular and gets the shift tol. The results are finite, non-negative and no
    better than the exact optimum. (Which of several nearly collinear candidates survives is
    decided by rounding here, so supports are not compared with the reference.)"""
    A, b = kernel_systems("cosine", seed=10, n=120, d=3, k=20, jitter=0.0)
    res = pruning(A, b, engine=engine)
    assert torch.isfinite(res.theta).all() and (res.theta >= 0).all()
    assert (res.jitter >= 1e-6).all() and torch.isfinite(res.jitter).all()
    assert (objective(A, b, res.theta) >= objective(A, b, active_set(A, b).theta) - 1e-6).all()
    assert (objective(A, b, res.theta) < 0).all()  # each reconstructs something


def test_zero_right_hand_side_gives_zero_weights(engine):
    """b = 0 (a zero query, or candidates decoupled by the NNK functions): nothing is kept."""
    A = torch.eye(5, dtype=torch.float64).expand(2, 5, 5).clone()
    res = pruning(A, torch.zeros(2, 5, dtype=torch.float64), engine=engine)
    assert (res.theta == 0).all() and res.converged.all() and torch.isinf(res.pivot).all()


def test_float32_systems():
    """float32 (torch engine): well-conditioned systems give the float64 supports; rank-deficient
    ones (the 1e-8 jitter is below float32 resolution) get the shift and stay finite."""
    A, b = kernel_systems("gaussian", seed=11, n=80, d=4, k=15)
    res, ref = pruning(A.float(), b.float()), pruning(A, b, engine="torch")
    assert res.theta.dtype == torch.float32 and torch.equal(res.theta > 0, ref.theta > 0)
    assert torch.allclose(res.theta.double(), ref.theta, atol=1e-5)
    A, b = kernel_systems("cosine", seed=11, n=80, d=4, k=15)
    res = pruning(A.float(), b.float())
    assert torch.isfinite(res.theta).all() and (res.jitter > 0).all()


def test_invalid_arguments_raise():
    A, b = kernel_systems("cosine", seed=12, n=40)
    with pytest.raises(ValueError, match="tol must be a number in"):
        pruning(A, b, tol=1.5)
    with pytest.raises(ValueError, match="engine must be one of"):
        pruning(A, b, engine="gpu")


# ----------------------------------------------------------------------------- the NNK entry points


def points(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).standard_normal((n, d)))


@pytest.mark.parametrize(
    "kernel,sigma,tol",
    [("cosine", None, 1e-6), ("gaussian", None, 1e-6), ("gaussian", 0.7, 1e-6), ("cosine", None, 0.05)],
)
def test_nnk_neighbors_matches_the_reference_query_by_query(kernel, sigma, tol):
    """nnk_neighbors(solver="pruning"): candidates from the oracle, weights from the loop."""
    X = points(150, 5, seed=13)
    r = nnk_neighbors(X, k=12, kernel=kernel, sigma=sigma, solver="pruning", pruning_tol=tol)
    for i in range(0, 150, 5):
        S, _, _, sig = oracles.nnk_query(X.numpy(), i, 12, kernel, sigma)
        K = oracles.kernel_matrix(np.vstack([X[i].numpy()[None], X[S].numpy()]), kernel, sig)
        A, b = K[1:, 1:], K[1:, 0]
        theta, _ = pruning_loop(A + 1e-8 * np.eye(12), b, tol)
        assert r.indices[i].tolist() == S.tolist()
        assert np.allclose(r.weights[i].numpy(), theta, atol=1e-9)
        assert int(r.count[i]) == int((theta > 0).sum())
        assert np.isclose(float(r.error[i]), 1 - 2 * b @ theta + theta @ A @ theta, atol=1e-9)
    assert r.options["solver"] == "pruning" and r.options["pruning_tol"] == tol


def test_nnk_neighbors_duplicates_and_zero_vectors():
    """Copies and zero vectors under the pruning solver: flags, shared weights, no NaN."""
    X = points(60, 3, seed=15)
    X[1] = X[0]
    X[[5, 9]] = 0
    r = nnk_neighbors(X, k=6, kernel="cosine", solver="pruning")
    assert bool(r.duplicate[0]) and float(r.error[0]) < 1e-12 and int(r.count[0]) == 1
    assert int(r.count[5]) == 0 and float(r.error[5]) == 1.0 and bool(r.zero[5])
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.error).all()
    d = nnk_neighbors(X, k=6, kernel="cosine", solver="pruning", duplicates="drop")
    row = d.indices[0].tolist()
    assert float(d.weights[0, row.index(1)]) == 0 and int(d.count[0]) >= 1


def test_nnk_neighbors_singular_systems_without_jitter_are_finite():
    """k = 20 > d + 1 with jitter = 0: every kernel system is singular; results are finite."""
    X = points(100, 3, seed=16)
    r = nnk_neighbors(X, k=20, kernel="cosine", solver="pruning", jitter=0.0)
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.error).all()
    assert (r.count >= 1).all()


def test_graph_and_channel_functions_take_the_pruning_solver():
    """nnk_graph, channel_overlap, channel_loo_error, layer_overlap: pruning results, recorded."""
    X = points(80, 4, seed=17)
    W = nnk_graph(X, k=8, solver="pruning")
    ref = nnk_neighbors(X, k=8, solver="pruning")
    assert (W != W.T).nnz == 0 and W.nnz <= 2 * int(ref.count.sum())
    a = torch.randn(70, 3, 3, 3, generator=torch.Generator().manual_seed(18)).relu()
    ov = channel_overlap(a, k=8, solver="pruning", return_neighbors=True)
    for c in range(3):
        per = nnk_neighbors(a[:, c].flatten(1), k=8, duplicates="drop", solver="pruning")
        assert torch.allclose(ov.weights[c], per.weights, atol=1e-12)
    d = json.loads(json.dumps(ov.to_dict()))
    assert d["options"]["solver"] == "pruning" and d["options"]["pruning_tol"] == 1e-6
    y = torch.arange(70) % 2
    loo_p = channel_loo_error(a, y, k=8, solver="pruning")
    assert torch.allclose(loo_p, channel_overlap(a, k=8, labels=y, solver="pruning").loo_error)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3))
    res = layer_overlap(net, torch.randn(40, 1, 7, 7), k=5, solver="pruning")
    assert all(r.options["solver"] == "pruning" for r in res.values())


def test_exact_summary_has_no_pruning_tolerance():
    """summary() names the solver; the tolerance only where the solver uses it."""
    assert "pruning_tol" not in NNKOptions().summary()
    assert NNKOptions(solver="pruning", pruning_tol=1e-4).summary()["pruning_tol"] == 1e-4


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"pruning_tol": 1.0}, ValueError, r"pruning_tol must be a number in \[0, 1\), got 1.0"),
        ({"pruning_tol": -1e-6}, ValueError, "pruning_tol must be a number in"),
        ({"pruning_tol": "1e-6"}, TypeError, "pruning_tol must be a number in"),
        (
            {"solver": "pruning", "solver_options": {"tol": 1e-4}},
            ValueError,
            r"solver_options\['tol'\] of solver='pruning' is the option pruning_tol=",
        ),
        (
            {"solver": "pruning", "solver_options": {"kkt_tol": 1e-4}},
            ValueError,
            "must be keywords of pruning",
        ),
    ],
)
def test_pruning_options_are_validated(kwargs, err, match):
    with pytest.raises(err, match=match):
        NNKOptions(**kwargs)


def test_solver_options_reach_the_pruning_solver():
    """solver_options={"engine": ..., "max_iter": ...} are passed through."""
    X = points(90, 5, seed=19)
    one = nnk_neighbors(X, k=10, solver="pruning", solver_options={"max_iter": 1, "engine": "torch"})
    full = nnk_neighbors(X, k=10, solver="pruning", solver_options={"engine": "torch"})
    assert not bool(one.converged.all()) and bool(full.converged.all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """The torch path on CUDA: the solver's results and the NNK neighbourhoods of the CPU."""
    A, b = kernel_systems("gaussian", seed=20)
    cpu, gpu = pruning(A, b, engine="torch"), pruning(A.cuda(), b.cuda())
    assert torch.equal(cpu.theta > 0, gpu.theta.cpu() > 0) and torch.allclose(cpu.theta, gpu.theta.cpu(), atol=1e-10)
    X = points(100, 5, seed=21)
    r, g = nnk_neighbors(X, k=8, solver="pruning"), nnk_neighbors(X.cuda(), k=8, solver="pruning")
    assert torch.equal(r.indices, g.indices.cpu()) and torch.allclose(r.weights, g.weights.cpu(), atol=1e-9)
