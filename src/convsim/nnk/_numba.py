r"""Compiled NNK kernels (optional; need ``numba``): candidate selection, kernel systems, exact solver.

:func:`kernel_systems` forms each query's k x k system from per-point feature rows without
materialising the gathered rows (one fused pass instead of a gather and a small batched product).

:func:`smallest_k` keeps, per row of a score matrix, the k smallest entries in one scan with a
sorted buffer (an entry that does not beat the buffer's worst costs one comparison), where
``topk`` runs a partial sort of every row.

:func:`solve_batch` solves, for every system :math:`(A, b)` of a batch,

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

:func:`pruning_batch` runs the released one-way pruning solver (``solver="pruning"``, rules in
:func:`convsim.nnk.solvers.pruning`) one system at a time: each round is one Cholesky of the kept
block, :math:`O(|F|^3)`, where the batched torch path factors a full k x k matrix per system.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

__all__ = ["solve_batch", "pruning_batch", "smallest_k", "kernel_systems", "OK", "MAX_ITER", "KKT"]

OK, MAX_ITER, KKT = 0, 1, 2  # status codes


@njit(cache=True, nogil=True, error_model="numpy")
def _factor(A, idx, p, L, dinv):
    """Cholesky of A[idx[:p], idx[:p]] into L[:p, :p], dinv = 1/diag; False if a pivot is not positive."""
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
                dinv[r] = 1.0 / L[r, r]
            else:
                L[r, c] = s * dinv[c]
    return True


# The triangular solves below are written so that the innermost loop updates independent entries
# (an axpy), not a dot product whose additions wait on each other (measured at k = 30: a third
# less time for the whole solver).


@njit(cache=True, nogil=True, error_model="numpy")
def _forward(L, dinv, p, out):
    """out[:p] <- L^{-1} out[:p]."""
    for c in range(p):
        oc = out[c] * dinv[c]
        out[c] = oc
        for r in range(c + 1, p):
            out[r] -= L[r, c] * oc


@njit(cache=True, nogil=True, error_model="numpy")
def _backward(L, dinv, p, out):
    """out[:p] <- L^{-T} out[:p] (row r of L is contiguous)."""
    for r in range(p - 1, -1, -1):
        o = out[r] * dinv[r]
        out[r] = o
        for t in range(r):
            out[t] -= L[r, t] * o


@njit(cache=True, nogil=True, error_model="numpy")
def _gradient(A, b, x, idx, p, w):
    """w = b - A x for x supported on idx[:p] (A symmetric: rows are read, contiguously)."""
    k = b.shape[0]
    for i in range(k):
        w[i] = b[i]
    for r in range(p):
        c = idx[r]
        xc = x[c]
        for i in range(k):
            w[i] -= A[c, i] * xc


@njit(cache=True, nogil=True, error_model="numpy")
def _min_pivot(L, dinv, p, M, nrm):
    """min over r of 1 / (A_PP^{-1})_rr = 1 / |column r of L^{-1}|^2 (inf when p = 0).

    Builds M = L^{-1} row by row: M[c, :c] = -dinv[c] * sum_s L[c, s] M[s, :c].
    """
    pivot = np.inf
    for c in range(p):
        nrm[c] = 0.0
        for t in range(c + 1):
            M[c, t] = 0.0
        for s_ in range(c):
            ls = L[c, s_]
            for t in range(s_ + 1):
                M[c, t] += ls * M[s_, t]
        for t in range(c):
            M[c, t] *= -dinv[c]
        M[c, c] = dinv[c]
        for t in range(c + 1):
            nrm[t] += M[c, t] * M[c, t]
    for r in range(p):
        if nrm[r] > 0.0 and 1.0 / nrm[r] < pivot:
            pivot = 1.0 / nrm[r]
    return pivot


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_one(A, b, tol, pivot_tol, max_iter, kkt_tol, theta, L, M, dinv, idx, inP, blocked, x, y, z, w, v):
    """Lawson--Hanson for one system; writes theta. Returns (status, kkt, pivot, iterations).

    Keeps y = L^{-1} b_P up to date with L, so each passive solve z = L^{-T} y is one triangular
    solve; a variable entering P appends one entry to y, a removal recomputes it.
    """
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
        for r in range(p):
            v[r] = A[j, idx[r]]
        _forward(L, dinv, p, v)
        s = A[j, j]
        yj = b[j]
        for r in range(p):
            s -= v[r] * v[r]
            yj -= v[r] * y[r]
        if not s > pivot_tol:  # numerically dependent on the passive set: never try again
            blocked[j] = True
            continue
        for c in range(p):
            L[p, c] = v[c]
        L[p, p] = np.sqrt(s)
        dinv[p] = 1.0 / L[p, p]
        y[p] = yj * dinv[p]
        idx[p] = j
        inP[j] = True
        p += 1
        added = True
        while True:  # inner loop: keep the iterate feasible
            for r in range(p):
                z[r] = y[r]
            _backward(L, dinv, p, z)
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
            if not _factor(A, idx, p, L, dinv):
                status = KKT
                factored = False
                break
            for r in range(p):
                y[r] = b[idx[r]]
            _forward(L, dinv, p, y)
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
            z[r] = w[idx[r]]
        _forward(L, dinv, p, z)
        _backward(L, dinv, p, z)
        for r in range(p):
            t = x[idx[r]] + z[r]
            theta[idx[r]] = t if t > 0.0 else 0.0
    # KKT violation: |g| on the support, (-g)^+ off it, g = A theta - b
    kkt = 0.0
    _gradient(A, b, theta, idx, p, w)  # theta is supported on idx[:p]
    for i in range(k):
        g = -w[i]
        e = abs(g) if theta[i] > 0.0 else (-g if g < 0.0 else 0.0)
        if e > kkt:
            kkt = e
    pivot = _min_pivot(L, dinv, p, M, v) if factored else 0.0
    if status == OK and not kkt <= kkt_tol:
        status = KKT
    return status, kkt, pivot, it


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _solve_all(A, b, tol, pivot_tol, max_iter, kkt_tol, nchunks, theta, status, kkt, pivot, iters):
    B, k = b.shape
    step = (B + nchunks - 1) // nchunks
    for c in prange(nchunks):  # scratch is allocated once per chunk, not per system
        L = np.zeros((k + 1, k + 1))
        M = np.zeros((k + 1, k + 1))
        dinv = np.zeros(k + 1)
        idx = np.zeros(k + 1, np.int64)
        inP = np.zeros(k, np.bool_)
        blocked = np.zeros(k, np.bool_)
        x = np.zeros(k)
        y = np.zeros(k + 1)
        z = np.zeros(k + 1)
        w = np.zeros(k)
        v = np.zeros(k + 1)
        for s in range(c * step, min(B, (c + 1) * step)):
            st, e, pv, n = _solve_one(
                A[s], b[s], tol, pivot_tol, max_iter, kkt_tol, theta[s], L, M, dinv, idx, inP, blocked, x, y, z, w, v
            )
            status[s] = st
            kkt[s] = e
            pivot[s] = pv
            iters[s] = n


def solve_batch(
    A: np.ndarray,
    b: np.ndarray,
    *,
    tol: float = 1e-10,
    pivot_tol: float = 1e-13,
    max_iter: int = 1000,
    kkt_tol: float = 1e-8,
    threads: int | None = None,
):
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
        _run_parallel(
            threads,
            B,
            lambda nchunks: _solve_all(
                A,
                b,
                float(tol),
                float(pivot_tol),
                int(max_iter),
                float(kkt_tol),
                nchunks,
                theta,
                status,
                kkt,
                pivot,
                iters,
            ),
        )
    return theta, status, kkt, pivot, iters


def _run_parallel(threads: int | None, m: int, kernel) -> None:
    """Run ``kernel(nchunks)`` over m items on ``threads`` numba threads (``None``: all).

    A few chunks per thread, handed out one at a time, so one slow (or descheduled) thread does
    not hold the rest.
    """
    cap = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set from the environment at import
    n = cap if threads is None else max(1, min(int(threads), cap))
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    chunk = numba.set_parallel_chunksize(1)
    try:
        kernel(min(m, 8 * n))
    finally:
        numba.set_parallel_chunksize(chunk)
        numba.set_num_threads(old)


@njit(cache=True, nogil=True, parallel=True)
def _smallest_k_all(S, kk, exclude, nchunks, val, idx):
    m, n = S.shape
    step = (m + nchunks - 1) // nchunks
    for c in prange(nchunks):
        for r in range(c * step, min(m, (c + 1) * step)):
            row = S[r]
            vb = val[r]
            ib = idx[r]
            skip = exclude[r]
            for t in range(kk):
                vb[t] = np.inf
                ib[t] = -1
            worst = vb[kk - 1]  # inf and NaN entries never enter: they stay padding
            for j in range(n):
                x = row[j]
                if x < worst and j != skip:  # strict: among ties the smaller column stays first
                    p = kk - 1
                    while p > 0 and vb[p - 1] > x:
                        vb[p] = vb[p - 1]
                        ib[p] = ib[p - 1]
                        p -= 1
                    vb[p] = x
                    ib[p] = j
                    worst = vb[kk - 1]


def smallest_k(S: np.ndarray, k: int, exclude: np.ndarray | None = None, *, threads: int | None = None):
    """The ``k`` smallest entries of every row of ``S``, ascending; ties go to the smaller column.

    Args:
        S: (m, n) float32 or float64 scores.
        k: entries to keep per row (``k <= n``).
        exclude: (m,) int64 column to skip in each row (-1: none), e.g. the query itself.
        threads: worker threads (``None``: numba's default, the number of cores).

    Returns:
        ``(values (m, k), columns (m, k) int64)``; a row with fewer than ``k`` eligible (finite,
        not excluded) entries is padded with ``inf`` and -1.

    Example:
        >>> smallest_k(np.array([[3.0, 1.0, 2.0, 1.0]]), 2)
        (array([[1., 1.]]), array([[1, 3]]))
        >>> smallest_k(np.array([[3.0, 1.0, np.inf, 1.0]]), 3, np.array([1]))
        (array([[ 1.,  3., inf]]), array([[ 3,  0, -1]]))
    """
    S = np.ascontiguousarray(S)
    if S.ndim != 2 or S.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected S of shape (m, n) and dtype float32/float64, got {S.shape} {S.dtype}")
    m, n = S.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    exclude = np.full(m, -1, np.int64) if exclude is None else np.ascontiguousarray(exclude, dtype=np.int64)
    if exclude.shape != (m,):
        raise ValueError(f"exclude must have shape ({m},), got {exclude.shape}")
    val = np.empty((m, k), S.dtype)
    idx = np.empty((m, k), np.int64)
    if m:
        _run_parallel(threads, m, lambda nchunks: _smallest_k_all(S, k, exclude, nchunks, val, idx))
    return val, idx


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def _systems_all(U, V, Vq, idx, clamp, nchunks, m, M):
    S, k = idx.shape
    f = U.shape[1]
    step = (S + nchunks - 1) // nchunks
    for c in prange(nchunks):
        for s in range(c * step, min(S, (c + 1) * step)):
            ms = m[s]
            Ms = M[s]
            for a in range(k):
                ua = U[idx[s, a]]
                acc = 0.0
                for t in range(f):  # reassociated: vectorised dot products
                    acc += ua[t] * Vq[s, t]
                ms[a] = 0.0 if clamp and acc < 0.0 else acc
                bb = a
                while bb + 4 <= k:  # four dot products share the loads of ua
                    v0, v1, v2, v3 = V[idx[s, bb]], V[idx[s, bb + 1]], V[idx[s, bb + 2]], V[idx[s, bb + 3]]
                    a0 = a1 = a2 = a3 = 0.0
                    for t in range(f):
                        x = ua[t]
                        a0 += x * v0[t]
                        a1 += x * v1[t]
                        a2 += x * v2[t]
                        a3 += x * v3[t]
                    Ms[a, bb], Ms[a, bb + 1], Ms[a, bb + 2], Ms[a, bb + 3] = a0, a1, a2, a3
                    bb += 4
                while bb < k:
                    vb = V[idx[s, bb]]
                    acc = 0.0
                    for t in range(f):
                        acc += ua[t] * vb[t]
                    Ms[a, bb] = acc
                    bb += 1
            for a in range(k):  # clamp and mirror the upper triangle
                for bb in range(a, k):
                    v = Ms[a, bb]
                    if clamp and v < 0.0:
                        v = 0.0
                    Ms[a, bb] = v
                    Ms[bb, a] = v


def kernel_systems(
    U: np.ndarray, V: np.ndarray, Vq: np.ndarray, idx: np.ndarray, *, clamp: bool = False, threads: int | None = None
):
    r"""Per query s: :math:`m_{sa}=u_{i_a}^\top v^q_s` and :math:`M_{sab}=u_{i_a}^\top v_{i_b}`.

    With ``V`` the same table as ``U`` these are inner products (the cosine kernel); with the
    distance tables of :func:`convsim.nnk.neighbors._features` they are squared distances, and
    ``clamp`` sets their rounding negatives to 0. ``M`` is made exactly symmetric (its upper
    triangle is mirrored), which the solver relies on.

    Args:
        U, V: (n, f) float64 feature tables of the points.
        Vq: (S, f) float64 rows of the queries.
        idx: (S, k) int64 candidate rows of ``U``/``V`` (all valid, >= 0).
        threads: worker threads (``None``: numba's default, the number of cores).

    Returns:
        ``(m (S, k), M (S, k, k))`` float64.

    Example:
        >>> U = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> m, M = kernel_systems(U, U, U[:1], np.array([[1, 2]]))
        >>> m, M
        (array([[0., 1.]]), array([[[4., 2.],
                [2., 2.]]]))
    """
    U, V, Vq = (np.ascontiguousarray(a, dtype=np.float64) for a in (U, V, Vq))
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    S, k = idx.shape
    if U.shape != V.shape or U.ndim != 2 or Vq.shape != (S, U.shape[1]):
        raise ValueError(f"expected U, V (n, f) and Vq (S, f), got {U.shape}, {V.shape}, {Vq.shape}")
    m = np.empty((S, k))
    M = np.empty((S, k, k))
    if S and k:
        if idx.min() < 0 or idx.max() >= U.shape[0]:
            raise ValueError(f"idx must index the {U.shape[0]} rows of U")
        _run_parallel(threads, S, lambda nchunks: _systems_all(U, V, Vq, idx, clamp, nchunks, m, M))
    return m, M


# ------------------------------------------------------------------ released one-way pruning solver


@njit(cache=True, nogil=True, error_model="numpy")
def _factor_shifted(A, idx, p, shift, floor, L, dinv):
    """Cholesky of A[idx[:p], idx[:p]] + shift I into L; False if a squared pivot is <= floor."""
    for r in range(p):
        ir = idx[r]
        for c in range(r + 1):
            s = A[ir, idx[c]]
            for t in range(c):
                s -= L[r, t] * L[c, t]
            if r == c:
                s += shift
                if not s > floor:
                    return False
                L[r, r] = np.sqrt(s)
                dinv[r] = 1.0 / L[r, r]
            else:
                L[r, c] = s * dinv[c]
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _pruning_round(A, b, tol, tries, floor, L, dinv, idx, F, x, y):
    """One round: solve on F (shifted when singular), x = 0 off F. Returns (check, shift)."""
    k = b.shape[0]
    p = 0
    for j in range(k):
        if F[j]:
            idx[p] = j
            p += 1
    shift = 0.0
    if not _factor_shifted(A, idx, p, 0.0, floor, L, dinv):
        shift = tol if tol > floor else floor
        ok = False
        for _ in range(tries):
            if _factor_shifted(A, idx, p, shift, floor, L, dinv):
                ok = True
                break
            shift *= 10.0
        if not ok:  # not finite: solve nothing rather than return NaN
            shift = np.inf
            p = 0
            for j in range(k):
                F[j] = False
    for r in range(p):
        y[r] = b[idx[r]]
    _forward(L, dinv, p, y)
    _backward(L, dinv, p, y)
    for j in range(k):
        x[j] = 0.0
    for r in range(p):
        x[idx[r]] = y[r]
    check = 0.0
    for j in range(k):
        if x[j] < tol and abs(x[j]) > check:
            check = abs(x[j])
        F[j] = F[j] and x[j] > tol
    return check, shift


@njit(cache=True, nogil=True, error_model="numpy")
def _pruning_one(A, b, tol, max_iter, tries, theta, L, M, dinv, idx, F, x, y, nrm, w):
    """The released pruning loop for one system (see convsim.nnk.solvers.pruning); writes theta.

    Returns (converged, rounds, jitter, pivot, kkt).
    """
    k = b.shape[0]
    dmax = 1.0
    for j in range(k):
        if A[j, j] > dmax:
            dmax = A[j, j]
    floor = k * 2.220446049250313e-16 * dmax
    collapse = False
    for j in range(k):
        if b[j] > 1.0 - tol:
            collapse = True
    converged = collapse
    rounds = 0
    jitter = 0.0
    if collapse:
        for j in range(k):
            x[j] = b[j] if b[j] > 1.0 - tol else 0.0
    else:
        for j in range(k):
            F[j] = b[j] > tol
            x[j] = b[j]  # the initial iterate (what max_iter = 0 returns)
        while rounds < max_iter:
            rounds += 1
            check, shift = _pruning_round(A, b, tol, tries, floor, L, dinv, idx, F, x, y)
            if shift > jitter:
                jitter = shift
            if check <= tol:
                converged = True
                break
    p = 0
    for j in range(k):
        theta[j] = 0.0 if x[j] < tol else x[j]
        if theta[j] > 0.0:
            idx[p] = j
            p += 1
    # KKT violation: |g| on the support, (-g)^+ off it, g = A theta - b
    kkt = 0.0
    _gradient(A, b, theta, idx, p, w)  # theta is supported on idx[:p]
    for i in range(k):
        g = -w[i]
        e = abs(g) if theta[i] > 0.0 else (-g if g < 0.0 else 0.0)
        if e > kkt:
            kkt = e
    if p == 0:
        pivot = np.inf
    elif _factor_shifted(A, idx, p, 0.0, 0.0, L, dinv):
        pivot = _min_pivot(L, dinv, p, M, nrm)
    else:
        pivot = 0.0
    return converged, rounds, jitter, pivot, kkt


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _pruning_all(A, b, tol, max_iter, tries, nchunks, theta, converged, rounds, jitter, pivot, kkt):
    B, k = b.shape
    step = (B + nchunks - 1) // nchunks
    for c in prange(nchunks):  # scratch is allocated once per chunk, not per system
        L = np.zeros((k + 1, k + 1))
        M = np.zeros((k + 1, k + 1))
        dinv = np.zeros(k + 1)
        idx = np.zeros(k + 1, np.int64)
        F = np.zeros(k, np.bool_)
        x = np.zeros(k)
        y = np.zeros(k + 1)
        nrm = np.zeros(k + 1)
        w = np.zeros(k)
        for s in range(c * step, min(B, (c + 1) * step)):
            cv, n, jt, pv, kt = _pruning_one(
                A[s], b[s], tol, max_iter, tries, theta[s], L, M, dinv, idx, F, x, y, nrm, w
            )
            converged[s] = cv
            rounds[s] = n
            jitter[s] = jt
            pivot[s] = pv
            kkt[s] = kt


def pruning_batch(
    A: np.ndarray,
    b: np.ndarray,
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
    tries: int = 16,
    threads: int | None = None,
):
    r"""The released one-way pruning solver for a batch, one system per loop (rules of
    :func:`convsim.nnk.solvers.pruning`, which calls this for float64 CPU tensors).

    Args:
        A: (B, k, k) float64 symmetric positive (semi-)definite matrices.
        b: (B, k) float64 right-hand sides (the initial iterate).
        tol: the released ``x_tol`` (= ``eps_low`` = ``eps_high`` = ``check_tol``).
        max_iter: round limit (default ``50 * k``).
        tries: shifts tried on a singular round: ``max(tol, floor)`` times 1, 10, 100, ...
        threads: worker threads (``None``: numba's default, the number of cores).

    Returns:
        ``(theta (B, k), converged (B,) bool, rounds (B,) int64, jitter (B,), pivot (B,), kkt (B,))``.

    Example:
        >>> A = np.array([[[1.0, 0.9], [0.9, 1.0]]]); b = np.array([[0.8, 0.5]])
        >>> pruning_batch(A, b)[0]
        array([[0.8, 0. ]])
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2] or b.shape != A.shape[:2]:
        raise ValueError(f"expected A (B, k, k) and b (B, k), got {A.shape} and {b.shape}")
    B, k = b.shape
    max_iter = 50 * k if max_iter is None else int(max_iter)
    theta = np.zeros((B, k))
    converged = np.zeros(B, np.bool_)
    rounds = np.zeros(B, np.int64)
    jitter = np.zeros(B)
    pivot = np.full(B, np.inf)
    kkt = np.zeros(B)
    if B:
        _run_parallel(
            threads,
            B,
            lambda nchunks: _pruning_all(
                A, b, float(tol), max_iter, int(tries), nchunks, theta, converged, rounds, jitter, pivot, kkt
            ),
        )
    return theta, converged, rounds, jitter, pivot, kkt
