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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from convsim.nnk import search
from convsim.nnk.solvers import SOLVERS, cpu_threads, matvec, solve, use_compiled, uses_compiled_solver

__all__ = ["NNKResult", "nnk_neighbors", "KERNELS", "DUPLICATES"]

KERNELS = ("cosine", "gaussian")
DUPLICATES = ("keep", "drop")
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
        options: the settings used (kernel, k, solver, threshold, jitter, duplicates, ...).
    """

    indices: torch.Tensor
    distances: torch.Tensor
    weights: torch.Tensor
    error: torch.Tensor
    count: torch.Tensor
    sigma: Optional[torch.Tensor]
    zero: torch.Tensor
    duplicate: torch.Tensor
    ill_conditioned: torch.Tensor
    converged: torch.Tensor
    kkt: torch.Tensor
    options: dict = field(default_factory=dict)

    def normalized_weights(self) -> torch.Tensor:
        r"""Interpolation weights :math:`\tilde\theta=\theta/\sum_j\theta_j` (rows of zeros stay 0).

        Example:
            >>> r = nnk_neighbors(torch.tensor([[0.0], [1.0], [2.0]]), k=2, kernel="gaussian", sigma=1.0)
            >>> torch.allclose(r.normalized_weights().sum(-1), torch.ones(3, dtype=torch.float64))
            True
        """
        s = self.weights.sum(-1, keepdim=True)
        return torch.where(s > 0, self.weights / s.clamp_min(torch.finfo(self.weights.dtype).tiny), 0.0)


def _check_options(k, kernel, sigma, solver, threshold, jitter, duplicates, backend):
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if sigma is not None:
        if kernel != "gaussian":
            raise ValueError("sigma is only used by the gaussian kernel")
        if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
            raise ValueError(f"sigma must be a positive number or None (per-query rule), got {sigma!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    if backend not in search.BACKENDS:
        raise ValueError(f"backend must be one of {search.BACKENDS}, got {backend!r}")
    if backend == "faiss" and not search.faiss_available():
        raise ValueError("backend='faiss' needs the optional faiss package (pip install faiss-cpu)")


def _resolve_backend(backend: str, X: torch.Tensor) -> str:
    if backend == "auto":
        # the k-d tree is not chosen automatically: on 2 cores it measured no faster than the
        # batched matmul + topk for 2000 points in 4-9 dims (benchmarks/results/nnk.md)
        return "faiss" if X.device.type == "cpu" and search.faiss_available() else "torch"
    return backend


def _gram_systems(kernel, blk, sq_x, dtype):
    """Kernel systems from a whole-group Gram matrix: (b, K, dist2), all (Gc, q, ...)."""
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
        b = None
    return b, K, dist2


def _features(kernel: str, X: torch.Tensor):
    r"""Per-point tables whose inner products give the kernel systems in one batched product.

    cosine: :math:`u=[1, x/\|x\|]/\sqrt2`, so :math:`u_a^\top u_b=\tfrac12+\tfrac12\cos`.
    gaussian: :math:`u=[x,\|x\|^2,1]`, :math:`v=[-2x,1,\|x\|^2]`, so :math:`u_a^\top v_b=\|x_a-x_b\|^2`.
    """
    sq = (X * X).sum(-1, keepdim=True)
    one = torch.ones_like(sq)
    if kernel == "cosine":
        Xn = X / sq.sqrt().clamp_min(torch.finfo(X.dtype).tiny)
        u = torch.cat([one, Xn], -1) * 0.5 ** 0.5
        return u, u
    return torch.cat([X, sq, one], -1), torch.cat([-2 * X, one, sq], -1)


def _point_systems(kernel, U, V, Uq, Vq, idx, threads=None):
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
        m, M = _numba.kernel_systems(Un, Un if V is None else V.reshape(Gc * n, f).numpy(),
                                     vq.reshape(Gc * q, f).numpy(), flat.view(Gc * q, k).numpy(),
                                     clamp=V is not None, threads=threads)
        return torch.from_numpy(m).view(Gc, q, k), torch.from_numpy(M).view(Gc, q, k, k)
    Zu = U.reshape(Gc * n, f).index_select(0, flat).view(Gc * q, k, f)
    Zv = Zu if V is None else V.reshape(Gc * n, f).index_select(0, flat).view(Gc * q, k, f)
    M = torch.bmm(Zu, Zv.transpose(1, 2))
    m = torch.bmm(Zu, vq.reshape(Gc * q, f, 1)).view(Gc, q, k)
    if V is not None:
        M.clamp_min_(0)
        m.clamp_min_(0)
    return m, M.view(Gc, q, k, k)


def nnk_core(
    X: torch.Tensor,
    queries: Optional[torch.Tensor] = None,
    *,
    query_index: Optional[torch.Tensor] = None,
    k: int = 25,
    kernel: str = "cosine",
    sigma: Optional[float] = None,
    solver: str = "exact",
    threshold: float = 1e-10,
    jitter: float = 1e-8,
    duplicates: str = "keep",
    dup_tol: float = 1e-9,
    backend: str = "auto",
    max_elements: int = 2**24,
    dtype: torch.dtype = torch.float64,
    threads: Optional[int] = 1,
    solver_options: Optional[dict] = None,
) -> dict:
    """NNK for G independent groups of points at once: ``X`` (G, n, d), ``queries`` (G, q, d).

    The shared engine behind :func:`nnk_neighbors` (G = 1) and the channel-wise analysis
    (G = channels). ``query_index`` (q,) restricts the queries to some points of ``X`` (each
    still excluded from its own candidates). Candidates are searched in the dtype of ``X``;
    kernels and solves use ``dtype``. The search and the compiled kernels use torch's thread
    setting, the small torch operations ``threads`` (see :func:`~convsim.nnk.solvers.cpu_threads`).
    Returns a dict of (G, q, ...) tensors with the fields of :class:`NNKResult`.

    Example:
        >>> X = torch.tensor([[[0.0], [1.0], [2.0]], [[0.0], [5.0], [6.0]]])  # two groups
        >>> nnk_core(X, k=1, kernel="gaussian", sigma=1.0)["indices"].squeeze(-1)
        tensor([[1, 0, 1],
                [1, 2, 1]])
    """
    G, n, d = X.shape
    dev = X.device
    torch_threads = torch.get_num_threads()  # for the large products and the compiled kernels
    if query_index is not None:
        query_index = query_index.to(dev)
    zero_x = (X == 0).all(-1)  # flags refer to the raw points
    if queries is not None:
        q, zero_q = queries.shape[1], (queries == 0).all(-1)
    elif query_index is not None:
        q, zero_q = query_index.numel(), zero_x[:, query_index]
    else:
        q, zero_q = n, zero_x
    if kernel == "gaussian":  # distances are translation invariant; centring keeps them accurate
        mean = X.mean(1, keepdim=True)
        X = X - mean
        queries = None if queries is None else queries - mean
    X64 = X.to(dtype)
    Q64 = None if queries is None else queries.to(dtype)
    sq_x = (X64 * X64).sum(-1)
    banned = zero_x if kernel == "cosine" and bool(zero_x.any()) else None
    backend = _resolve_backend(backend, X)
    # A whole-group Gram (n^2 d, float64) beats gathering each query's k candidates (n k^2 d) only
    # when the vectors are long and n is small next to k^2.
    use_gram = d >= 4 * k and n <= k * k
    tables: dict = {}  # per-point feature tables, built when the first block needs them

    def systems(blk):
        """(b, K, dist2) of a block: kernel to the query, kernel among candidates, distances."""
        if blk.gram is not None:
            return _gram_systems(kernel, blk, sq_x, dtype)
        if not tables:
            tables["x"] = _features(kernel, X64)
            tables["q"] = tables["x"] if queries is None else _features(kernel, Q64)
        (U, V), (Uq, Vq) = tables["x"], tables["q"]
        gs, rs = blk.groups, blk.rows
        rows = rs if query_index is None else query_index[rs]
        b, K = _point_systems(kernel, U[gs], None if kernel == "cosine" else V[gs],
                              Uq[gs][:, rows], Vq[gs][:, rows], blk.index, torch_threads)
        # Gaussian tables give float64 squared distances; for cosine keep the search's distances
        return b, K, (b if kernel == "gaussian" else blk.dist2.to(dtype))

    out = {
        "indices": torch.full((G, q, k), -1, dtype=torch.long, device=dev),
        "distances": torch.full((G, q, k), float("inf"), dtype=dtype, device=dev),
        "weights": torch.zeros(G, q, k, dtype=dtype, device=dev),
        "error": torch.ones(G, q, dtype=dtype, device=dev),
        "sigma": torch.zeros(G, q, dtype=dtype, device=dev) if kernel == "gaussian" else None,
        "duplicate": torch.zeros(G, q, dtype=torch.bool, device=dev),
        "ill_conditioned": torch.zeros(G, q, dtype=torch.bool, device=dev),
        "converged": torch.ones(G, q, dtype=torch.bool, device=dev),
        "kkt": torch.zeros(G, q, dtype=dtype, device=dev),
    }
    opts = dict(solver_options or {})
    # The compiled solver splits the batch over its own workers in chunks handed out one at a
    # time, so it uses every thread torch may use; ``threads`` is for the small torch operations.
    compiled = solver == "exact" and uses_compiled_solver(dev, dtype, opts.get("backend", "auto"))
    opts.setdefault("threads", torch_threads if compiled else threads)
    # systems per batched solve: large enough to amortise the solver's per-iteration overhead,
    # small enough that the (k+1)^2 tableaux (about 24 MB) stay in a CPU's last-level cache
    solve_batch = min(16384, max(1024, 3 * 2**20 // ((k + 1) * (k + 1))))
    opts.setdefault("batch_size", solve_batch)
    min_batch = solve_batch // 4  # smaller blocks are gathered into one solve
    blocks = search.candidate_blocks(
        X, k, queries=queries, query_index=query_index, banned=banned, backend=backend,
        max_elements=max_elements, gram_dtype=dtype, want_gram=use_gram,
        row_cost=3 * k * k + (0 if use_gram else 2 * k * (d + 2)), threads=torch_threads)
    pending: list = []  # systems of several small blocks are solved together

    def flush():
        if not pending:
            return
        cat = [torch.cat([p[i] for p in pending]) for i in range(3)]
        b, K, valid = cat
        theta, dup, res = _solve_systems(b, K, valid, solver, opts, threshold, jitter, duplicates, dup_tol)
        # e = K_ii - 2 b'theta + theta' K theta, without the jitter (theta is 0 off the valid set)
        quad = (theta * matvec(K, theta)).sum(-1) - jitter * (theta * theta).sum(-1)
        err = (1 - 2 * (b * theta).sum(-1) + quad).clamp_min_(0)
        ill = res.pivot < ILL_CONDITIONED_PIVOT
        s0 = 0
        for *_, gs, rs, shape in pending:
            s1 = s0 + shape[0] * shape[1]
            for name, v in (("weights", theta), ("error", err), ("duplicate", dup.any(-1)), ("ill_conditioned", ill),
                            ("converged", res.converged), ("kkt", res.kkt)):
                out[name][gs, rs] = v[s0:s1].view(*shape, *v.shape[1:])
            s0 = s1
        pending.clear()

    with cpu_threads(threads, dev):  # the generator's small steps run under this setting too
        for blk in blocks:
            gs, rs, idx = blk.groups, blk.rows, blk.index
            Gc, qc = idx.shape[:2]
            valid = idx >= 0
            if kernel == "cosine":
                valid &= ~zero_q[gs, rs].unsqueeze(-1)
            b, K, dist2 = systems(blk)
            del blk
            dist2 = dist2.masked_fill_(~(idx >= 0), float("inf"))
            if kernel == "gaussian":
                if sigma is not None:
                    sig = torch.full((Gc, qc), float(sigma), dtype=dtype, device=dev)
                else:  # distance to the farthest found candidate / 3
                    last = ((idx >= 0).sum(-1) - 1).clamp_min(0)
                    sig = dist2.gather(-1, last.unsqueeze(-1)).squeeze(-1).sqrt() / 3
                    sig = torch.where((idx >= 0).any(-1), sig, torch.zeros_like(sig))
                out["sigma"][gs, rs] = sig
                scale = -0.5 / (sig * sig).clamp_min(torch.finfo(dtype).tiny)
                b = (dist2 * scale.unsqueeze(-1)).exp_()
                K = K.mul_(scale.view(Gc, qc, 1, 1)).exp_()
            K.diagonal(dim1=-2, dim2=-1).fill_(1.0)
            out["indices"][gs, rs] = idx
            out["distances"][gs, rs] = dist2.sqrt()
            pending.append((b.reshape(-1, k), K.reshape(-1, k, k), valid.reshape(-1, k), gs, rs, (Gc, qc)))
            if sum(p[0].shape[0] for p in pending) >= min_batch:  # large blocks are never copied
                flush()
        flush()
    out["count"] = (out["weights"] > 0).sum(-1)
    out["zero"] = zero_q
    return out


def _solve_systems(b, K, valid, solver, opts, threshold, jitter, duplicates, dup_tol):
    """Mask, jitter and solve systems b (B, k), K (B, k, k); K gets the jitter on its diagonal.

    Returns (theta, duplicate mask, SolveResult) with theta thresholded.
    """
    dtype = b.dtype
    dup = valid & (b >= 1 - dup_tol)
    if duplicates == "drop":  # drop duplicates of the query unless every candidate is one
        valid = valid & ~(dup & ~(dup == valid).all(-1, keepdim=True))
    if not bool(valid.all()):  # decouple missing/excluded candidates: identity rows, zero rhs
        vf = valid.to(dtype)
        K.mul_(vf.unsqueeze(-1) * vf.unsqueeze(-2))
        b.mul_(vf)
        K.diagonal(dim1=-2, dim2=-1).add_(1 - vf)
    K.diagonal(dim1=-2, dim2=-1).add_(jitter)
    res = solve(K, b, solver, **opts)
    theta = res.theta
    if duplicates == "keep" and bool(dup.any()):
        # exact copies reconstruct the query with error 0; share the weight equally among them
        # (the jitter-free optimum closest to the jittered one), nothing for the others
        has = dup.any(-1, keepdim=True)
        share = dup.to(dtype) / dup.sum(-1, keepdim=True).clamp_min(1).to(dtype)
        theta = torch.where(has, share, theta)
    theta = torch.where(theta > threshold, theta, torch.zeros_like(theta))
    return theta, dup, res


def nnk_neighbors(
    X: torch.Tensor,
    *,
    k: int = 25,
    kernel: str = "cosine",
    sigma: Optional[float] = None,
    solver: str = "exact",
    queries: Optional[torch.Tensor] = None,
    threshold: float = 1e-10,
    jitter: float = 1e-8,
    duplicates: str = "keep",
    dup_tol: float = 1e-9,
    backend: str = "auto",
    max_elements: int = 2**24,
    dtype: torch.dtype = torch.float64,
    threads: Optional[int] = 1,
    solver_options: Optional[dict] = None,
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
        k: candidates per query; needs ``k < n`` (``k <= n`` with ``queries``).
        kernel: ``"cosine"`` (:math:`0.5+0.5\cos`) or ``"gaussian"``.
        sigma: Gaussian bandwidth; ``None`` = per query, distance to the k-th candidate / 3.
        solver: ``"exact"`` (batched Lawson--Hanson active set) or ``"fast"`` (batched projected
            gradient, weights below 1e-6 zeroed).
        queries: (q, d) points to describe with neighbours from ``X`` (no exclusion).
        threshold: weights at or below it are set to 0 and not counted.
        jitter: :math:`\delta`, added to the diagonal of :math:`K_{S,S}` for the solve.
        duplicates: ``"keep"`` or ``"drop"`` candidates with :math:`K_{ij}\ge1-` ``dup_tol``.
        backend: candidate search, ``"auto"`` (FAISS when importable and on CPU, else torch),
            ``"torch"``, ``"faiss"`` or ``"kdtree"`` (exact ``scipy.spatial.cKDTree``, CPU; pays
            off for large n in few dimensions).
        max_elements: bound on the floats held per search/solve block.
        dtype: compute dtype of kernels and solver (float64 by default).
        threads: CPU threads for the many small torch operations (kernels, masks, and the torch
            solver), which run fastest single-threaded; ``None`` keeps torch's setting. The
            search's large products and the compiled (numba) kernels use torch's setting,
            ``torch.get_num_threads()``; the compiled solver's can be set in ``solver_options``.
        solver_options: extra keyword arguments for the solver
            (:func:`~convsim.nnk.solvers.active_set` / :func:`~convsim.nnk.solvers.projected_gradient`).

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
    _check_options(k, kernel, sigma, solver, threshold, jitter, duplicates, backend)
    n = X.shape[0]
    if queries is None:
        if k >= n:
            raise ValueError(f"k={k} must be smaller than the number of points n={n} (the query itself is excluded)")
    else:
        if not isinstance(queries, torch.Tensor) or queries.dim() != 2 or queries.shape[1] != X.shape[1]:
            raise ValueError(f"queries must be a tensor of shape (q, {X.shape[1]}), got "
                             f"{tuple(queries.shape) if isinstance(queries, torch.Tensor) else type(queries).__name__}")
        if k > n:
            raise ValueError(f"k={k} must be at most the number of points n={n}")
        queries = queries.to(X.device).unsqueeze(0)
    if not torch.isfinite(X).all() or (queries is not None and not torch.isfinite(queries).all()):
        raise ValueError("X and queries must be finite (no NaN or inf)")
    out = nnk_core(X.unsqueeze(0), queries, k=k, kernel=kernel, sigma=sigma, solver=solver,
                   threshold=threshold, jitter=jitter, duplicates=duplicates, dup_tol=dup_tol,
                   backend=backend, max_elements=max_elements, dtype=dtype, threads=threads,
                   solver_options=solver_options)
    fields = {name: (None if v is None else v[0]) for name, v in out.items()}
    options = dict(k=k, kernel=kernel, sigma=sigma, solver=solver, threshold=threshold, jitter=jitter,
                   duplicates=duplicates, dup_tol=dup_tol)
    return NNKResult(options=options, **fields)
