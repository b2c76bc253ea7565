"""Slow float64 references for OCNN: conv operators as explicit matrices, and orthogonal convs built by hand.

The domain is periodic (circular), as in OCNN's theory (Wang et al. 2020; Achour et al. 2022): there
the conv is a block-circulant matrix and "orthogonal conv" means that matrix is orthogonal. On a
zero-padded finite domain the rows near the border see truncated kernels, so no conv with more
than one tap is exactly orthogonal there and the oracle of an orthogonal conv would not read 0; the
periodic operator is the limit of the interior of a large domain without the border error.

The periodic size per axis must be a multiple of the stride, and the coarse grid N_a/s_a must be
longer than the 2*floor((k_a-1)/s_a)+1 lags of the kernel autocorrelation at multiples of the
stride, or distinct lags wrap onto the same entry; :func:`domain` adds one more block.

Weights come in as torch tensors (what :func:`convsim.penalties.ocnn` takes); matrices and
constructions are numpy float64. Row ``i * n_out + t`` of an operator is output channel ``i`` at
output position ``t`` (C order), column ``c * n_in + u`` is input channel ``c`` at position ``u``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def domain(kernel, stride):
    """Periodic size per axis: a multiple of the stride with one more coarse block than the lags need."""
    return tuple(s * (2 * ((k - 1) // s) + 2) for k, s in zip(kernel, stride, strict=True))


def _positions(shape):
    return list(itertools.product(*map(range, shape)))


def conv_operator(w, stride, size, groups=1):
    """Matrix of a forward conv, weight (M, C/groups, *k), on the periodic domain ``size``.

    Output i at coarse position t reads ``sum_c sum_n w[i, c, n] x[c, (s*t + n) mod N]`` over the
    input channels c of i's group.
    """
    w = w.detach().numpy()
    m, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    coarse = tuple(n // s for n, s in zip(size, stride, strict=True))
    n_out, n_in, mg = math.prod(coarse), math.prod(size), m // groups
    a = np.zeros((m * n_out, cg * groups * n_in))
    for g in range(groups):
        rows_i = np.arange(g * mg, (g + 1) * mg) * n_out
        cols_c = np.arange(g * cg, (g + 1) * cg) * n_in
        for t in _positions(coarse):
            t_flat = np.ravel_multi_index(t, coarse)
            for n in _positions(kernel):
                u = tuple((s * ti + ni) % big for s, ti, ni, big in zip(stride, t, n, size, strict=True))
                a[np.ix_(rows_i + t_flat, cols_c + np.ravel_multi_index(u, size))] += w[
                    (slice(g * mg, (g + 1) * mg), slice(None), *n)
                ]
    return a


def conv_transpose_operator(w, stride, size, groups=1):
    """Matrix of a transposed conv, weight (C_in, C_out/groups, *k), periodic output domain ``size``.

    Written from the transposed conv's own definition (scatter): input c at coarse position t adds
    ``w[c, o, n] * x[c, t]`` to output o of c's group at position ``(s*t + n) mod N``.
    """
    w = w.detach().numpy()
    c_in, og, kernel = w.shape[0], w.shape[1], w.shape[2:]
    coarse = tuple(n // s for n, s in zip(size, stride, strict=True))
    n_in, n_out, cg = math.prod(coarse), math.prod(size), c_in // groups
    t_mat = np.zeros((og * groups * n_out, c_in * n_in))
    for c in range(c_in):
        outs = np.arange((c // cg) * og, (c // cg + 1) * og) * n_out
        for t in _positions(coarse):
            col = c * n_in + np.ravel_multi_index(t, coarse)
            for n in _positions(kernel):
                u = tuple((s * ti + ni) % big for s, ti, ni, big in zip(stride, t, n, size, strict=True))
                t_mat[outs + np.ravel_multi_index(u, size), col] += w[(c, slice(None), *n)]
    return t_mat


def gram_distances(a):
    """(||A A^T - I||_F^2, ||A^T A - I||_F^2) of a matrix."""
    rows = a @ a.T - np.eye(a.shape[0])
    cols = a.T @ a - np.eye(a.shape[1])
    return float((rows**2).sum()), float((cols**2).sum())


def smaller_gram_distance(a):
    """min(||A A^T - I||_F^2, ||A^T A - I||_F^2): the distance of the smaller Gram to the identity."""
    return min(gram_distances(a))


def orthonormal(rows, cols, seed):
    """A (rows, cols) matrix with orthonormal rows (rows <= cols) or orthonormal columns (rows > cols)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    return q if rows >= cols else q.T


def one_tap(m, c, kernel, tap, seed):
    """Weight (m, c, *kernel) zero except at ``tap``, where it is an orthonormal (m, c) matrix."""
    w = np.zeros((m, c, *kernel))
    w[(slice(None), slice(None), *tap)] = orthonormal(m, c, seed)
    return w


def block(m, c, stride, seed):
    """The block ("invertible downsampling") conv, kernel = stride: (m, c*S) with orthonormal rows or columns."""
    return orthonormal(m, c * math.prod(stride), seed).reshape(m, c, *stride)


def paraunitary_factor(m, c, axis, d, seed):
    """Stride-1 conv with 2 taps along ``axis``: taps Q(I - vv^T) and Q vv^T, Q orthonormal (m, c), |v| = 1.

    Lag 0 of the row Gram is Q(I - P)Q^T + QPQ^T = QQ^T and lag 1 is Q(I - P)PQ^T = 0 (P = vv^T is
    a projection), and likewise for the column Gram: orthogonal whenever Q is.
    """
    q = orthonormal(m, c, seed)
    v = np.random.default_rng(seed + 1).standard_normal(c)
    p = np.outer(v, v) / (v @ v)
    w = np.zeros((m, c, *[2 if a == axis else 1 for a in range(d)]))
    first, second = [0] * d, [0] * d
    second[axis] = 1
    w[(slice(None), slice(None), *first)] = q @ (np.eye(c) - p)
    w[(slice(None), slice(None), *second)] = q @ p
    return w


def compose(outer, inner, stride):
    """Kernel of ``inner`` (stride s) followed by ``outer`` (stride 1 on the coarse grid): one stride-s conv.

    y[t] = sum_n outer[n] z[t + n], z[u] = sum_m inner[m] x[s*u + m], so the composed kernel has
    taps ``s*n + m`` holding ``outer[:, :, n] @ inner[:, :, m]`` (size s*(k_outer - 1) + k_inner).
    """
    k_out, k_in = outer.shape[2:], inner.shape[2:]
    size = tuple(s * (ko - 1) + ki for s, ko, ki in zip(stride, k_out, k_in, strict=True))
    w = np.zeros((outer.shape[0], inner.shape[1], *size))
    for n in _positions(k_out):
        for m in _positions(k_in):
            q = tuple(s * ni + mi for s, ni, mi in zip(stride, n, m, strict=True))
            w[(slice(None), slice(None), *q)] += (
                outer[(slice(None), slice(None), *n)] @ inner[(slice(None), slice(None), *m)]
            )
    return w


def paraunitary(m, c, kernel, seed):
    """Stride-1 orthogonal conv with this kernel: sum_a (k_a - 1) degree-1 factors, the first (m, c), then (m, m).

    Orthogonal because each factor is and compositions of row- (or column-) orthogonal operators are.
    """
    d = len(kernel)
    axes = [a for a in range(d) for _ in range(kernel[a] - 1)]
    if not axes:
        return one_tap(m, c, kernel, (0,) * d, seed)
    w = paraunitary_factor(m, c, axes[0], d, seed)
    for i, a in enumerate(axes[1:], start=1):
        w = compose(paraunitary_factor(m, m, a, d, seed + 10 * i), w, (1,) * d)
    return w


def strided_orthogonal(m, c, stride, taps, seed):
    """Orthogonal stride-s conv with kernel s * taps: a block conv, then a stride-1 paraunitary conv on the coarse grid.

    The block conv maps c channels to min(m, c*S), orthogonal; the paraunitary conv maps those to m.
    Row-orthogonal when m <= c*S, column-orthogonal otherwise. ``taps = 2`` gives k = 2s.
    """
    mid = min(m, c * math.prod(stride))
    inner = block(mid, c, stride, seed)
    return compose(paraunitary(m, mid, taps, seed + 100), inner, stride)


def embed(w, kernel):
    """Zero-pad a weight's kernel (at the end of each axis) to ``kernel``: the same operator up to a shift."""
    pad = [(0, 0), (0, 0)] + [(0, k - kw) for k, kw in zip(kernel, w.shape[2:], strict=True)]
    return np.pad(w, pad)
