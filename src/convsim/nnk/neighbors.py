r"""NNK neighbourhoods: kernels, candidate systems and :func:`nnk_neighbors`.

For a query :math:`x_i` with candidate set :math:`S` (its k nearest points in Euclidean distance,
itself excluded) NNK solves

.. math::
    \theta_S=\arg\min_{\theta\ge0}\ \tfrac12\theta^\top K_{S,S}\theta-K_{S,i}^\top\theta ,
    \qquad e_i = K_{ii}-2K_{S,i}^\top\theta_S+\theta_S^\top K_{S,S}\theta_S ,

its NNK neighbours are the candidates with :math:`\theta_j>` ``threshold`` and :math:`e_i` is the
squared reconstruction error of :math:`\phi(x_i)` in kernel space. Kernels (both normalised,
:math:`K_{ii}=1`):

* ``"cosine"``: :math:`K_{ij}=\tfrac12+\tfrac12\cos\angle(x_i,x_j)`.
* ``"gaussian"``: :math:`K_{ij}=\exp(-\|x_i-x_j\|^2/2\sigma^2)` with ``sigma`` when given, else per
  query :math:`\sigma_i=\|x_i-x_{(k)}\|/3` (distance to its k-th candidate over 3); the query's
  :math:`\sigma_i` is used for its whole system.

Conventions for degenerate data (flags, never NaN):

* **zero vectors** (exactly zero): the cosine kernel is undefined there, so under ``"cosine"`` a zero
  query gets no neighbours (weights 0, count 0, error :math:`e_i=K_{ii}=1`) and zero points are
  never candidates. Under ``"gaussian"`` they are ordinary points. Flag ``zero``.
* **duplicates**: a candidate with :math:`K_{ij}\ge1-` ``dup_tol`` reconstructs the query
  exactly. ``duplicates="keep"`` makes the duplicates the only neighbours, sharing the weight
  equally (:math:`e_i\approx0`; the released code's "nodes collapse" rule); ``"drop"`` removes
  them from the candidates unless every candidate is one. Flag ``duplicate``.
* **ill-conditioning**: the solver works on :math:`K_{S,S}+\delta I` (``jitter`` :math:`\delta`);
  candidates that coincide in kernel space share the weight the jitter assigns them. Flag
  ``ill_conditioned`` when some neighbour lies within :math:`10^{-3}` (squared distance
  :math:`10^{-6}`) of the span of the others in kernel space.

With ``solver="pruning"`` (the released one-way solver, :func:`~convsim.nnk.solvers.pruning`) the
candidates left after the duplicate policy go to the released algorithm unchanged: its own
near-duplicate collapse (some :math:`K_{ij} > 1-` ``pruning_tol``: those candidates keep
:math:`K_{ij}`, the others 0), its weight floor ``pruning_tol``, and an explicit extra jitter for a
round whose kept block is still numerically singular. Exact duplicates under ``"keep"`` then
share the weight equally as for every solver (the released code gives each about 1; the counts
and the normalised weights are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from convsim.nnk import search
from convsim.nnk.options import DUPLICATES, KERNELS, NNKOptions, resolve_options
from convsim.nnk.solvers import SolveResult, cpu_threads, matvec, solve, use_compiled, uses_compiled_solver

__all__ = ["NNKResult", "NNKOptions", "nnk_neighbors", "KERNELS", "DUPLICATES"]

ILL_CONDITIONED_PIVOT = 1e-6


@dataclass
class NNKResult:
    """NNK neighbourhoods of n queries with k candidates each.

    Attributes:
        indices: (n, k) long, candidate indices into ``X`` nearest first; -1 where a query had
            fewer than k eligible points.
        distances: (n, k) Euclidean distances to the candidates (``inf`` where missing).
        weights: (n, k) NNK weights, >= 0, exactly 0 for pruned candidates.
        error: (n,) reconstruction error :math:`e_i`, recomputed from the definition (without
            jitter), clamped at 0.
        count: (n,) number of NNK neighbours (weights > ``threshold``).
        sigma: (n,) Gaussian bandwidth per query, or ``None`` for the cosine kernel.
        zero: (n,) the query is the zero vector.
        duplicate: (n,) some candidate is a (near-)duplicate of the query.
        ill_conditioned: (n,) see the module docstring.
        converged: (n,) the solver met its stopping rule.
        kkt: (n,) largest KKT violation of the solution (jittered problem).
        options: the settings used, :meth:`NNKOptions.summary` (kernel, k, solver, threshold,
            jitter, duplicates, search, ...).
    """

    indices: torch.Tensor
    distances: torch.Tensor
    weights: torch.Tensor
    error: torch.Tensor
    count: torch.Tensor
    sigma: torch.Tensor | None
    zero: torch.Tensor
    duplicate: torch.Tensor
    ill_conditioned: torch.Tensor
    converged: torch.Tensor
    kkt: torch.Tensor
    options: dict[str, Any] = field(default_factory=dict)

    def normalized_weights(self) -> torch.Tensor:
        r"""Interpolation weights :math:`\tilde\theta=\theta/\sum_j\theta_j` (rows of zeros stay 0).

        Example:
            >>> r = nnk_neighbors(torch.tensor([[0.0], [1.0], [2.0]]), k=2, kernel="gaussian", sigma=1.0)
            >>> torch.allclose(r.normalized_weights().sum(-1), torch.ones(3, dtype=torch.float64))
            True
        """
        s = self.weights.sum(-1, keepdim=True)
        return torch.where(s > 0, self.weights / s.clamp_min(torch.finfo(self.weights.dtype).tiny), 0.0)


def _resolve_search(search_: str, X: torch.Tensor) -> str:
    if search_ == "auto":
        # the k-d tree is not chosen automatically: on 2 cores it measured no faster than the
        # batched matmul + topk for 2000 points in 4-9 dims (benchmarks/results/nnk.md)
        return "faiss" if X.device.type == "cpu" and search.faiss_available() else "torch"
    return search_


def _gram_systems(
    kernel: str, blk: search.Block, sq_x: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel systems from a whole-group Gram matrix: (b, K, dist2), all (Gc, q, ...).

    For the Gaussian kernel ``b`` and ``K`` are squared distances (the bandwidth is applied later).
    """
    assert blk.gram is not None
    gram, idx = blk.gram.to(dtype), blk.index
    Gc, q, k = idx.shape
    n = gram.shape[-1]
    safe = idx.clamp_min(0)
    pairs = safe.unsqueeze(3) * n + safe.unsqueeze(2)
    ip_c = gram.reshape(Gc, -1).gather(1, pairs.view(Gc, -1)).view(Gc, q, k, k)
    ip_q = gram.gather(2, safe)
    sq_q = sq_x[blk.groups]
    sq_c = sq_q.gather(1, safe.view(Gc, -1)).view(Gc, q, k)
    dist2 = (sq_q.unsqueeze(-1) + sq_c - 2 * ip_q).clamp_min_(0)
    if kernel == "cosine":
        tiny = torch.finfo(dtype).tiny
        nc = sq_c.sqrt().clamp_min_(tiny)
        nq = sq_q.sqrt().clamp_min_(tiny)
        b = (ip_q / (nc * nq.unsqueeze(-1))).clamp_(-1, 1).mul_(0.5).add_(0.5)
        K = (ip_c / (nc.unsqueeze(-1) * nc.unsqueeze(-2))).clamp_(-1, 1).mul_(0.5).add_(0.5)
    else:
        K = (sq_c.unsqueeze(-1) + sq_c.unsqueeze(-2)).sub_(ip_c, alpha=2).clamp_min_(0)
        b = dist2
    return b, K, dist2


_Tables = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _features(kernel: str, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-point tables whose inner products give the kernel systems in one batched product.

    cosine: :math:`u=[1, x/\|x\|]/\sqrt2`, so :math:`u_a^\top u_b=\tfrac12+\tfrac12\cos`.
    gaussian: :math:`u=[x,\|x\|^2,1]`, :math:`v=[-2x,1,\|x\|^2]`, so :math:`u_a^\top v_b=\|x_a-x_b\|^2`.
    """
    sq = (X * X).sum(-1, keepdim=True)
    one = torch.ones_like(sq)
    if kernel == "cosine":
        Xn = X / sq.sqrt().clamp_min(torch.finfo(X.dtype).tiny)
        u = torch.cat([one, Xn], -1) * 0.5**0.5
        return u, u
    return torch.cat([X, sq, one], -1), torch.cat([-2 * X, one, sq], -1)


def _point_systems(
    kernel: str,
    U: torch.Tensor,
    V: torch.Tensor | None,
    Uq: torch.Tensor,
    Vq: torch.Tensor,
    idx: torch.Tensor,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel systems from gathered feature rows: (b_or_dist2, K_or_D2), shapes (Gc, q, k[, k]).

    ``U``/``V`` (Gc, n, f) are the feature tables of :func:`_features` (``V`` is ``None`` for the
    cosine kernel, whose table is symmetric); ``Uq``/``Vq`` (Gc, q, f) the queries' rows. On CPU
    in float64 with numba the compiled :func:`~convsim.nnk._numba.kernel_systems` (``threads``
    workers) forms them without materialising the gathered rows.
    """
    Gc, q, k = idx.shape
    n, f = U.shape[1], U.shape[2]
    flat = (idx.clamp_min(0) + (torch.arange(Gc, device=idx.device) * n).view(Gc, 1, 1)).view(-1)
    # the query's own row: cosine needs u_q, the distance form needs v_q
    vq = Uq if V is None else Vq
    if U.device.type == "cpu" and U.dtype == torch.float64 and use_compiled():
        from convsim.nnk import _numba

        Un = U.reshape(Gc * n, f).numpy()
        m, M = _numba.kernel_systems(
            Un,
            Un if V is None else V.reshape(Gc * n, f).numpy(),
            vq.reshape(Gc * q, f).numpy(),
            flat.view(Gc * q, k).numpy(),
            clamp=V is not None,
            threads=threads,
        )
        return torch.from_numpy(m).view(Gc, q, k), torch.from_numpy(M).view(Gc, q, k, k)
    Zu = U.reshape(Gc * n, f).index_select(0, flat).view(Gc * q, k, f)
    Zv = Zu if V is None else V.reshape(Gc * n, f).index_select(0, flat).view(Gc * q, k, f)
    M = torch.bmm(Zu, Zv.transpose(1, 2))
    m = torch.bmm(Zu, vq.reshape(Gc * q, f, 1)).view(Gc, q, k)
    if V is not None:
        M.clamp_min_(0)
        m.clamp_min_(0)
    return m, M.view(Gc, q, k, k)


@dataclass
class _Prepared:
    """The prepare step's output: the points of one run centred, cast and flagged, and its plan.

    Attributes:
        X: (G, n, d) points the candidates are searched in (their own dtype; centred for the
            Gaussian kernel, whose distances are translation invariant).
        queries: (G, q, d) external queries (centred likewise), or ``None``.
        query_index: (q,) points of ``X`` that are the queries, or ``None`` (all of them).
        X64, Q64: ``X`` and ``queries`` in the compute dtype.
        sq_x: (G, n) squared norms of ``X64``.
        zero_q: (G, q) the query is the zero vector (of the raw points).
        banned: (G, n) points that may not be candidates (zero points, cosine kernel), or ``None``.
        search: the resolved k-NN search (never ``"auto"``).
        use_gram: ask the search for whole-group Gram matrices.
        torch_threads: torch's thread setting at the start (for the large products and the
            compiled kernels; the small operations run with ``options.threads``).
    """

    kernel: str
    X: torch.Tensor
    queries: torch.Tensor | None
    query_index: torch.Tensor | None
    X64: torch.Tensor
    Q64: torch.Tensor | None
    sq_x: torch.Tensor
    zero_q: torch.Tensor
    banned: torch.Tensor | None
    search: str
    use_gram: bool
    torch_threads: int

    @cached_property
    def tables(self) -> _Tables:
        """Feature tables of the points and of the queries, built when the first block needs them."""
        x = _features(self.kernel, self.X64)
        return x, (x if self.Q64 is None else _features(self.kernel, self.Q64))


def _prepare(
    X: torch.Tensor, queries: torch.Tensor | None, query_index: torch.Tensor | None, options: NNKOptions
) -> _Prepared:
    """The prepare step of :func:`nnk_core`: flags, centring, casts and the search plan."""
    G, n, d = X.shape
    torch_threads = torch.get_num_threads()  # for the large products and the compiled kernels
    if query_index is not None:
        query_index = query_index.to(X.device)
    zero_x = (X == 0).all(-1)  # flags refer to the raw points
    if queries is not None:
        zero_q = (queries == 0).all(-1)
    elif query_index is not None:
        zero_q = zero_x[:, query_index]
    else:
        zero_q = zero_x
    if options.kernel == "gaussian":  # distances are translation invariant; centring keeps them accurate
        mean = X.mean(1, keepdim=True)
        X = X - mean
        queries = None if queries is None else queries - mean
    X64 = X.to(options.dtype)
    banned = zero_x if options.kernel == "cosine" and bool(zero_x.any()) else None
    k = options.k
    # A whole-group Gram (n^2 d, float64) beats gathering each query's k candidates (n k^2 d) only
    # when the vectors are long and n is small next to k^2.
    return _Prepared(
        kernel=options.kernel,
        X=X,
        queries=queries,
        query_index=query_index,
        X64=X64,
        Q64=None if queries is None else queries.to(options.dtype),
        sq_x=(X64 * X64).sum(-1),
        zero_q=zero_q,
        banned=banned,
        search=_resolve_search(options.search, X),
        use_gram=d >= 4 * k and n <= k * k,
        torch_threads=torch_threads,
    )


def _block_systems(
    prep: _Prepared, blk: search.Block, options: NNKOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Kernel systems of one candidate block: (b, K, valid, dist2, sigma), shapes (Gc, q, k[, k]).

    ``b`` is the kernel to the query, ``K`` among the candidates (unit diagonal, no jitter yet),
    ``valid`` marks real candidates (and, under the cosine kernel, non-zero queries), ``dist2``
    the squared distances (``inf`` where missing) and ``sigma`` the Gaussian bandwidths.
    """
    kernel, dtype, idx = options.kernel, options.dtype, blk.index
    Gc, qc, _ = idx.shape
    valid = idx >= 0
    if kernel == "cosine":
        valid &= ~prep.zero_q[blk.groups, blk.rows].unsqueeze(-1)
    if blk.gram is not None:
        b, K, dist2 = _gram_systems(kernel, blk, prep.sq_x, dtype)
    else:
        (U, V), (Uq, Vq) = prep.tables
        gs, rs = blk.groups, blk.rows
        rows = rs if prep.query_index is None else prep.query_index[rs]
        b, K = _point_systems(
            kernel,
            U[gs],
            None if kernel == "cosine" else V[gs],
            Uq[gs][:, rows],
            Vq[gs][:, rows],
            idx,
            prep.torch_threads,
        )
        # Gaussian tables give float64 squared distances; for cosine keep the search's distances
        dist2 = b if kernel == "gaussian" else blk.dist2.to(dtype)
    dist2 = dist2.masked_fill_(~(idx >= 0), float("inf"))
    sig = None
    if kernel == "gaussian":
        if options.sigma is not None:
            sig = torch.full((Gc, qc), float(options.sigma), dtype=dtype, device=idx.device)
        else:  # distance to the farthest found candidate / 3
            last = ((idx >= 0).sum(-1) - 1).clamp_min(0)
            sig = dist2.gather(-1, last.unsqueeze(-1)).squeeze(-1).sqrt() / 3
            sig = torch.where((idx >= 0).any(-1), sig, torch.zeros_like(sig))
        scale = -0.5 / (sig * sig).clamp_min(torch.finfo(dtype).tiny)
        b = (dist2 * scale.unsqueeze(-1)).exp_()
        K = K.mul_(scale.view(Gc, qc, 1, 1)).exp_()
    K.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return b, K, valid, dist2, sig


def _solver_plan(options: NNKOptions, device: torch.device, torch_threads: int) -> tuple[dict[str, Any], int]:
    """Keyword arguments of the solver and the smallest batch of systems worth one solve."""
    kwargs = dict(options.solver_options or {})
    if options.solver == "pruning":
        kwargs["tol"] = options.pruning_tol
    # The compiled solvers split the batch over their own workers in chunks handed out one at a
    # time, so they use every thread torch may use; ``threads`` is for the small torch operations.
    compiled = options.solver in ("exact", "pruning") and uses_compiled_solver(
        device, options.dtype, kwargs.get("engine", "auto")
    )
    kwargs.setdefault("threads", torch_threads if compiled else options.threads)
    # systems per batched solve: large enough to amortise the solver's per-iteration overhead,
    # small enough that the (k+1)^2 tableaux (about 24 MB) stay in a CPU's last-level cache
    k = options.k
    solve_batch = min(16384, max(1024, 3 * 2**20 // ((k + 1) * (k + 1))))
    kwargs.setdefault("batch_size", solve_batch)
    return kwargs, solve_batch // 4  # smaller blocks are gathered into one solve


def _empty_output(G: int, q: int, options: NNKOptions, device: torch.device) -> dict[str, torch.Tensor]:
    """The output tensors of :func:`nnk_core`, filled with the values of a query without candidates."""
    k, dtype = options.k, options.dtype
    out = {
        "indices": torch.full((G, q, k), -1, dtype=torch.long, device=device),
        "distances": torch.full((G, q, k), float("inf"), dtype=dtype, device=device),
        "weights": torch.zeros(G, q, k, dtype=dtype, device=device),
        "error": torch.ones(G, q, dtype=dtype, device=device),
        "duplicate": torch.zeros(G, q, dtype=torch.bool, device=device),
        "ill_conditioned": torch.zeros(G, q, dtype=torch.bool, device=device),
        "converged": torch.ones(G, q, dtype=torch.bool, device=device),
        "kkt": torch.zeros(G, q, dtype=dtype, device=device),
    }
    if options.kernel == "gaussian":
        out["sigma"] = torch.zeros(G, q, dtype=dtype, device=device)
    return out


class _SolveBatch:
    """The solve and scatter steps: systems of blocks are gathered until there are ``min_batch``,
    solved in one call and their results written into ``out`` (large blocks are never copied)."""

    def __init__(
        self, options: NNKOptions, solver_kwargs: dict[str, Any], min_batch: int, out: dict[str, torch.Tensor]
    ) -> None:
        self.options, self.solver_kwargs, self.min_batch, self.out = options, solver_kwargs, min_batch, out
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, slice, slice, tuple[int, int]]] = []

    def add(self, b: torch.Tensor, K: torch.Tensor, valid: torch.Tensor, groups: slice, rows: slice) -> None:
        """Queue the systems (Gc, q, k[, k]) of one block; solve the queue once it is large enough."""
        Gc, qc, k = b.shape
        self.pending.append((b.reshape(-1, k), K.reshape(-1, k, k), valid.reshape(-1, k), groups, rows, (Gc, qc)))
        if sum(p[0].shape[0] for p in self.pending) >= self.min_batch:
            self.flush()

    def flush(self) -> None:
        """Solve the queued systems and scatter weights, errors and flags to their (group, query)."""
        if not self.pending:
            return
        b = torch.cat([p[0] for p in self.pending])
        K = torch.cat([p[1] for p in self.pending])
        valid = torch.cat([p[2] for p in self.pending])
        theta, dup, res = _solve_systems(b, K, valid, self.options, self.solver_kwargs)
        jitter = self.options.jitter
        # e = K_ii - 2 b'theta + theta' K theta, without the jitter (theta is 0 off the valid set)
        quad = (theta * matvec(K, theta)).sum(-1) - jitter * (theta * theta).sum(-1)
        err = (1 - 2 * (b * theta).sum(-1) + quad).clamp_min_(0)
        results = {
            "weights": theta,
            "error": err,
            "duplicate": dup.any(-1),
            "ill_conditioned": res.pivot < ILL_CONDITIONED_PIVOT,
            "converged": res.converged,
            "kkt": res.kkt,
        }
        s0 = 0
        for *_, gs, rs, shape in self.pending:
            s1 = s0 + shape[0] * shape[1]
            for name, v in results.items():
                self.out[name][gs, rs] = v[s0:s1].view(*shape, *v.shape[1:])
            s0 = s1
        self.pending.clear()


def nnk_core(
    X: torch.Tensor,
    queries: torch.Tensor | None = None,
    *,
    query_index: torch.Tensor | None = None,
    options: NNKOptions,
) -> dict[str, torch.Tensor]:
    """NNK for G independent groups of points at once: ``X`` (G, n, d), ``queries`` (G, q, d).

    The shared engine behind :func:`nnk_neighbors` (G = 1) and the channel-wise analysis
    (G = channels), in three steps: prepare (:func:`_prepare`), then per candidate block the
    kernel systems (:func:`_block_systems`), solved in batches and scattered to their queries
    (:class:`_SolveBatch`). ``query_index`` (q,) restricts the queries to some points of ``X``
    (each still excluded from its own candidates). Candidates are searched in the dtype of ``X``;
    kernels and solves use ``options.dtype``. The search and the compiled kernels use torch's
    thread setting, the small torch operations ``options.threads`` (see
    :func:`~convsim.nnk.solvers.cpu_threads`). Returns a dict of (G, q, ...) tensors with the
    fields of :class:`NNKResult` (``sigma`` only for the Gaussian kernel). The caller validates
    the inputs.

    Example:
        >>> X = torch.tensor([[[0.0], [1.0], [2.0]], [[0.0], [5.0], [6.0]]])  # two groups
        >>> opts = NNKOptions(k=1, kernel="gaussian", sigma=1.0)
        >>> nnk_core(X, options=opts)["indices"].squeeze(-1)
        tensor([[1, 0, 1],
                [1, 2, 1]])
    """
    G, n, d = X.shape
    k = options.k
    prep = _prepare(X, queries, query_index, options)
    out = _empty_output(G, prep.zero_q.shape[1], options, X.device)
    solver_kwargs, min_batch = _solver_plan(options, X.device, prep.torch_threads)
    blocks = search.candidate_blocks(
        prep.X,
        k,
        queries=prep.queries,
        query_index=prep.query_index,
        banned=prep.banned,
        search=prep.search,
        max_elements=options.max_elements,
        gram_dtype=options.dtype,
        want_gram=prep.use_gram,
        row_cost=3 * k * k + (0 if prep.use_gram else 2 * k * (d + 2)),
        threads=prep.torch_threads,
    )
    batch = _SolveBatch(options, solver_kwargs, min_batch, out)
    with cpu_threads(options.threads, X.device):  # the generator's small steps run under this setting too
        for blk in blocks:
            gs, rs, idx = blk.groups, blk.rows, blk.index
            b, K, valid, dist2, sig = _block_systems(prep, blk, options)
            del blk  # a whole-group Gram is not needed for the solve
            out["indices"][gs, rs] = idx
            out["distances"][gs, rs] = dist2.sqrt()
            if sig is not None:
                out["sigma"][gs, rs] = sig
            batch.add(b, K, valid, gs, rs)
        batch.flush()
    out["count"] = (out["weights"] > 0).sum(-1)
    out["zero"] = prep.zero_q
    return out


def _solve_systems(
    b: torch.Tensor, K: torch.Tensor, valid: torch.Tensor, options: NNKOptions, solver_kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, SolveResult]:
    """Mask, jitter and solve systems b (B, k), K (B, k, k); K gets the jitter on its diagonal.

    Returns (theta, duplicate mask, SolveResult) with theta thresholded.
    """
    dtype = b.dtype
    dup = valid & (b >= 1 - options.dup_tol)
    if options.duplicates == "drop":  # drop duplicates of the query unless every candidate is one
        valid = valid & ~(dup & ~(dup == valid).all(-1, keepdim=True))
    if not bool(valid.all()):  # decouple missing/excluded candidates: identity rows, zero rhs
        vf = valid.to(dtype)
        K.mul_(vf.unsqueeze(-1) * vf.unsqueeze(-2))
        b.mul_(vf)
        K.diagonal(dim1=-2, dim2=-1).add_(1 - vf)
    K.diagonal(dim1=-2, dim2=-1).add_(options.jitter)
    res = solve(K, b, options.solver, **solver_kwargs)
    theta = res.theta
    if options.duplicates == "keep" and bool(dup.any()):
        # exact copies reconstruct the query with error 0; share the weight equally among them
        # (the jitter-free optimum closest to the jittered one), nothing for the others
        has = dup.any(-1, keepdim=True)
        share = dup.to(dtype) / dup.sum(-1, keepdim=True).clamp_min(1).to(dtype)
        theta = torch.where(has, share, theta)
    theta = torch.where(theta > options.threshold, theta, torch.zeros_like(theta))
    return theta, dup, res


def nnk_neighbors(
    X: torch.Tensor,
    *,
    queries: torch.Tensor | None = None,
    options: NNKOptions | None = None,
    **overrides: Any,
) -> NNKResult:
    r"""NNK neighbourhoods of every point of ``X`` (or of ``queries`` scored against ``X``).

    For each query: the k nearest points of ``X`` in Euclidean distance (the query itself excluded
    by index when the queries are ``X``), the kernel among them, and the non-negative kernel
    regression

    .. math::
        \theta_S=\arg\min_{\theta\ge0}\tfrac12\theta^\top(K_{S,S}+\delta I)\theta-K_{S,i}^\top\theta ,
        \quad e_i=K_{ii}-2K_{S,i}^\top\theta_S+\theta_S^\top K_{S,S}\theta_S .

    Args:
        X: (n, d) points (any float dtype, CPU or CUDA).
        queries: (q, d) points to describe with neighbours from ``X`` (no exclusion).
        options: the NNK settings, an :class:`~convsim.nnk.options.NNKOptions` (default
            ``NNKOptions()``: k = 25, cosine kernel, exact solver, duplicates kept).
        **overrides: any field of :class:`~convsim.nnk.options.NNKOptions` as a keyword
            (``k``, ``kernel``, ``sigma``, ``solver`` (``"exact"``, ``"pgd"`` or ``"pruning"``),
            ``pruning_tol``, ``threshold``,
            ``jitter``, ``duplicates``, ``dup_tol``, ``search`` (the k-NN search), ``max_elements``,
            ``dtype``, ``threads``, ``solver_options``), applied on top of ``options``. ``k`` needs
            ``k < n`` (``k <= n`` with ``queries``).

    Returns:
        :class:`NNKResult`; :meth:`NNKResult.normalized_weights` gives interpolation weights.

    Example:
        >>> X = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
        >>> r = nnk_neighbors(X, k=3, kernel="gaussian", sigma=1.0)
        >>> r.count.tolist()  # points on a line keep at most one neighbour per side
        [1, 2, 2, 2, 1]
    """
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor of shape (n, d), got {type(X).__name__}")
    if X.dim() != 2 or not X.is_floating_point():
        raise ValueError(f"X must be a floating tensor of shape (n, d), got shape {tuple(X.shape)} {X.dtype}")
    opts = resolve_options(options, overrides, "nnk_neighbors")
    n, k = X.shape[0], opts.k
    if queries is None:
        if k >= n:
            raise ValueError(f"k={k} must be smaller than the number of points n={n} (the query itself is excluded)")
    else:
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2 or queries.shape[1] != X.shape[1]:
            raise ValueError(
                f"queries must be a tensor of shape (q, {X.shape[1]}), got "
                f"{tuple(queries.shape) if isinstance(queries, torch.Tensor) else type(queries).__name__}"
            )
        if k > n:
            raise ValueError(f"k={k} must be at most the number of points n={n}")
        queries = queries.to(X.device).unsqueeze(0)
    if not torch.isfinite(X).all() or (queries is not None and not torch.isfinite(queries).all()):
        raise ValueError("X and queries must be finite (no NaN or inf)")
    out = {name: v[0] for name, v in nnk_core(X.unsqueeze(0), queries, options=opts).items()}
    return NNKResult(
        indices=out["indices"],
        distances=out["distances"],
        weights=out["weights"],
        error=out["error"],
        count=out["count"],
        sigma=out.get("sigma"),
        zero=out["zero"],
        duplicate=out["duplicate"],
        ill_conditioned=out["ill_conditioned"],
        converged=out["converged"],
        kkt=out["kkt"],
        options=opts.summary(),
    )
