"""The compiled (numba) selection and kernel-system builders against loop oracles, and the
compiled and torch-only paths of nnk_neighbors against each other."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("numba", reason="the compiled NNK kernels need numba (pip install 'convsim[fast]')")

from convsim.nnk import _numba, channel_overlap, compiled_kernels, nnk_neighbors, search  # noqa: E402
from convsim.nnk.solvers import use_compiled  # noqa: E402


def smallest_k_oracle(S, k, exclude):
    """Row by row: drop the excluded column and non-finite entries, stable sort, pad with inf/-1."""
    vals, cols = np.full((len(S), k), np.inf, S.dtype), np.full((len(S), k), -1)
    for r, row in enumerate(S):
        keep = [j for j in range(len(row)) if j != exclude[r] and np.isfinite(row[j])]
        order = sorted(keep, key=lambda j: (row[j], j))[:k]
        vals[r, : len(order)], cols[r, : len(order)] = row[order], order
    return vals, cols


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 40, 5), (30, 200, 31), (5, 12, 12)])
def test_smallest_k_matches_stable_sort(dtype, m, n, k):
    """Random integer scores (many ties), some inf, one excluded column per row."""
    rng = np.random.default_rng(m * n + k)
    S = rng.integers(0, 6, (m, n)).astype(dtype)
    S[rng.random((m, n)) < 0.1] = np.inf
    exclude = rng.integers(-1, n, m)
    val, col = _numba.smallest_k(S, k, exclude)
    ref_val, ref_col = smallest_k_oracle(S, k, exclude)
    assert val.dtype == dtype
    assert np.array_equal(col, ref_col)
    assert np.array_equal(val, ref_val)


def test_smallest_k_thread_count_does_not_change_results():
    S = np.random.default_rng(1).standard_normal((300, 500))
    a = _numba.smallest_k(S, 20, threads=1)
    b = _numba.smallest_k(S, 20, threads=2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_smallest_k_checks_its_arguments():
    with pytest.raises(ValueError, match=r"k must be in \[1, n=3\]"):
        _numba.smallest_k(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="float32/float64"):
        _numba.smallest_k(np.zeros((2, 3), np.int64), 1)
    with pytest.raises(ValueError, match=r"exclude must have shape \(2,\)"):
        _numba.smallest_k(np.zeros((2, 3)), 1, np.zeros(3, np.int64))


@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("n,f,S,k", [(5, 1, 3, 1), (40, 7, 25, 6), (60, 33, 10, 30)])
def test_kernel_systems_match_loops(clamp, n, f, S, k):
    """m[s, a] = U[i_a].Vq[s] and M[s, a, b] = U[i_a].V[i_b] (upper triangle, mirrored), clamped at 0."""
    rng = np.random.default_rng(n + f + k)
    U, V, Vq = rng.standard_normal((n, f)), rng.standard_normal((n, f)), rng.standard_normal((S, f))
    idx = rng.integers(0, n, (S, k))
    m, M = _numba.kernel_systems(U, V, Vq, idx, clamp=clamp)
    for s in range(S):
        for a in range(k):
            ref = sum(U[idx[s, a], t] * Vq[s, t] for t in range(f))
            assert np.isclose(m[s, a], max(ref, 0.0) if clamp else ref, rtol=1e-12, atol=1e-12)
            for b in range(k):
                i, j = min(a, b), max(a, b)
                ref = sum(U[idx[s, i], t] * V[idx[s, j], t] for t in range(f))
                assert np.isclose(M[s, a, b], max(ref, 0.0) if clamp else ref, rtol=1e-12, atol=1e-12)
    assert np.array_equal(M, M.transpose(0, 2, 1))


def test_kernel_systems_check_indices():
    with pytest.raises(ValueError, match="must index the 3 rows"):
        _numba.kernel_systems(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((1, 2)), np.array([[0, 3]]))


def test_compiled_and_torch_search_give_the_same_candidates():
    """All points as queries (self excluded), external queries, and banned points."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 150, 6, generator=g)
    Q = torch.randn(2, 40, 6, generator=g)
    banned = torch.zeros(2, 150, dtype=torch.bool)
    banned[:, ::9] = True
    for kw in ({}, {"queries": Q}, {"banned": banned}, {"query_index": torch.arange(0, 150, 4)}):
        with compiled_kernels(True):
            a = list(search.candidate_blocks(X, 12, **kw))
        with compiled_kernels(False):
            b = list(search.candidate_blocks(X, 12, **kw))
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x.index, y.index)
            assert torch.allclose(x.dist2, y.dist2)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_nnk_neighbors_same_with_and_without_compiled_kernels(kernel):
    """End to end, with a zero vector and a duplicate pair among the points."""
    X = torch.randn(200, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    X[7] = 0
    X[11] = X[12]
    with compiled_kernels(True):
        a = nnk_neighbors(X, k=15, kernel=kernel)
    with compiled_kernels(False):
        b = nnk_neighbors(X, k=15, kernel=kernel)
    # the copies tie in every other query's list, where the two paths may order them differently
    assert torch.equal(dense(a.indices, a.indices >= 0), dense(b.indices, b.indices >= 0))
    assert torch.allclose(dense(a.indices, a.weights), dense(b.indices, b.weights), atol=1e-10)
    assert torch.equal(a.count, b.count)
    assert torch.equal(a.duplicate, b.duplicate) and torch.equal(a.zero, b.zero)
    assert torch.allclose(a.error, b.error, atol=1e-10)


def dense(indices, values):
    """(n, k) candidate lists as an (n, n + 1) matrix (column n collects the -1 padding)."""
    n = indices.shape[0]
    out = torch.zeros(n, n + 1, dtype=torch.float64)
    return out.scatter_(1, torch.where(indices >= 0, indices, n), values.to(torch.float64))


def test_channel_overlap_same_with_and_without_compiled_kernels():
    acts = torch.randn(120, 4, 3, 3, generator=torch.Generator().manual_seed(5)).relu()
    with compiled_kernels(True):
        a = channel_overlap(acts, k=10)
    with compiled_kernels(False):
        b = channel_overlap(acts, k=10)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.aggregate_counts, b.aggregate_counts)
    assert torch.allclose(a.weighted_overlap, b.weighted_overlap, atol=1e-9)


def test_compiled_kernels_nest_and_restore():
    assert use_compiled()
    with compiled_kernels(False):
        assert not use_compiled()
        with compiled_kernels(True):
            assert use_compiled()
        assert not use_compiled()
    assert use_compiled()


def test_environment_variable_switches_the_compiled_kernels_off():
    code = "from convsim.nnk.solvers import use_compiled; print(use_compiled())"
    env = {**os.environ, "CONVSIM_NUMBA": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
