r"""Compiled exact NNK solver (optional; needs ``numba``).

Solves, for every system :math:`(A, b)` of a batch,

.. math::
    \theta^\star = \arg\min_{\theta\ge 0}\ \tfrac12\,\theta^\top A\,\theta - b^\top\theta

by Lawson--Hanson on the Gram form, one system at a time, with the Cholesky factor of
:math:`A_{PP}` kept up to date: a variable entering the passive set :math:`P` appends one row
(:math:`O(|P|^2)`), a removal refactors :math:`A_{PP}` (rare). The rules match
:func:`convsim.nnk.solvers.active_set`: the free variable with the largest gradient
:math:`w_j=(b-A\theta)_j>` ``tol`` enters when its pivot (Schur complement
:math:`A_{jj}-A_{jP}A_{PP}^{-1}A_{Pj}`) exceeds ``pivot_tol``, else it is blocked for good; the
result gets one step of iterative refinement and its KKT violation is measured. The batch is split
over threads with ``prange``. :func:`solve_batch` is the entry point; callers fall back to the
torch solver for systems whose status is not 0.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

__all__ = ["solve_batch", "OK", "MAX_ITER", "KKT"]

OK, MAX_ITER, KKT = 0, 1, 2  # status codes


@njit(cache=True, nogil=True, error_model="numpy")
def _factor(A, idx, p, L):
    """Cholesky of A[idx[:p], idx[:p]] into L[:p, :p]; False if a pivot is not positive."""
    for r in range(p):
        ir = idx[r]
        for c in range(r + 1):
            s = A[ir, idx[c]]
            for t in range(c):
                s -= L[r, t] * L[c, t]
            if r == c:
                if s <= 0.0:
                    return False
                L[r, r] = np.sqrt(s)
            else:
                L[r, c] = s / L[c, c]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _chol_solve(L, p, rhs, out):
    """out[:p] = (L L^T)^{-1} rhs[:p]."""
    for r in range(p):
        s = rhs[r]
        for t in range(r):
            s -= L[r, t] * out[t]
        out[r] = s / L[r, r]
    for r in range(p - 1, -1, -1):
        s = out[r]
        for t in range(r + 1, p):
            s -= L[t, r] * out[t]
        out[r] = s / L[r, r]


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient(A, b, x, idx, p, w):
    """w = b - A x for x supported on idx[:p]."""
    k = b.shape[0]
    for i in range(k):
        s = b[i]
        for r in range(p):
            s -= A[i, idx[r]] * x[idx[r]]
        w[i] = s


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_one(A, b, tol, pivot_tol, max_iter, kkt_tol, theta,
               L, idx, inP, blocked, x, z, w, rhs, v):
    """Lawson--Hanson for one system; writes theta. Returns (status, kkt, pivot, iterations)."""
    k = b.shape[0]
    for i in range(k):
        inP[i] = False
        blocked[i] = False
        x[i] = 0.0
        w[i] = b[i]
    p = 0
    it = 0
    status = OK
    factored = True
    while True:  # iterations are counted as in the torch solver: the final check is one
        if it >= max_iter:
            status = MAX_ITER
            break
        it += 1
        # entering variable: the largest gradient among free, unblocked variables
        j = -1
        wmax = tol
        for i in range(k):
            if not inP[i] and not blocked[i] and w[i] > wmax:
                wmax = w[i]
                j = i
        if j < 0:
            break
        # pivot of j: v = L^{-1} A_Pj, s = A_jj - |v|^2
        s = A[j, j]
        for r in range(p):
            t = A[idx[r], j]
            for c in range(r):
                t -= L[r, c] * v[c]
            v[r] = t / L[r, r]
            s -= v[r] * v[r]
        if not s > pivot_tol:  # numerically dependent on the passive set: never try again
            blocked[j] = True
            continue
        for c in range(p):
            L[p, c] = v[c]
        L[p, p] = np.sqrt(s)
        idx[p] = j
        inP[j] = True
        p += 1
        added = True
        while True:  # inner loop: keep the iterate feasible
            for r in range(p):
                rhs[r] = b[idx[r]]
            _chol_solve(L, p, rhs, z)
            alpha = 2.0
            rmin = -1
            for r in range(p):
                if z[r] <= 0.0:
                    xr = x[idx[r]]
                    d = xr - z[r]
                    a = xr / d if d > 0.0 else 0.0
                    if a < alpha:
                        alpha = a
                        rmin = r
            if rmin < 0:  # the subspace solution is feasible
                for r in range(p):
                    x[idx[r]] = z[r]
                break
            if added and rmin == p - 1 and alpha <= 0.0:
                # the variable just added cannot move (rounding): block it instead of cycling
                p -= 1
                inP[j] = False
                blocked[j] = True
                break
            added = False
            if it >= max_iter:
                status = MAX_ITER
                break
            it += 1
            # move to the boundary; drop the variable that hits zero and any other at zero
            q = 0
            for r in range(p):
                i = idx[r]
                xi = x[i] + alpha * (z[r] - x[i])
                if r != rmin and xi > 0.0:
                    x[i] = xi
                    idx[q] = i
                    q += 1
                else:
                    x[i] = 0.0
                    inP[i] = False
            p = q
            if not _factor(A, idx, p, L):
                status = KKT
                factored = False
                break
        if status != OK:
            break
        _gradient(A, b, x, idx, p, w)

    # one step of iterative refinement on the support, then clip
    for i in range(k):
        theta[i] = 0.0
    if not factored:  # L is not usable: report the iterate as it is
        for r in range(p):
            theta[idx[r]] = x[idx[r]]
    elif p > 0:
        _gradient(A, b, x, idx, p, w)
        for r in range(p):
            rhs[r] = w[idx[r]]
        _chol_solve(L, p, rhs, z)
        for r in range(p):
            t = x[idx[r]] + z[r]
            theta[idx[r]] = t if t > 0.0 else 0.0
    # KKT violation: |g| on the support, (-g)^+ off it, g = A theta - b
    kkt = 0.0
    for i in range(k):
        g = -b[i]
        for r in range(p):
            g += A[i, idx[r]] * theta[idx[r]]
        e = abs(g) if theta[i] > 0.0 else (-g if g < 0.0 else 0.0)
        if e > kkt:
            kkt = e
    # pivot: min over the support of 1 / (A_PP^{-1})_rr = 1 / |column r of L^{-1}|^2
    pivot = np.inf
    for r in range(p):  # column r of L^{-1}: solve L u = e_r (u[:r] = 0)
        nrm = 0.0
        for c in range(r, p):
            t = 1.0 if c == r else 0.0
            for s_ in range(r, c):
                t -= L[c, s_] * v[s_]
            v[c] = t / L[c, c]
            nrm += v[c] * v[c]
        if nrm > 0.0 and 1.0 / nrm < pivot:
            pivot = 1.0 / nrm
    if status == OK and not kkt <= kkt_tol:
        status = KKT
    return status, kkt, pivot, it


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _solve_all(A, b, tol, pivot_tol, max_iter, kkt_tol, nchunks, theta, status, kkt, pivot, iters):
    B, k = b.shape
    step = (B + nchunks - 1) // nchunks
    for c in prange(nchunks):  # scratch is allocated once per chunk, not per system
        L = np.zeros((k + 1, k + 1))
        idx = np.zeros(k + 1, np.int64)
        inP = np.zeros(k, np.bool_)
        blocked = np.zeros(k, np.bool_)
        x = np.zeros(k)
        z = np.zeros(k + 1)
        w = np.zeros(k)
        rhs = np.zeros(k + 1)
        v = np.zeros(k + 1)
        for s in range(c * step, min(B, (c + 1) * step)):
            st, e, pv, n = _solve_one(A[s], b[s], tol, pivot_tol, max_iter, kkt_tol, theta[s],
                                      L, idx, inP, blocked, x, z, w, rhs, v)
            status[s] = st
            kkt[s] = e
            pivot[s] = pv
            iters[s] = n


def solve_batch(A: np.ndarray, b: np.ndarray, *, tol: float = 1e-10, pivot_tol: float = 1e-13,
                max_iter: int = 1000, kkt_tol: float = 1e-8, threads: int | None = None):
    r"""Exact NNK for a batch: :math:`\min_{\theta\ge0}\tfrac12\theta^\top A\theta-b^\top\theta`.

    Args:
        A: (B, k, k) float64 symmetric positive (semi-)definite matrices.
        b: (B, k) float64 right-hand sides.
        tol, pivot_tol, max_iter, kkt_tol: as in :func:`convsim.nnk.solvers.active_set`.
        threads: worker threads (``None``: numba's default, the number of cores).

    Returns:
        ``(theta (B, k), status (B,) int8, kkt (B,), pivot (B,), iterations (B,) int64)``; status is
        ``OK`` (0), ``MAX_ITER`` (1, iteration limit) or ``KKT`` (2, KKT violation above
        ``kkt_tol`` or a failed refactorisation).

    Example:
        >>> A = np.array([[[2.0, 1.0], [1.0, 2.0]]]); b = np.array([[1.0, -1.0]])
        >>> solve_batch(A, b)[0]
        array([[0.5, 0. ]])
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2] or b.shape != A.shape[:2]:
        raise ValueError(f"expected A (B, k, k) and b (B, k), got {A.shape} and {b.shape}")
    B, k = b.shape
    theta = np.zeros((B, k))
    status = np.zeros(B, np.int8)
    kkt = np.zeros(B)
    pivot = np.full(B, np.inf)
    iters = np.zeros(B, np.int64)
    if B:
        n = numba.config.NUMBA_NUM_THREADS if threads is None else max(1, min(int(threads),
                                                                         numba.config.NUMBA_NUM_THREADS))
        old = numba.get_num_threads()
        numba.set_num_threads(n)
        try:
            # a few chunks per thread, handed out one at a time, so one slow (or descheduled)
            # thread does not hold the rest
            chunk = numba.set_parallel_chunksize(1)
            try:
                _solve_all(A, b, float(tol), float(pivot_tol), int(max_iter), float(kkt_tol), min(B, 8 * n),
                           theta, status, kkt, pivot, iters)
            finally:
                numba.set_parallel_chunksize(chunk)
        finally:
            numba.set_num_threads(old)
    return theta, status, kkt, pivot, iters
