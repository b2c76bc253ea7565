"""Slow, obviously-correct float64 references for the CS loss (loops over pairs, channels, lags).

Other tests may import these. Everything takes and returns numpy float64 arrays / Python floats.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def xcorr_full(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full cross-correlation ``out[l] = sum_n a[n] * b[n + l]`` over every lag, by plain loops.

    ``a`` and ``b`` have the same number of axes; lag ``l`` per axis runs over
    ``1 - a.shape[k] .. b.shape[k] - 1`` and sits at output index ``l + a.shape[k] - 1``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    lags = [range(1 - na, nb) for na, nb in zip(a.shape, b.shape, strict=True)]
    out = np.zeros([na + nb - 1 for na, nb in zip(a.shape, b.shape, strict=True)])
    for lag in itertools.product(*lags):
        total = 0.0
        for n in itertools.product(*map(range, a.shape)):
            m = tuple(i + t for i, t in zip(n, lag, strict=True))
            if all(0 <= i < s for i, s in zip(m, b.shape, strict=True)):
                total += a[n] * b[m]
        out[tuple(t + na - 1 for t, na in zip(lag, a.shape, strict=True))] = total
    return out


def _normalized(w: np.ndarray) -> np.ndarray:
    norms = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(1))
    return w / norms.reshape(-1, *([1] * (w.ndim - 1)))


def pair_term(w: np.ndarray, i: int, j: int, channels: str) -> float:
    """T_ij of spec §5.1 for filters i, j of a weight (M, C, *kernel)."""
    c_range = range(w.shape[1])
    if channels == "per_channel":
        return sum(float((xcorr_full(w[i, c], w[j, c]) ** 2).sum()) for c in c_range)
    if channels == "summed":
        return float((sum(xcorr_full(w[i, c], w[j, c]) for c in c_range) ** 2).sum())
    if channels == "cross":
        return sum(float((xcorr_full(w[i, c], w[j, d]) ** 2).sum()) for c in c_range for d in c_range)
    raise ValueError(channels)


def pair_list(out_channels: int, pairs: str, groups: int = 1) -> list[tuple[int, int]]:
    """The unordered filter pairs of spec §5.2, within each of ``groups`` consecutive blocks."""
    m = out_channels // groups
    result = []
    for g in range(groups):
        idx = range(g * m, (g + 1) * m)
        if pairs == "all":
            result += [(i, j) for i in idx for j in idx if i < j]
        else:
            result += [(i, i + 1) for i in idx[:-1]]
    return result


def cs_loss(w, pairs="all", channels="per_channel", normalize=False, reduction="sum", groups=1) -> float:
    """CS of one weight by loops over pairs, channels and lags (normalisation with eps = 0)."""
    w = np.asarray(w, dtype=np.float64)
    if normalize:
        w = _normalized(w)
    plist = pair_list(w.shape[0], pairs, groups)
    total = sum(pair_term(w, i, j, channels) for i, j in plist)
    if reduction == "mean":
        total /= max(len(plist), 1)
    return float(total)


def cs_matrix(w, channels="per_channel", normalize=False) -> np.ndarray:
    """(M, M) table of T_ij with zero diagonal."""
    w = np.asarray(w, dtype=np.float64)
    if normalize:
        w = _normalized(w)
    m = w.shape[0]
    out = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if i != j:
                out[i, j] = pair_term(w, i, j, channels)
    return out


def released_gradient(w) -> np.ndarray:
    r"""Closed-form gradient of the released loss (adjacent, per channel), spec §5.3, by loops.

    dL/dW[a,c,x] = 2 sum_l ( [a <= M-2] G_a[c,l] W[a+1,c,x+l] + [a >= 1] G_{a-1}[c,l] W[a-1,c,x-l] ),
    G_a[c,l] = (W[a,c] xcorr W[a+1,c])[l], W zero outside the kernel.
    """
    w = np.asarray(w, dtype=np.float64)
    m, c_count, *kernel = w.shape
    lags = list(itertools.product(*[range(1 - k, k) for k in kernel]))

    def at(a, c, pos):
        return w[(a, c) + pos] if all(0 <= p < k for p, k in zip(pos, kernel, strict=True)) else 0.0

    corr = {(a, c): xcorr_full(w[a, c], w[a + 1, c]) for a in range(m - 1) for c in range(c_count)}

    def g(a, c, lag):
        return corr[a, c][tuple(t + k - 1 for t, k in zip(lag, kernel, strict=True))]

    grad = np.zeros_like(w)
    for a in range(m):
        for c in range(c_count):
            for x in itertools.product(*map(range, kernel)):
                total = 0.0
                for lag in lags:
                    if a <= m - 2:
                        total += g(a, c, lag) * at(a + 1, c, tuple(p + t for p, t in zip(x, lag, strict=True)))
                    if a >= 1:
                        total += g(a - 1, c, lag) * at(a - 1, c, tuple(p - t for p, t in zip(x, lag, strict=True)))
                grad[(a, c) + x] = 2 * total
    return grad


def dilate(w: np.ndarray, d: int) -> np.ndarray:
    """Zero-stuffed kernel of dilation ``d`` (size d*(k-1)+1 per kernel axis), weight (M, C, *kernel)."""
    w = np.asarray(w, dtype=np.float64)
    kernel = w.shape[2:]
    out = np.zeros(w.shape[:2] + tuple(d * (k - 1) + 1 for k in kernel))
    out[(slice(None), slice(None)) + tuple(slice(None, None, d) for _ in kernel)] = w
    return out


def direct_loss(w, pairs="all", channels="per_channel"):
    """CS by the direct route of spec §6.1/§6.3: convNd of the weight slices with each other, padding k-1.

    ``convNd(b, a, padding=k-1)`` returns ``a xcorr b`` for every lag, so treating filters as a batch
    gives every pair at once. Vectorised over filters but not over channels; torch in, torch out (groups=1).
    """
    import torch
    import torch.nn.functional as F

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
    pad = [k - 1 for k in w.shape[2:]]
    c = w.shape[1]
    if channels == "summed":
        blocks = [conv(w, w, padding=pad)]  # [j, i] = sum_c K_ic xcorr K_jc, squared after the sum
    else:
        cs = [(a, a) for a in range(c)] if channels == "per_channel" else [(a, b) for a in range(c) for b in range(c)]
        blocks = [conv(w[:, b : b + 1], w[:, a : a + 1], padding=pad) for a, b in cs]  # [j, i] = K_ia xcorr K_jb
    energy = sum(blk.square().flatten(2).sum(-1) for blk in blocks)  # (M, M): [j, i] = T_ij
    if pairs == "adjacent":
        return torch.diagonal(energy, offset=-1).sum()
    return (energy.sum() - torch.diagonal(energy).sum()) / 2


def rand(*shape, seed=0):
    """A seeded float64 standard-normal tensor (independent of the global RNG)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
