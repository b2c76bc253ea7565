r"""Compiled stride-1 CS per channel or cross (optional; needs ``numba``): value and gradient in blocked passes.

The same quantities as the torch path of :mod:`convsim.similarity` (``_parseval_torch``), from the
same weighted half-spectrum basis (K, 2H), with H padded to a multiple of 8 by zero columns. The
weight is taken a block of rows at a time (a row is one output filter, its C slices): the block's
half spectra, (rows·C, 2H), are small matrix products (the BLAS numba links; each under OpenBLAS's
threshold for threading, so it runs in the calling thread) into a scratch buffer that stays in
cache, and are reduced at once to the rows' features F (the power spectra :math:`S_{ic}(\omega_h)`,
or for ``cross`` their sum over c) and consumed:

* value, all pairs: per group :math:`\sum_i F_i` and :math:`\sum_i F_i^2` (in the weight's dtype
  per row range, as the torch path sums, then float64), so
  :math:`L=\tfrac12(\|\sum_i F_i\|^2-\sum_i\|F_i\|^2)`; :math:`\sum_i F_i` is the state of the gradient;
* value, adjacent pairs: :math:`\sum_i\langle F_{i-1},F_i\rangle` within each group;
* gradient: :math:`dL/dF_i` (``total - F_i``, or :math:`F_{i-1}+F_{i+1}`), then
  :math:`d\,\mathrm{spec}=2g\,\mathrm{spec}\,dL/dF` and the block of :math:`dW` = d spec · basisᵀ,
  written straight into the output.

No spectrum reaches memory; each weight row is read once per pass and each gradient row written
once. Row ranges are split over plain worker threads (the kernels release the GIL), not an OpenMP
pool: no second pool spins beside torch's. The weight is (M, C, K) (contiguous) or (M, K, C)
(channels-last: one row at a time, transposed in cache), and the gradient is written in its layout.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit

__all__ = ["value", "gradient"]

_FASTMATH = {"reassoc", "contract"}  # reorders sums only: values agree with the torch path to rounding
# Multiply-adds per product: under OpenBLAS's threshold for threading a product (65536 * 4), so the
# products run in the calling thread and no BLAS thread pool spins beside torch's.
_PRODUCT = 200_000
_PARALLEL = 2_000_000  # multiply-adds of one spectrum pass below which one thread does the work


@njit(cache=True, nogil=True)
def _slices(w: np.ndarray, kc: bool, r0: int, r1: int, tmp: np.ndarray) -> np.ndarray:
    """The (n, K) slices of rows r0..r1-1, slice (i, c) at (i - r0)·C + c: a view, or for kc one row copied into tmp."""
    if not kc:
        return w[r0:r1].reshape(((r1 - r0) * w.shape[1], w.shape[2]))
    row = tmp[: w.shape[2]]
    for t in range(w.shape[1]):
        for c in range(w.shape[2]):
            row[c, t] = w[r0, t, c]
    return row


@njit(cache=True, nogil=True)
def _spectra(x: np.ndarray, basis: np.ndarray, buf: np.ndarray, step: int) -> np.ndarray:
    """buf[:n] <- x (n, K) @ basis (K, 2Hp): the slices' half spectra, in products of at most ``step`` slices."""
    n = x.shape[0]
    for s in range(0, n, step):
        np.dot(x[s : min(s + step, n)], basis, buf[s : min(s + step, n)])
    return buf[:n]


@njit(cache=True, nogil=True)
def _store(
    dspec: np.ndarray, basis_t: np.ndarray, kc: bool, r0: int, r1: int, tmp: np.ndarray, step: int, out: np.ndarray
) -> None:
    """Rows r0..r1-1 of dW <- d spec (n, 2Hp) @ basisᵀ (2Hp, K), in the layout of ``out``."""
    target = tmp[: dspec.shape[0]] if kc else out[r0:r1].reshape((dspec.shape[0], out.shape[2]))
    n = dspec.shape[0]
    for s in range(0, n, step):
        np.dot(dspec[s : min(s + step, n)], basis_t, target[s : min(s + step, n)])
    if kc:
        for t in range(out.shape[1]):
            for c in range(out.shape[2]):
                out[r0, t, c] = target[c, t]


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _features(spec: np.ndarray, o: int, c: int, feat: np.ndarray) -> None:
    """feat (C, Hp) <- power spectra of slices o..o+C-1, or (1, Hp) their sum over channels (cross)."""
    hp = spec.shape[1] // 2
    cross = feat.shape[0] == 1  # (with C = 1 both readings agree)
    if cross:
        feat[0, :] = 0
    for cc in range(c):
        row, target = spec[o + cc], feat[0] if cross else feat[cc]
        for j in range(hp):
            power = row[j] * row[j] + row[hp + j] * row[hp + j]
            target[j] = target[j] + power if cross else power


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _scale(spec: np.ndarray, o: int, c: int, dfeat: np.ndarray, scale: float) -> None:
    """Slices o..o+C-1 of spec <- scale · spec · dL/dF (one factor per frequency, on its real and imaginary parts)."""
    hp = spec.shape[1] // 2
    for cc in range(c):
        row = spec[o + cc]
        d = dfeat[0] if dfeat.shape[0] == 1 else dfeat[cc]
        for j in range(hp):
            f = scale * d[j]
            row[j] *= f
            row[hp + j] *= f


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _accumulate(spec: np.ndarray, o: int, c: int, tot: np.ndarray, sq: np.ndarray, feat: np.ndarray) -> None:
    """tot (C', Hp) += the row's features (slices o..o+C-1), sq += their squares; one pass per channel."""
    hp = spec.shape[1] // 2
    if tot.shape[0] == 1:  # cross: the features are a sum over the row's channels
        _features(spec, o, c, feat)
        for j in range(hp):
            tot[0, j] += feat[0, j]
            sq[0, j] += feat[0, j] * feat[0, j]
        return
    for cc in range(c):
        row, t, q = spec[o + cc], tot[cc], sq[cc]
        for j in range(hp):
            f = row[j] * row[j] + row[hp + j] * row[hp + j]
            t[j] += f
            q[j] += f * f


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _value_all(
    w: np.ndarray, kc: bool, basis: np.ndarray, per_group: int, rows: int, step: int, lo: int, hi: int, acc: np.ndarray
) -> None:
    """acc (G, 2, C', Hp) += per group: the sum of the features of rows lo..hi-1 and of their squares."""
    c, k = (w.shape[2], w.shape[1]) if kc else (w.shape[1], w.shape[2])
    cf, hp = acc.shape[2], acc.shape[3]
    buf = np.empty((rows * c, 2 * hp), w.dtype)
    tmp = np.empty((c, k), w.dtype)
    feat = np.empty((cf, hp), w.dtype)
    for r0 in range(lo, hi, rows):
        r1 = min(r0 + rows, hi)
        spec = _spectra(_slices(w, kc, r0, r1, tmp), basis, buf, step)
        for i in range(r0, r1):
            group = acc[i // per_group]
            _accumulate(spec, (i - r0) * c, c, group[0], group[1], feat)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _descend(spec: np.ndarray, o: int, c: int, tot: np.ndarray, scale: float, feat: np.ndarray) -> None:
    """Slices o..o+C-1 of spec <- scale · spec · (tot - F), all pairs' dL/dF_i; one pass per channel."""
    hp = spec.shape[1] // 2
    if tot.shape[0] == 1:  # cross: dL/dF_i is shared by the row's channels
        _features(spec, o, c, feat)
        for j in range(hp):
            feat[0, j] = tot[0, j] - feat[0, j]
        _scale(spec, o, c, feat, scale)
        return
    for cc in range(c):
        row, t = spec[o + cc], tot[cc]
        for j in range(hp):
            d = scale * (t[j] - (row[j] * row[j] + row[hp + j] * row[hp + j]))
            row[j] *= d
            row[hp + j] *= d


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gradient_all(
    w: np.ndarray,
    kc: bool,
    basis: np.ndarray,
    basis_t: np.ndarray,
    per_group: int,
    rows: int,
    step: int,
    total: np.ndarray,
    scale: float,
    lo: int,
    hi: int,
    out: np.ndarray,
) -> None:
    """Rows lo..hi-1 of out <- dW for all pairs: dL/dF_i = total_g - F_i, total (G, C', Hp)."""
    c, k = (w.shape[2], w.shape[1]) if kc else (w.shape[1], w.shape[2])
    cf, hp = total.shape[1], total.shape[2]
    buf = np.empty((rows * c, 2 * hp), w.dtype)
    tmp = np.empty((c, k), w.dtype)
    feat = np.empty((cf, hp), w.dtype)
    for r0 in range(lo, hi, rows):
        r1 = min(r0 + rows, hi)
        spec = _spectra(_slices(w, kc, r0, r1, tmp), basis, buf, step)
        for i in range(r0, r1):
            _descend(spec, (i - r0) * c, c, total[i // per_group], scale, feat)
        _store(spec, basis_t, kc, r0, r1, tmp, step, out)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _value_adjacent(
    w: np.ndarray, kc: bool, basis: np.ndarray, per_group: int, cf: int, step: int, lo: int, hi: int
) -> float:
    """The sum of <F_{i-1}, F_i> over the rows lo <= i < hi that are not first in their group."""
    c, k = (w.shape[2], w.shape[1]) if kc else (w.shape[1], w.shape[2])
    hp = basis.shape[1] // 2
    buf = np.empty((c, 2 * hp), w.dtype)
    tmp = np.empty((c, k), w.dtype)
    feats = np.empty((2, cf, hp), w.dtype)
    start = lo - 1 if lo % per_group else lo  # the pair (lo-1, lo) belongs to this range
    acc = 0.0
    for i in range(start, hi):
        _features(_spectra(_slices(w, kc, i, i + 1, tmp), basis, buf, step), 0, c, feats[i % 2])
        if i > start and i % per_group:
            prev, cur = feats[(i - 1) % 2], feats[i % 2]
            for cc in range(cf):
                for j in range(hp):
                    acc += np.float64(prev[cc, j]) * cur[cc, j]
    return acc


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _gradient_adjacent(
    w: np.ndarray,
    kc: bool,
    basis: np.ndarray,
    basis_t: np.ndarray,
    per_group: int,
    cf: int,
    step: int,
    scale: float,
    lo: int,
    hi: int,
    out: np.ndarray,
) -> None:
    """Rows lo..hi-1 of out <- dW for adjacent pairs: dL/dF_i = F_{i-1} + F_{i+1} (neighbours in the same group)."""
    m = w.shape[0]
    c, k = (w.shape[2], w.shape[1]) if kc else (w.shape[1], w.shape[2])
    hp = basis.shape[1] // 2
    specs = np.empty((3, c, 2 * hp), w.dtype)  # spectra of rows i-1, i, i+1 in slots i % 3
    tmp = np.empty((c, k), w.dtype)
    feats = np.empty((3, cf, hp), w.dtype)
    dfeat = np.empty((cf, hp), w.dtype)
    for i in range(lo - 1 if lo % per_group else lo, min(lo + 2, m)):
        _features(_spectra(_slices(w, kc, i, i + 1, tmp), basis, specs[i % 3], step), 0, c, feats[i % 3])
    for i in range(lo, hi):
        after = i + 1 < m and (i + 1) % per_group != 0  # row i+1 is a neighbour
        if i > lo and i + 1 < m and (after or i + 1 < hi):  # row i+1: a neighbour or the next row
            _features(
                _spectra(_slices(w, kc, i + 1, i + 2, tmp), basis, specs[(i + 1) % 3], step), 0, c, feats[(i + 1) % 3]
            )
        dfeat[:] = 0
        if i % per_group:
            dfeat += feats[(i - 1) % 3]
        if after:
            dfeat += feats[(i + 1) % 3]
        _scale(specs[i % 3], 0, c, dfeat, scale)
        _store(specs[i % 3], basis_t, kc, i, i + 1, tmp, step, out)


# --------------------------------------------------------------------------- threads


@functools.cache
def _executor(threads: int, pid: int) -> ThreadPoolExecutor:
    """Helper threads for the kernels (which release the GIL); a forked child gets its own (``pid``)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convsim-cs")


def _ranges(rows: int, threads: int, minimum: int) -> list[tuple[int, int]]:
    """Row ranges of at least ``minimum`` rows, two per thread (one descheduled thread does not hold the rest)."""
    n = 1 if threads <= 1 else max(1, min(2 * threads, rows // minimum))
    return [(k * rows // n, (k + 1) * rows // n) for k in range(n)]


def _run(task: Callable[[Any], Any], items: list[Any], threads: int) -> list[Any]:
    """``task`` of every item (a row range, or its index), shared by this thread and ``threads - 1`` workers.

    Each thread takes the next item until none is left (one handoff per worker and call, and a
    descheduled thread does not hold the rest). Plain threads waiting on a queue, not an OpenMP pool:
    no second pool spins beside torch's.
    """
    if len(items) == 1 or threads == 1:
        return [task(item) for item in items]
    results: list[Any] = [None] * len(items)
    order = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (k := next(order)) < len(items):
            results[k] = task(items[k])

    executor = _executor(threads - 1, os.getpid())
    helpers = [executor.submit(work) for _ in range(min(threads, len(items)) - 1)]
    work()
    for helper in helpers:
        helper.result()
    return results


def _padded(basis: np.ndarray) -> np.ndarray:
    """The basis (K, 2H) with H padded by zero columns to Hp, a multiple of 8: [cos | 0 | sin | 0] (K, 2Hp).

    The padding frequencies have zero spectra, features and gradient; the per-frequency loops then
    run over whole vectors.
    """
    k, h = basis.shape[0], basis.shape[1] // 2
    hp = h if h < 4 else -(-h // 8) * 8  # (1x1 kernels: H = 1, nothing to vectorise over)
    out = np.zeros((k, 2 * hp), basis.dtype)
    out[:, :h], out[:, hp : hp + h] = basis[:, :h], basis[:, h:]
    return out


def _threads(w: np.ndarray, basis: np.ndarray, threads: int) -> int:
    """``threads``, or 1 for a weight too small to repay handing work to other threads."""
    return 1 if w.size * basis.shape[1] < _PARALLEL else max(1, int(threads))


def _blocking(w: np.ndarray, kc: bool, basis: np.ndarray) -> tuple[int, int]:
    """(rows per block, slices per product): products under BLAS's threading threshold, a block about one product."""
    c, k = (w.shape[2], w.shape[1]) if kc else (w.shape[1], w.shape[2])
    step = max(1, _PRODUCT // (basis.shape[1] * k))
    return (1 if kc else max(1, step // max(1, c))), step


def value(
    w: np.ndarray, kc: bool, basis: np.ndarray, groups: int, cross: bool, adjacent: bool, threads: int
) -> tuple[float, np.ndarray]:
    """CS value and, for all pairs, the per-group feature sums (G, C', H) (float64; adjacent: empty).

    ``w`` (M, C, K) or, with ``kc``, (M, K, C), C-contiguous float32 or float64; ``basis`` (K, 2H)
    of the same dtype; ``threads``: how many threads to split the rows over.
    """
    m, c, h = w.shape[0], w.shape[2] if kc else w.shape[1], basis.shape[1] // 2
    cf, per_group = 1 if cross else c, m // groups
    padded = _padded(basis)
    threads = _threads(w, padded, threads)
    rows, step = _blocking(w, kc, padded)
    if adjacent:
        task = lambda r: _value_adjacent(w, kc, padded, per_group, cf, step, r[0], r[1])  # noqa: E731
        return float(sum(_run(task, _ranges(m, threads, 16), threads))), np.zeros((0, 0, 0))
    ranges = _ranges(m, threads, 1)
    acc = np.zeros((len(ranges), groups, 2, cf, padded.shape[1] // 2), w.dtype)  # per range, as the torch path sums
    _run(
        lambda n: _value_all(w, kc, padded, per_group, rows, step, ranges[n][0], ranges[n][1], acc[n]),
        list(range(len(ranges))),
        threads,
    )
    sums = acc.sum(0, dtype=np.float64)[:, :, :, :h]
    return 0.5 * float(np.square(sums[:, 0]).sum() - sums[:, 1].sum()), np.ascontiguousarray(sums[:, 0])


def gradient(
    w: np.ndarray,
    kc: bool,
    basis: np.ndarray,
    groups: int,
    cross: bool,
    adjacent: bool,
    total: np.ndarray,
    upstream: float,
    threads: int,
    out: np.ndarray,
) -> None:
    """``out`` (C-contiguous, the layout of ``w``) <- upstream · dL/dW; ``total`` (G, C', H) from :func:`value`."""
    m = w.shape[0]
    cf, per_group = 1 if cross else (w.shape[2] if kc else w.shape[1]), m // groups
    padded = _padded(basis)
    threads = _threads(w, padded, threads)
    padded_t, (rows, step) = np.ascontiguousarray(padded.T), _blocking(w, kc, padded)
    scale = 2.0 * upstream  # d|z|^2 = 2 z dz: dL/d spec = 2 spec dL/dF
    if adjacent:
        task = lambda r: _gradient_adjacent(w, kc, padded, padded_t, per_group, cf, step, scale, r[0], r[1], out)  # noqa: E731
        _run(task, _ranges(m, threads, 16), threads)
        return
    tot = np.zeros((*total.shape[:2], padded.shape[1] // 2), w.dtype)
    tot[:, :, : total.shape[2]] = total
    task = lambda r: _gradient_all(w, kc, padded, padded_t, per_group, rows, step, tot, scale, r[0], r[1], out)  # noqa: E731
    _run(task, _ranges(m, threads, 1), threads)
