"""The compiled (numba) exact NNK solver against the torch exact solver: what only the compiled
engine has (fallback, threads, dtype handling, engine choice). The oracle tests (scipy's NNLS, KKT,
rank-deficient and degenerate systems) run on both engines in test_nnk_solvers.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba", reason="the compiled NNK solver needs numba (pip install 'convsim[fast]')")

import test_nnk_oracles as oracles  # noqa: E402
from convsim.nnk import _numba, nnk_neighbors, solvers  # noqa: E402
from convsim.nnk.solvers import active_set  # noqa: E402
from test_nnk_solvers import random_systems  # noqa: E402


def both(A, b, **kw):
    return active_set(A, b, engine="numba", **kw), active_set(A, b, engine="torch", **kw)


def duplicate_systems(B=40, k=10, d=5, seed=0, jitter=1e-8, query_copy=True):
    """Cosine NNK systems whose candidates come in exact copies (one also copies the query)."""
    rng = np.random.default_rng(seed)
    As, bs = [], []
    for _ in range(B):
        Z = rng.standard_normal((k // 2 + 1, d))
        Z = np.vstack([Z[:1], Z[1:], Z[1:]])  # the query, then every candidate twice
        if query_copy:
            Z[2] = Z[0]
        U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        K = 0.5 + 0.5 * U @ U.T
        As.append(K[1:, 1:] + jitter * np.eye(k))
        bs.append(K[1:, 0])
    return torch.tensor(np.array(As)), torch.tensor(np.array(bs))


@pytest.mark.parametrize("k", [2, 9, 25, 40])
def test_numba_matches_torch_engine(k):
    """Same supports, weights, iteration counts and pivots as the torch exact solver."""
    A, b = random_systems(50, k, seed=20 + k)
    nb, tr = both(A, b)
    assert torch.equal(nb.theta > 0, tr.theta > 0)
    assert torch.allclose(nb.theta, tr.theta, atol=1e-10)
    assert torch.equal(nb.iterations, tr.iterations)
    assert torch.allclose(nb.pivot, tr.pivot, rtol=1e-8)
    assert bool(nb.converged.all()) and float(nb.kkt.max()) < 1e-12


@pytest.mark.parametrize("query_copy", [True, False])
def test_numba_on_duplicate_candidates_agrees_with_torch(query_copy):
    """Exact copies (jittered Gram, pivots ~2e-8): the objective and KKT match the torch solver's."""
    A, b = duplicate_systems(query_copy=query_copy)
    nb, tr = both(A, b)
    assert torch.allclose(solvers.objective(A, b, nb.theta), solvers.objective(A, b, tr.theta), atol=1e-12)
    assert torch.allclose(nb.theta, tr.theta, atol=1e-6)
    assert bool(nb.converged.all()) and float(nb.kkt.max()) < 1e-8


def test_numba_on_singular_gram_blocks_dependent_columns():
    """Copies without jitter (A exactly singular): dependent columns never enter; optimal anyway."""
    A, b = duplicate_systems(jitter=0.0, seed=1, query_copy=False)
    nb, tr = both(A, b)
    assert bool((nb.iterations > (nb.theta > 0).sum(1) + 1).any())  # some pivots were refused
    for s in range(A.shape[0]):
        a, bb = A[s].numpy(), b[s].numpy()
        P = nb.theta[s].numpy() > 0
        assert np.linalg.matrix_rank(a[np.ix_(P, P)]) == P.sum()  # a well-posed support
        assert oracles.objective(a, bb, nb.theta[s].numpy()) <= oracles.objective(a, bb, tr.theta[s].numpy()) + 1e-12
    assert float(nb.kkt.max()) < 1e-8


def test_numba_unsettled_systems_fall_back_to_torch():
    """At the iteration limit the rows are re-solved by torch: results equal the torch path's."""
    A, b = random_systems(12, 8, seed=9)
    _, status, *_ = _numba.solve_batch(A.numpy(), b.numpy(), max_iter=2)
    assert (status == _numba.MAX_ITER).any()
    nb, tr = both(A, b, max_iter=2)
    assert torch.equal(nb.theta, tr.theta)
    assert torch.equal(nb.converged, tr.converged)


def test_numba_thread_count_does_not_change_results():
    """Each system is solved by one thread, so 1 and 2 threads agree bit for bit."""
    A, b = random_systems(64, 12, seed=11)
    assert torch.equal(
        active_set(A, b, engine="numba", threads=1).theta, active_set(A, b, engine="numba", threads=2).theta
    )


def test_numba_float32_input_keeps_dtype():
    """float32 systems are solved in float64 and returned in float32."""
    A, b = random_systems(10, 7, seed=12)
    res = active_set(A.float(), b.float(), engine="numba")
    assert res.theta.dtype == torch.float32 and res.kkt.dtype == torch.float32
    assert torch.allclose(res.theta.double(), active_set(A.float().double(), b.float().double()).theta, atol=1e-12)


def test_auto_engine_uses_numba_for_float64_cpu_only(monkeypatch):
    """ "auto" calls the compiled solver for float64 CPU tensors, torch for float32 or "torch"."""
    calls = []
    real = _numba.solve_batch

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(_numba, "solve_batch", spy)
    A, b = random_systems(4, 5, seed=13)
    active_set(A, b)
    assert len(calls) == 1
    active_set(A.float(), b.float())
    active_set(A, b, engine="torch")
    assert len(calls) == 1


def test_nnk_neighbors_same_with_either_engine():
    """End to end (solver_options={"engine": ...}): NNK graphs with the numba and the torch solver coincide."""
    X = torch.randn(150, 6, generator=torch.Generator().manual_seed(14))
    a = nnk_neighbors(X, k=12, solver_options={"engine": "numba"})
    t = nnk_neighbors(X, k=12, solver_options={"engine": "torch"})
    assert torch.equal(a.count, t.count)
    assert torch.allclose(a.weights, t.weights, atol=1e-10)


def test_bad_engine_raises():
    A, b = random_systems(2, 3, seed=15)
    with pytest.raises(ValueError, match="engine must be one of"):
        active_set(A, b, engine="cuda")


def test_numba_engine_without_numba_raises(monkeypatch):
    A, b = random_systems(2, 3, seed=16)
    monkeypatch.setattr(solvers, "_numba_module", lambda: None)  # what a failed `import numba` leaves
    with pytest.raises(ImportError, match="needs numba"):
        active_set(A, b, engine="numba")
    assert torch.equal(active_set(A, b).theta, active_set(A, b, engine="torch").theta)  # auto: torch


def test_solve_batch_checks_shapes():
    with pytest.raises(ValueError, match=r"expected A \(B, k, k\)"):
        _numba.solve_batch(np.zeros((2, 3, 3)), np.zeros((2, 4)))
