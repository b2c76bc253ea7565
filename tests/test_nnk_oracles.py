"""Slow float64 NNK references (numpy loops + scipy.optimize.nnls), used by the other NNK tests.

The tests in this file only check the references themselves against closed forms.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize


def nnls_cholesky(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_{x>=0} 1/2 x'Ax - b'x through scipy's NNLS on the Cholesky form (spec §1.2)."""
    L = np.linalg.cholesky(A)
    return scipy.optimize.nnls(L.T, scipy.linalg.solve_triangular(L, b, lower=True))[0]


def objective(A: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    return float(0.5 * x @ A @ x - b @ x)


def kernel_matrix(P: np.ndarray, kernel: str, sigma: float | None = None) -> np.ndarray:
    """Kernel among the rows of P: cosine 0.5 + 0.5 cos, or Gaussian exp(-d^2 / 2 sigma^2)."""
    P = np.asarray(P, dtype=np.float64)
    if kernel == "cosine":
        U = P / np.linalg.norm(P, axis=1, keepdims=True)
        K = 0.5 + 0.5 * U @ U.T
    else:
        D2 = ((P[:, None, :] - P[None, :, :]) ** 2).sum(-1)
        K = np.exp(-D2 / (2 * sigma**2))
    np.fill_diagonal(K, 1.0)
    return K


def nnk_query(X, i, k, kernel, sigma=None, jitter=1e-8, query=None):
    """NNK of one query by the book: candidates (self excluded by index), kernel, NNLS, error.

    Returns (candidates, theta, error, sigma_used). ``query`` scores an outside point instead.
    """
    X = np.asarray(X, dtype=np.float64)
    x = X[i] if query is None else np.asarray(query, dtype=np.float64)
    d = np.sqrt(((X - x) ** 2).sum(1))
    if query is None:
        d[i] = np.inf
    S = np.argsort(d, kind="stable")[:k]
    if kernel == "gaussian" and sigma is None:
        sigma = d[S[-1]] / 3
    K = kernel_matrix(np.vstack([x[None], X[S]]), kernel, sigma)
    A, b = K[1:, 1:], K[1:, 0]
    theta = nnls_cholesky(A + jitter * np.eye(k), b)
    err = 1 - 2 * b @ theta + theta @ A @ theta
    return S, theta, err, sigma


def test_nnls_cholesky_matches_closed_form_when_unconstrained():
    """With a positive unconstrained solution the oracle returns A^{-1} b."""
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    b = np.array([1.0, 1.0])
    assert np.allclose(nnls_cholesky(A, b), np.linalg.solve(A, b))


def test_nnk_query_two_collinear_candidates_keeps_the_nearer():
    """On a line, the farther candidate behind the nearer one gets weight 0."""
    X = np.array([[0.0], [1.0], [2.0]])
    S, theta, err, _ = nnk_query(X, 0, 2, "gaussian", sigma=1.0, jitter=0.0)
    assert list(S) == [1, 2] and theta[0] > 0 and theta[1] == 0
    assert np.isclose(theta[0], np.exp(-0.5))
    assert np.isclose(err, 1 - np.exp(-1.0))
