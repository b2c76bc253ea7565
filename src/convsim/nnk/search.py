r"""Exact k-nearest-neighbour candidate search, chunked so memory stays bounded.

Points come in *groups* (one group per channel in the channel-wise analysis): ``X`` has shape
``(G, n, d)`` and every group is searched independently. Neighbours are ranked by the Euclidean
distance, through the score :math:`\|x_j\|^2-2\langle x_i,x_j\rangle` (the squared distance minus
the query's own norm) computed blockwise with one fused batched product, then the k smallest
scores per row (the compiled scan of :func:`convsim.nnk._numba.smallest_k` on CPU when numba is
in use, ``topk`` otherwise); or by a FAISS flat index when it is importable and chosen, or by an
exact k-d tree (``scipy.spatial.cKDTree``, float64, CPU) when chosen. A query that is itself a
database point is excluded from its own candidates **by index identity**: the compiled scan skips
its column; the other paths take ``k+1`` points and remove the query from them, or the farthest
one when the query is not among them (which happens only when more than ``k`` exact duplicates
tie with it). Ties at the k-th distance may be broken differently by the different paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from convsim.nnk.solvers import cpu_threads, use_compiled

__all__ = ["Block", "candidate_blocks", "faiss_available", "SEARCHES"]

SEARCHES = ("auto", "torch", "faiss", "kdtree")  # the k-NN searches (``search=``)


def faiss_available() -> bool:
    """True when ``faiss`` can be imported (it is optional, never required)."""
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class Block:
    """Candidates of the queries ``rows`` of the groups ``groups`` (Gc groups, q queries).

    Attributes:
        groups: slice of groups.
        rows: slice of queries.
        index: (Gc, q, k) candidate indices into the database, nearest first; -1 where a query has
            fewer than k eligible points.
        dist2: (Gc, q, k) squared Euclidean distances (search dtype; ``inf`` where missing).
        gram: (Gc, n, n) inner products of the whole groups when they were computed (queries =
            all points), else ``None``.
    """

    groups: slice
    rows: slice
    index: torch.Tensor
    dist2: torch.Tensor
    gram: torch.Tensor | None = None


def _drop_self(val: torch.Tensor, idx: torch.Tensor, self_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From k+1 sorted candidates remove the query itself (by index), else the farthest."""
    kk = idx.shape[-1]
    is_self = idx == self_cols.view(1, -1, 1)
    drop = torch.where(is_self.any(-1), is_self.int().argmax(-1), torch.full_like(idx[..., 0], kk - 1))
    keep = torch.arange(kk, device=idx.device) != drop.unsqueeze(-1)
    shape = (*idx.shape[:-1], kk - 1)
    return val[keep].view(shape), idx[keep].view(shape)


def _select(
    score: torch.Tensor, sq_q: torch.Tensor, k: int, self_cols: torch.Tensor | None, threads: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a score block (Gc, q, n); returns (index with -1 for missing, squared distances)."""
    if _compiled_select(score):
        val, idx = _smallest_k(score, k, self_cols, threads)
    else:
        kk = k + (self_cols is not None)
        with cpu_threads(threads, score.device):
            val, idx = score.topk(kk, dim=-1, largest=False, sorted=True)
        if self_cols is not None:
            val, idx = _drop_self(val, idx, self_cols)
    missing = torch.isinf(val)
    dist2 = (val + sq_q.unsqueeze(-1)).clamp_min_(0).masked_fill_(missing, float("inf"))
    return idx.masked_fill_(missing, -1), dist2


def _compiled_select(score: torch.Tensor) -> bool:
    """Whether the compiled selection (numba, CPU) handles this score block."""
    return score.device.type == "cpu" and score.dtype in (torch.float32, torch.float64) and use_compiled()


def _smallest_k(
    score: torch.Tensor, k: int, self_cols: torch.Tensor | None, threads: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled k-smallest scan of :mod:`convsim.nnk._numba`; the query's own column is
    skipped, so this is exactly the k nearest other points (ties to the smaller index)."""
    from convsim.nnk import _numba

    Gc, q, n = score.shape
    S = score.detach().reshape(Gc * q, n).contiguous().numpy()
    exclude = None if self_cols is None else self_cols.cpu().repeat(Gc).numpy()
    val, idx = _numba.smallest_k(S, k, exclude, threads=threads)
    return torch.from_numpy(val).view(Gc, q, k), torch.from_numpy(idx).view(Gc, q, k)


def _faiss_topk(
    Xg: torch.Tensor, Qg: torch.Tensor, k: int, banned: torch.Tensor | None, self_cols: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAISS flat-L2 search for one group: (q, k) indices (-1 where missing) and squared distances."""
    import faiss
    import numpy as np

    pool = torch.arange(Xg.shape[0]) if banned is None else torch.nonzero(~banned.cpu()).squeeze(1)
    kk = k + (self_cols is not None)
    idx = torch.full((Qg.shape[0], kk), -1, dtype=torch.long)
    val = torch.full((Qg.shape[0], kk), float("inf"), dtype=torch.float64)
    if pool.numel():
        index = faiss.IndexFlatL2(Xg.shape[1])
        index.add(np.ascontiguousarray(Xg[pool].detach().cpu().numpy(), dtype=np.float32))
        m = min(kk, pool.numel())
        D, nbr = index.search(np.ascontiguousarray(Qg.detach().cpu().numpy(), dtype=np.float32), m)
        nbr = torch.from_numpy(nbr).long()
        ok = nbr >= 0
        idx[:, :m] = torch.where(ok, pool[nbr.clamp_min(0)], torch.full_like(nbr, -1))
        val[:, :m] = torch.where(ok, torch.from_numpy(D).double(), torch.full_like(val[:, :m], float("inf")))
    idx = idx.unsqueeze(0)
    val = val.unsqueeze(0)
    if self_cols is not None:
        val, idx = _drop_self(val, idx, self_cols.cpu())
    missing = torch.isinf(val)
    return idx.masked_fill_(missing, -1), val


def _kdtree_topk(
    Xg: torch.Tensor,
    Qg: torch.Tensor,
    k: int,
    banned: torch.Tensor | None,
    self_cols: torch.Tensor | None,
    workers: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-d tree search (float64) for one group: (1, q, k) indices (-1 where missing), dist^2."""
    import numpy as np
    from scipy.spatial import cKDTree

    pool = None if banned is None else torch.nonzero(~banned.cpu()).squeeze(1)
    kk = k + (self_cols is not None)
    Xn = Xg.detach().cpu().double().numpy()
    data = Xn if pool is None else Xn[pool.numpy()]
    q = Qg.shape[0]
    idx = torch.full((q, kk), -1, dtype=torch.long)
    val = torch.full((q, kk), float("inf"), dtype=torch.float64)
    if data.shape[0]:
        m = min(kk, data.shape[0])
        D, nbr = cKDTree(data).query(Qg.detach().cpu().double().numpy(), k=m, workers=workers)
        D, nbr = torch.from_numpy(np.asarray(D).reshape(q, m)), torch.from_numpy(np.asarray(nbr).reshape(q, m)).long()
        ok = nbr < data.shape[0]  # missing neighbours come back as index n, distance inf
        nbr = nbr.clamp_max(data.shape[0] - 1)
        if pool is not None:
            nbr = pool[nbr]
        idx[:, :m] = torch.where(ok, nbr, torch.full_like(nbr, -1))
        val[:, :m] = torch.where(ok, D * D, torch.full_like(D, float("inf")))
    idx, val = idx.unsqueeze(0), val.unsqueeze(0)
    if self_cols is not None:
        val, idx = _drop_self(val, idx, self_cols.cpu())
    return idx.masked_fill_(torch.isinf(val), -1), val


def candidate_blocks(
    X: torch.Tensor,
    k: int,
    *,
    queries: torch.Tensor | None = None,
    query_index: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
    search: str = "torch",
    max_elements: int = 2**24,
    gram_dtype: torch.dtype | None = None,
    want_gram: bool = False,
    row_cost: int = 0,
    threads: int | None = None,
) -> Iterator[Block]:
    r"""Yield candidate blocks covering every (group, query) pair.

    Args:
        X: (G, n, d) database points; distances are computed in their dtype.
        k: candidates per query.
        queries: (G, q, d) external queries scored against ``X`` (no exclusion); ``None`` means
            the queries are the points of ``X`` themselves, each excluded from its own list.
        query_index: (q,) long, with ``queries=None``: only these points of ``X`` are queries
            (each still excluded from its own list); default all n points.
        banned: (G, n) bool, database points that may not be candidates (e.g. zero vectors under
            the cosine kernel).
        search: the k-NN search, ``"torch"`` (blockwise matmul + topk), ``"faiss"`` (flat L2
            index, CPU) or ``"kdtree"`` (``scipy.spatial.cKDTree``, exact, float64 distances, CPU);
            ``"auto"`` is resolved by the caller.
        max_elements: rough bound on the floats held per block.
        gram_dtype: dtype of the whole-group Gram matrices (default ``X.dtype``).
        want_gram: compute whole groups at once and hand their Gram matrices to the caller when
            the queries are all points and a group's n x n block fits in ``max_elements``.
        row_cost: floats the caller will hold per query on top of the n distances (gathered
            candidates, kernel systems); used to size the blocks.
        threads: CPU threads for the large products and ``topk`` (``None``: torch's setting);
            the small operations run with whatever the caller set.

    Example:
        >>> X = torch.tensor([[[0.0], [1.0], [3.0]]], dtype=torch.float64)
        >>> next(candidate_blocks(X, 1)).index.squeeze(-1)
        tensor([[1, 0, 1]])
    """
    G, n, d = X.shape
    if queries is not None and query_index is not None:
        raise ValueError("give queries or query_index, not both")
    if search not in SEARCHES or search == "auto":
        raise ValueError(f"search must be one of {SEARCHES[1:]} (resolve 'auto' first), got {search!r}")
    if queries is not None:
        q_all = queries.shape[1]
    else:
        q_all = n if query_index is None else query_index.numel()
    sq_x = (X * X).sum(-1)
    # banned points get an infinite score, so topk ranks them last and they come back as missing
    sq_rank = sq_x if banned is None else sq_x.masked_fill(banned, float("inf"))
    if (
        want_gram
        and queries is None
        and query_index is None
        and search == "torch"
        and n * (2 * n + row_cost) <= max_elements
    ):
        yield from _gram_blocks(
            X, sq_x, sq_rank, k, gram_dtype or X.dtype, max_elements // (n * (2 * n + row_cost)), threads
        )
        return
    if search == "kdtree":  # one tree per group, all its queries at once
        workers = threads if threads is not None else torch.get_num_threads()
        for g in range(G):
            if queries is not None:
                Q, self_cols = queries[g], None
            elif query_index is None:
                Q, self_cols = X[g], torch.arange(n)
            else:
                self_cols = query_index.cpu()
                Q = X[g, query_index]
            idx, dist2 = _kdtree_topk(X[g], Q, k, None if banned is None else banned[g], self_cols, workers)
            yield Block(slice(g, g + 1), slice(0, q_all), idx.to(X.device), dist2.to(X.device, X.dtype))
        return
    rows = max(1, max_elements // (n + 1 + row_cost))
    if q_all > rows:  # equal blocks rather than a full one and a small remainder
        rows = -(-q_all // -(-q_all // rows))
    yield from _row_blocks(X, sq_rank, k, queries, query_index, banned, search, rows, threads)


def _gram_blocks(
    X: torch.Tensor,
    sq_x: torch.Tensor,
    sq_rank: torch.Tensor,
    k: int,
    gd: torch.dtype,
    groups: int,
    threads: int | None,
) -> Iterator[Block]:
    """Whole groups at once (all points are queries): blocks of ``groups`` groups with their Gram."""
    G, n, _ = X.shape
    gc = max(1, groups)
    for g0 in range(0, G, gc):
        gs = slice(g0, min(G, g0 + gc))
        Xg = X[gs].to(gd)
        with cpu_threads(threads, X.device):
            gram = torch.bmm(Xg, Xg.transpose(1, 2))
            score = sq_rank[gs].to(gd).unsqueeze(1) - 2 * gram
        idx, dist2 = _select(score, sq_x[gs].to(gd), k, torch.arange(n, device=X.device), threads)
        del score
        yield Block(gs, slice(0, n), idx, dist2, gram)


def _row_blocks(
    X: torch.Tensor,
    sq_rank: torch.Tensor,
    k: int,
    queries: torch.Tensor | None,
    query_index: torch.Tensor | None,
    banned: torch.Tensor | None,
    search: str,
    rows: int,
    threads: int | None,
) -> Iterator[Block]:
    """Blocks of ``rows`` queries (of several groups at once with the torch search)."""
    G, n, _ = X.shape
    if queries is not None:
        q_all = queries.shape[1]
    else:
        q_all = n if query_index is None else query_index.numel()
    gc = max(1, rows // max(q_all, 1)) if search == "torch" else 1
    # score = [q, 1] . [-2x, |x|^2]: one GEMM gives |x_j|^2 - 2<q, x_j> without another pass
    X_aug = torch.cat([-2 * X, sq_rank.unsqueeze(-1)], -1)
    for g0 in range(0, G, gc):
        gs = slice(g0, min(G, g0 + gc))
        Xg = X[gs]
        for r0 in range(0, q_all, rows):
            rs = slice(r0, min(q_all, r0 + rows))
            self_cols: torch.Tensor | None
            if queries is not None:
                Q, self_cols = queries[gs, rs], None
            elif query_index is None:
                self_cols = torch.arange(rs.start, rs.stop, device=X.device)
                Q = Xg[:, rs]
            else:
                self_cols = query_index[rs].to(X.device)
                Q = Xg[:, self_cols]
            sq_q = (Q * Q).sum(-1)
            if search == "faiss":
                idx, dist2 = _faiss_topk(Xg[0], Q[0], k, None if banned is None else banned[g0], self_cols)
                idx, dist2 = idx.to(X.device), dist2.to(X.device, X.dtype)
            else:
                idx, dist2 = _search_rows(Q, sq_q, X_aug[gs], k, self_cols, threads)
            yield Block(gs, rs, idx, dist2)


SEARCH_CHUNK = 2**22  # scores per search step (bounds the distance block)


def _search_rows(
    Q: torch.Tensor,
    sq_q: torch.Tensor,
    X_aug: torch.Tensor,
    k: int,
    self_cols: torch.Tensor | None,
    threads: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the queries Q (Gc, q, d) in cache-sized steps of rows."""
    Gc, q, _ = Q.shape
    step = max(1, SEARCH_CHUNK // (Gc * X_aug.shape[1]))
    Q_aug = torch.cat([Q, torch.ones_like(Q[..., :1])], -1)
    Xt = X_aug.transpose(1, 2)
    parts = []
    for r0 in range(0, q, step):
        r1 = min(q, r0 + step)
        with cpu_threads(threads, Q.device):
            score = torch.bmm(Q_aug[:, r0:r1], Xt)
        parts.append(_select(score, sq_q[:, r0:r1], k, None if self_cols is None else self_cols[r0:r1], threads))
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
