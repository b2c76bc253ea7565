r"""Channel-wise NNK (CW-NNK): per-channel neighbourhoods, channel overlap and LOO error.

For activations :math:`A\in\mathbb R^{N\times C\times H\times W}` of one layer, channel c of
sample n is the point :math:`x^c_n=\operatorname{vec}(A_{n,c})\in\mathbb R^{HW}` and the whole
layer is :math:`x_n=[x^1_n;\dots;x^C_n]`. NNK runs in every channel space and in the layer space
(all channels are stacked into one batched problem). With :math:`\mathcal N^c_i` the NNK
neighbours of sample i in channel c, :math:`n^c_i=|\mathcal N^c_i|`, :math:`n_i` the layer's
count and :math:`\tilde\theta` the L1-normalised weights, the overlap measures are

* **M1** ``jaccard`` (C, C): mean over points of
  :math:`|\mathcal N^a_i\cap\mathcal N^b_i|/|\mathcal N^a_i\cup\mathcal N^b_i|`, over the points
  where the union is non-empty.
* **M1w** ``weighted_overlap`` (C, C): mean of :math:`\sum_j\min(\tilde\theta^a_{ij},\tilde\theta^b_{ij})`
  over the points where both neighbourhoods are non-empty.
* **M2** ``union_ratio``: mean of :math:`|\bigcup_c\mathcal N^c_i|/\sum_c n^c_i` (1 = disjoint,
  1/C = identical), over points with :math:`\sum_c n^c_i>0`.
* **M3** ``aggregate_ratio``: mean of :math:`n_i/\sum_c n^c_i` over the same points.

**Dead channels** (constant over the samples, all-zero included) are flagged in ``dead``, get no
neighbours and are left out of every statistic; their rows and columns of the overlap matrices
are 0 and their LOO error is 1. Matrix diagonals are 1 for live channels. Nothing is NaN.

LOO label interpolation (DeepNNK / CW-DeepNNK): each sample is predicted from its NNK neighbours
among the other samples, :math:`\hat y_i=\arg\max_c\sum_j\tilde\theta_{ij}[y_j=c]` (ties go to the
smaller class index); the error is the fraction of samples with :math:`\hat y_i\ne y_i`, a sample
with no neighbours counting as an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convsim._internal.hooks import capture
from convsim._internal.layers import select_conv_layers
from convsim._internal.modes import eval_mode
from convsim.nnk.neighbors import nnk_core
from convsim.nnk.options import NNKOptions, resolve_options

__all__ = ["ChannelOverlap", "channel_overlap", "channel_loo_error", "layer_overlap", "overlap_stats", "loo_error"]

SATURATION = 0.8  # a count at or above 0.8 k is reported as saturated (k too small)


@dataclass
class ChannelOverlap:
    """CW-NNK analysis of one layer (N samples, C channels, k candidates).

    Attributes:
        counts: (N, C) NNK neighbour counts per sample and channel (0 for dead channels).
        aggregate_counts: (N,) counts in the layer space (all channels concatenated).
        errors: (N, C) reconstruction errors per channel (1 for dead channels).
        aggregate_errors: (N,) reconstruction errors in the layer space.
        jaccard: (C, C) M1.
        weighted_overlap: (C, C) M1w.
        union_ratio: () M2.
        aggregate_ratio: () M3.
        dead: (C,) constant channels.
        zero_fraction: (C,) fraction of samples whose channel map is all zero.
        duplicate_fraction: (C,) fraction of samples with a duplicate candidate.
        ill_conditioned_fraction: (C,) fraction of samples flagged ill-conditioned.
        saturated: () fraction of samples whose layer count is >= 0.8 k.
        loo_error: (C,) per-channel LOO error when labels were given, else None.
        layer_loo_error: () LOO error in the layer space when labels were given, else None.
        indices, weights: (C, N, k) per-channel neighbourhoods when ``return_neighbors``.
        options: the settings used.
    """

    counts: torch.Tensor
    aggregate_counts: torch.Tensor
    errors: torch.Tensor
    aggregate_errors: torch.Tensor
    jaccard: torch.Tensor
    weighted_overlap: torch.Tensor
    union_ratio: torch.Tensor
    aggregate_ratio: torch.Tensor
    dead: torch.Tensor
    zero_fraction: torch.Tensor
    duplicate_fraction: torch.Tensor
    ill_conditioned_fraction: torch.Tensor
    saturated: torch.Tensor
    loo_error: torch.Tensor | None = None
    layer_loo_error: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    options: dict = field(default_factory=dict)

    def _offdiag_mean(self, M: torch.Tensor) -> float:
        live = ~self.dead
        c = int(live.sum())
        if c < 2:
            return 0.0
        sub = M[live][:, live]
        return float((sub.sum() - sub.diagonal().sum()) / (c * (c - 1)))

    @property
    def jaccard_score(self) -> float:
        """Mean off-diagonal M1 over live channels."""
        return self._offdiag_mean(self.jaccard)

    @property
    def weighted_score(self) -> float:
        """Mean off-diagonal M1w over live channels."""
        return self._offdiag_mean(self.weighted_overlap)

    def to_dict(self) -> dict:
        """JSON-ready summary: per-channel lists, the matrices and the layer scores."""
        live = ~self.dead
        cf = self.counts.double()
        mean_count = torch.where(live, cf.mean(0), torch.zeros_like(cf[0]))
        d = {
            "options": dict(self.options),
            "n_samples": int(self.counts.shape[0]),
            "n_channels": int(self.counts.shape[1]),
            "n_dead": int(self.dead.sum()),
            "dead": self.dead.tolist(),
            "mean_count_per_channel": mean_count.tolist(),
            "median_count_per_channel": self.counts.median(0).values.tolist(),
            "mean_error_per_channel": self.errors.double().mean(0).tolist(),
            "mean_channel_count": float(mean_count[live].mean()) if bool(live.any()) else 0.0,
            "mean_aggregate_count": float(self.aggregate_counts.double().mean()),
            "median_aggregate_count": float(self.aggregate_counts.double().median()),
            "std_aggregate_count": float(self.aggregate_counts.double().std()) if self.counts.shape[0] > 1 else 0.0,
            "mean_aggregate_error": float(self.aggregate_errors.double().mean()),
            "jaccard": self.jaccard.tolist(),
            "weighted_overlap": self.weighted_overlap.tolist(),
            "jaccard_score": self.jaccard_score,
            "weighted_score": self.weighted_score,
            "union_ratio": float(self.union_ratio),
            "redundancy": 1.0 - float(self.union_ratio),
            "aggregate_ratio": float(self.aggregate_ratio),
            "saturated": float(self.saturated),
            "zero_fraction": self.zero_fraction.tolist(),
            "duplicate_fraction": self.duplicate_fraction.tolist(),
            "ill_conditioned_fraction": self.ill_conditioned_fraction.tolist(),
        }
        if self.loo_error is not None:
            d["loo_error"] = self.loo_error.tolist()
            d["mean_loo_error"] = float(self.loo_error[live].mean()) if bool(live.any()) else 1.0
        if self.layer_loo_error is not None:
            d["layer_loo_error"] = float(self.layer_loo_error)
        return d


def _as_points(activations: object) -> torch.Tensor:
    if not isinstance(activations, torch.Tensor):
        raise TypeError(
            f"activations must be a torch.Tensor of shape (N, C, *spatial), got {type(activations).__name__}"
        )
    if activations.dim() < 2 or not activations.is_floating_point():
        raise ValueError(
            f"activations must be a floating tensor of shape (N, C, *spatial), got shape "
            f"{tuple(activations.shape)} {activations.dtype}"
        )
    if not torch.isfinite(activations).all():
        raise ValueError("activations must be finite (no NaN or inf)")
    return activations.detach().reshape(activations.shape[0], activations.shape[1], -1)


def _check_labels(labels: object, N: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape ({N},), got {type(labels).__name__}")
    if labels.shape != (N,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape ({N},), got {tuple(labels.shape)} {labels.dtype}")
    if N and labels.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    return labels.long()


def _dead(A: torch.Tensor, dead_tol: float) -> torch.Tensor:
    """(C,) channels whose maps are the same for every sample (within ``dead_tol``)."""
    return (A.amax(0) - A.amin(0)).amax(-1) <= dead_tol


def loo_error(
    indices: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, query_labels: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Leave-one-out NNK label-interpolation error of every group: (G,).

    ``indices``/``weights`` (G, q, k) are neighbourhoods of q queries among points labelled
    ``labels`` (n,); the queries' own labels are ``query_labels`` (q,) (default ``labels``).
    Prediction :math:`\arg\max_c\sum_j\tilde\theta_{ij}[y_j=c]`; a query without neighbours is an
    error.

    Example:
        >>> idx = torch.tensor([[[1, 2], [0, 2], [0, 1]]])
        >>> w = torch.tensor([[[0.9, 0.1], [1.0, 0.0], [0.0, 0.0]]])
        >>> loo_error(idx, w, torch.tensor([0, 0, 1]))  # point 2 has no neighbours
        tensor([0.3333])
    """
    G, q, k = indices.shape
    yq = labels if query_labels is None else query_labels
    n_cls = int(labels.max()) + 1 if labels.numel() else 1
    s = weights.sum(-1, keepdim=True)
    wn = torch.where(s > 0, weights / s.clamp_min(torch.finfo(weights.dtype).tiny), torch.zeros_like(weights))
    ylab = labels[indices.clamp_min(0)]
    votes = torch.zeros(G, q, n_cls, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(2, ylab, wn)
    wrong = (votes.argmax(-1) != yq.view(1, q)) | (s.squeeze(-1) <= 0)
    return wrong.to(weights.dtype).mean(-1)


def overlap_stats(indices: torch.Tensor, weights: torch.Tensor, *, max_pairs: int = 2**22) -> dict:
    r"""Overlap statistics of C neighbourhood systems over the same N points.

    ``indices``/``weights`` (C, N, k) (index -1 or weight 0 = not a neighbour). Returns ``jaccard``
    (C, C) M1, ``weighted`` (C, C) M1w, ``union`` (N,) :math:`|\bigcup_c\mathcal N^c_i|` and
    ``total`` (N,) :math:`\sum_c n^c_i`. Shared neighbours are found by sorting the (point,
    neighbour) keys; the work is proportional to :math:`\sum_{i,j}|\{c: j\in\mathcal N^c_i\}|^2`,
    processed in chunks of about ``max_pairs`` channel pairs.

    Example:
        >>> idx = torch.tensor([[[1, 2]], [[1, 3]]])          # 2 channels, 1 point, k = 2
        >>> w = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
        >>> st = overlap_stats(idx, w)
        >>> round(st["jaccard"][0, 1].item(), 4), st["union"].tolist(), st["total"].tolist()
        (0.3333, [3], [4])
    """
    C, N, k = indices.shape
    dev, dt = weights.device, weights.dtype
    on = (weights > 0) & (indices >= 0)
    counts = on.sum(-1)  # (C, N)
    w_on = torch.where(on, weights, torch.zeros_like(weights))
    wn = w_on / w_on.sum(-1, keepdim=True).clamp_min(torch.finfo(dt).tiny)
    c_e, i_e, slot = torch.nonzero(on, as_tuple=True)
    j_e = indices[c_e, i_e, slot]
    w_e = wn[c_e, i_e, slot]
    key = i_e * N + j_e
    key, order = torch.sort(key, stable=True)
    c_e, i_e, w_e = c_e[order], i_e[order], w_e[order]
    E = key.numel()
    jac_sum = torch.zeros(C * C, dtype=dt, device=dev)
    wmin_sum = torch.zeros(C * C, dtype=dt, device=dev)
    union = torch.zeros(N, dtype=torch.long, device=dev)
    if E:
        head = torch.ones(E, dtype=torch.bool, device=dev)
        head[1:] = key[1:] != key[:-1]
        seg = torch.cumsum(head.long(), 0) - 1
        starts = torch.nonzero(head).squeeze(1)
        sizes = torch.diff(torch.cat([starts, starts.new_tensor([E])]))
        union = torch.bincount(i_e[starts], minlength=N)
        pos = torch.arange(E, device=dev) - starts[seg]
        rep = sizes[seg] - 1  # partners of each entry within its (point, neighbour) segment
        cum = torch.cumsum(rep, 0)
        # chunk boundaries on whole points, so per-point intersections are complete in a chunk
        point_end = torch.searchsorted(i_e, torch.arange(1, N + 1, device=dev))
        lo = 0
        while lo < E:
            base = int(cum[lo - 1]) if lo else 0
            hi = int(torch.searchsorted(cum, torch.tensor(base + max_pairs, device=dev), right=True))
            hi = max(hi, lo + 1)
            hi = int(point_end[int(i_e[hi - 1])])  # extend to the end of that point
            _pair_chunk(lo, hi, rep, starts, seg, pos, c_e, i_e, w_e, counts, C, jac_sum, wmin_sum)
            lo = hi
    total = counts.sum(0)
    nonempty = (counts > 0).to(dt)
    empty = 1 - nonempty
    # points where the union (M1) / both sets (M1w) are non-empty, per channel pair
    n_union = N - empty @ empty.T
    n_both = nonempty @ nonempty.T
    jac = jac_sum.view(C, C) / n_union.clamp_min(1)
    wov = wmin_sum.view(C, C) / n_both.clamp_min(1)
    has = (counts > 0).any(1)
    eye = torch.eye(C, dtype=torch.bool, device=dev)
    jac = torch.where(eye, has.to(dt).unsqueeze(1).expand(C, C), jac)
    wov = torch.where(eye, has.to(dt).unsqueeze(1).expand(C, C), wov)
    return {"jaccard": jac, "weighted": wov, "union": union, "total": total}


def _pair_chunk(
    lo: int,
    hi: int,
    rep: torch.Tensor,
    starts: torch.Tensor,
    seg: torch.Tensor,
    pos: torch.Tensor,
    c_e: torch.Tensor,
    i_e: torch.Tensor,
    w_e: torch.Tensor,
    counts: torch.Tensor,
    C: int,
    jac_sum: torch.Tensor,
    wmin_sum: torch.Tensor,
) -> None:
    """Accumulate M1 and M1w contributions of the entries lo:hi (whole points)."""
    dev = rep.device
    r = rep[lo:hi]
    total = int(r.sum())
    if total == 0:
        return
    left = lo + torch.repeat_interleave(torch.arange(hi - lo, device=dev), r)
    off = torch.cumsum(r, 0) - r
    t = torch.arange(total, device=dev) - torch.repeat_interleave(off, r)
    right = starts[seg[left]] + t + (t >= pos[left]).long()  # skip the entry itself
    ca, cb, pt = c_e[left], c_e[right], i_e[left]
    # intersection size and sum of minima per (point, channel a, channel b)
    trip = (pt * C + ca) * C + cb
    trip, inv = torch.unique(trip, return_inverse=True)
    inter = torch.zeros(trip.numel(), dtype=w_e.dtype, device=dev).index_add_(0, inv, torch.ones_like(w_e[left]))
    wmin = torch.zeros_like(inter).index_add_(0, inv, torch.minimum(w_e[left], w_e[right]))
    p, ab = trip // (C * C), trip % (C * C)
    a, b = ab // C, ab % C
    na, nb = counts[a, p].to(inter.dtype), counts[b, p].to(inter.dtype)
    jac_sum.index_add_(0, ab, inter / (na + nb - inter))
    wmin_sum.index_add_(0, ab, wmin)


def _per_channel(
    A: torch.Tensor, live: torch.Tensor, options: NNKOptions, y: torch.Tensor | None, return_neighbors: bool
) -> dict[str, Any]:
    """NNK in every live channel of ``A`` (N, C, D), as one batched problem, and its statistics.

    Returns per-channel ``counts`` (N, C), ``errors`` (N, C), ``zero``/``duplicate``/``ill``
    fractions (C,), ``loo`` (C,) or ``None``, the overlap statistics ``stats``
    (:func:`overlap_stats` of the live channels, or ``None`` without any) and, with
    ``return_neighbors``, ``indices``/``weights`` (C, N, k) (else ``None``).
    """
    N, C, _ = A.shape
    dev, dtype = A.device, options.dtype
    counts = torch.zeros(N, C, dtype=torch.long, device=dev)
    errors = torch.ones(N, C, dtype=dtype, device=dev)
    frac = {name: torch.zeros(C, dtype=torch.float64, device=dev) for name in ("zero", "duplicate", "ill")}
    loo = torch.ones(C, dtype=torch.float64, device=dev) if y is not None else None
    out: dict[str, Any] = {
        "counts": counts,
        "errors": errors,
        **frac,
        "loo": loo,
        "stats": None,
        "indices": None,
        "weights": None,
    }
    if not live.numel():
        return out
    r = nnk_core(A[:, live].permute(1, 0, 2), options=options)  # (C_live, N, D)
    counts[:, live] = r["count"].T
    errors[:, live] = r["error"].T.to(dtype)
    frac["zero"][live] = r["zero"].double().mean(1)
    frac["duplicate"][live] = r["duplicate"].double().mean(1)
    frac["ill"][live] = r["ill_conditioned"].double().mean(1)
    out["stats"] = overlap_stats(r["indices"], r["weights"])
    if loo is not None and y is not None:
        loo[live] = loo_error(r["indices"], r["weights"], y).double()
    if return_neighbors:
        k_ = r["indices"].shape[-1]
        idx_all = torch.full((C, N, k_), -1, dtype=torch.long, device=dev)
        w_all = torch.zeros(C, N, k_, dtype=dtype, device=dev)
        idx_all[live], w_all[live] = r["indices"], r["weights"]
        out["indices"], out["weights"] = idx_all, w_all
    return out


def _layer_measures(
    stats: dict[str, torch.Tensor] | None, agg_counts: torch.Tensor, live: torch.Tensor, C: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M1, M1w, M2, M3): the (C, C) matrices with zero rows for dead channels, and the two ratios."""
    jac = torch.zeros(C, C, dtype=torch.float64, device=agg_counts.device)
    wov = torch.zeros_like(jac)
    if stats is None:
        return jac, wov, jac.new_tensor(1.0), jac.new_tensor(0.0)
    sel = (live.unsqueeze(1), live.unsqueeze(0))
    jac[sel], wov[sel] = stats["jaccard"].double(), stats["weighted"].double()
    total = stats["total"]
    ok = total > 0
    if not bool(ok.any()):
        return jac, wov, jac.new_tensor(1.0), jac.new_tensor(0.0)
    union_ratio = (stats["union"][ok].double() / total[ok].double()).mean()
    agg_ratio = (agg_counts[ok].double() / total[ok].double()).mean()
    return jac, wov, union_ratio, agg_ratio


def _check_k(k: int, N: int) -> None:
    if k >= N:
        raise ValueError(f"k={k} must be smaller than the number of samples N={N}")


def channel_overlap(
    activations: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    dead_tol: float = 0.0,
    return_neighbors: bool = False,
    options: NNKOptions | None = None,
    **overrides: Any,
) -> ChannelOverlap:
    r"""CW-NNK analysis of one layer's activations (N, C, *spatial).

    NNK (see :func:`~convsim.nnk.nnk_neighbors`) is solved for every sample in every live channel
    (the channel's flattened map as the point; all channels are one batched problem) and in the
    layer space (all channels concatenated), then the overlap measures M1, M1w, M2, M3 of this
    module's docstring are computed, plus the LOO error per channel and for the layer when
    ``labels`` (N,) are given. A channel is dead when its maps differ across samples by at most
    ``dead_tol``; ``return_neighbors`` keeps the per-channel neighbourhoods.

    The NNK settings are an :class:`~convsim.nnk.options.NNKOptions` ``options`` and/or its fields
    as keywords (``k``, ``kernel``, ``solver``, ``search``, ...; keywords override ``options``).
    Without ``options``, ``duplicates`` defaults to ``"drop"`` (CW-DeepNNK: identical responses
    are not neighbours unless every candidate is one); an ``options`` object is used as it is.

    Returns:
        :class:`ChannelOverlap` (``to_dict()`` for JSON).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> a = torch.rand(60, 1, 3, 3)
        >>> r = channel_overlap(torch.cat([a, a, torch.zeros_like(a)], 1), k=10)
        >>> r.dead.tolist(), round(float(r.jaccard[0, 1]), 3), round(float(r.union_ratio), 3)
        ([False, False, True], 1.0, 0.5)
    """
    A = _as_points(activations)
    N, C, D = A.shape
    opts = resolve_options(options, overrides, "channel_overlap", duplicates="drop")
    _check_k(opts.k, N)
    y = None if labels is None else _check_labels(labels, N).to(A.device)
    dead = _dead(A, dead_tol)
    live = torch.nonzero(~dead).squeeze(1)
    ch = _per_channel(A, live, opts, y, return_neighbors)
    agg = nnk_core(A.reshape(1, N, C * D), options=opts)
    agg_counts = agg["count"][0]
    jac, wov, union_ratio, agg_ratio = _layer_measures(ch["stats"], agg_counts, live, C)
    layer_loo = loo_error(agg["indices"], agg["weights"], y)[0].double() if y is not None else None
    return ChannelOverlap(
        counts=ch["counts"],
        aggregate_counts=agg_counts,
        errors=ch["errors"],
        aggregate_errors=agg["error"][0],
        jaccard=jac,
        weighted_overlap=wov,
        union_ratio=union_ratio,
        aggregate_ratio=agg_ratio,
        dead=dead,
        zero_fraction=ch["zero"],
        duplicate_fraction=ch["duplicate"],
        ill_conditioned_fraction=ch["ill"],
        saturated=(agg_counts >= SATURATION * opts.k).double().mean(),
        loo_error=ch["loo"],
        layer_loo_error=layer_loo,
        indices=ch["indices"],
        weights=ch["weights"],
        options={**opts.summary(), "dead_tol": dead_tol, "n_samples": N},
    )


def channel_loo_error(
    activations: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_queries: int | None = None,
    dead_tol: float = 0.0,
    options: NNKOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    r"""Per-channel leave-one-out NNK label-interpolation error (CW-DeepNNK): (C,) float64.

    For channel c, every sample i (or the first ``n_queries`` samples) is interpolated from its
    NNK neighbours among the *other* N-1 samples in channel space,
    :math:`\hat y_i=\arg\max_y\sum_j\tilde\theta^c_{ij}[y_j=y]`, and the error is the fraction
    with :math:`\hat y_i\ne y_i` (no neighbours counts as an error; ties go to the smaller class).
    Dead channels (constant across samples, within ``dead_tol``) get 1.0. Only the per-channel NNK
    is computed, so this is much cheaper than :func:`channel_overlap`; it is the quantity the
    trainer's channel-wise early stopping monitors. NNK settings (``options`` and keywords,
    ``duplicates="drop"`` by default) as in :func:`channel_overlap`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> y = torch.arange(40) % 2
        >>> a = torch.randn(40, 2, 2, 2)
        >>> a[:, 0] += 4 * y.view(-1, 1, 1)   # channel 0 separates the classes
        >>> a[:, 1] = 0                       # channel 1 is dead
        >>> channel_loo_error(a.relu(), y, k=8, kernel="gaussian").tolist()
        [0.0, 1.0]
    """
    A = _as_points(activations)
    N, C, D = A.shape
    opts = resolve_options(options, overrides, "channel_loo_error", duplicates="drop")
    _check_k(opts.k, N)
    y = _check_labels(labels, N).to(A.device)
    qi = None
    if n_queries is not None:
        if isinstance(n_queries, bool) or not isinstance(n_queries, int) or not 1 <= n_queries <= N:
            raise ValueError(f"n_queries must be an int in [1, {N}], got {n_queries!r}")
        qi = torch.arange(n_queries, device=A.device)
    dead = _dead(A, dead_tol)
    live = torch.nonzero(~dead).squeeze(1)
    err = torch.ones(C, dtype=torch.float64, device=A.device)
    if live.numel():
        r = nnk_core(A[:, live].permute(1, 0, 2), query_index=qi, options=opts)
        err[live] = loo_error(r["indices"], r["weights"], y, None if qi is None else y[qi]).double()
    return err


def layer_overlap(
    model: nn.Module,
    data: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    n_samples: int = 2000,
    batch_size: int = 256,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    **channel_options: Any,
) -> dict[str, ChannelOverlap]:
    r"""CW-NNK analysis (:func:`channel_overlap`) of several layers of ``model``.

    Args:
        model: the network; run in eval mode under ``torch.no_grad`` (its mode is restored).
        data: (N, C, H, W) float inputs, already normalised, on any device (moved to the
            model's device batch by batch).
        layers: module names; default every Conv1d/2d/3d layer (``select_conv_layers``).
        n_samples: samples analysed; when N is larger a seeded random subset (``seed``) is used,
            kept in the original order.
        batch_size: forward batch size. Activations are captured one layer at a time (one
            forward pass over the samples per layer) so memory holds a single layer.
        labels: (N,) integer labels for the LOO errors.
        **channel_options: passed to :func:`channel_overlap`: the NNK settings (``k``, ``kernel``,
            ``solver``, ..., or ``options=NNKOptions(...)``), ``dead_tol``, ``return_neighbors``.

    Returns:
        ``{layer name: ChannelOverlap}`` in network order.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> res = layer_overlap(net, torch.randn(50, 1, 8, 8), k=5)
        >>> list(res), tuple(res["2"].counts.shape)
        (['0', '2'], (50, 4))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() < 2:
        raise ValueError("data must be a float tensor (N, C, H, W) of normalised inputs")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    N = data.shape[0]
    if labels is not None:
        labels = _check_labels(labels, N)
    if n_samples < N:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(N, generator=g)[:n_samples].sort().values
        data = data[pick.to(data.device)]
        labels = None if labels is None else labels[pick.to(labels.device)]
    if layers is None:
        layers = [name for name, _ in select_conv_layers(model, min_out_per_group=1)]
    else:
        layers = list(layers)
    if not layers:
        raise ValueError("the model has no conv layers to analyse (pass layers=[...])")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = data.device
    results = {}
    with eval_mode(model):
        for name in layers:
            chunks = []
            with torch.no_grad(), capture(model, [name]) as store:
                for s in range(0, data.shape[0], batch_size):
                    model(data[s : s + batch_size].to(device))
                    chunks.append(store[name])
            results[name] = channel_overlap(torch.cat(chunks), labels=labels, **channel_options)
    return results
