r"""Batched solvers for the NNK quadratic program.

For every system :math:`(A, b)` of a batch, with :math:`A\in\mathbb R^{k\times k}` positive
(semi-)definite and :math:`b\in\mathbb R^k`,

.. math::
    \theta^\star = \arg\min_{\theta\ge 0}\ f(\theta) = \tfrac12\,\theta^\top A\,\theta - b^\top\theta .

With :math:`A = K_{S,S}` (kernel among the candidates of a query) and :math:`b = K_{S,i}` this is
the NNK problem; with :math:`A = LL^\top` it is the NNLS problem
:math:`\min_{\theta\ge0}\|L^\top\theta - L^{-1}b\|^2` that ``scipy.optimize.nnls`` solves.

* :func:`active_set` (``solver="exact"``): Lawson--Hanson active set on the Gram form (as in
  "fast NNLS"), all systems at once. Each iteration every unfinished system either *adds* the free
  variable with the largest negative gradient :math:`w_j = (b - A\theta)_j > \text{tol}`, or (when
  the unconstrained solution on the passive set has a non-positive entry) moves back to the
  feasible boundary and *removes* the variable that hit zero. The passive-set solutions are kept in
  a swept tableau :math:`\left[\begin{smallmatrix}A & b\\ b^\top & 0\end{smallmatrix}\right]`: sweeping
  a pivot in or out is one batched rank-one update, :math:`O(k^2)` per system instead of a
  factorisation, and the swept tableau holds the passive solution :math:`A_{PP}^{-1}b_P` and the
  gradients :math:`b_R - A_{RP}A_{PP}^{-1}b_P` of the free variables. The result is refined once
  (iterative refinement on the final support) and checked against the KKT conditions
  :math:`\theta_P > 0,\ (A\theta-b)_P = 0,\ (A\theta-b)_R\ \ge 0`.
* :func:`projected_gradient` (``solver="pgd"``, projected gradient descent):
  :math:`\theta\leftarrow\max(0,\theta-\eta(A\theta-b))`
  with :math:`\eta = 1/\hat\lambda`, :math:`\hat\lambda\ge\lambda_{\max}(A)` per system, Nesterov
  momentum with adaptive restart (``accelerated=True``), a per-system stopping tolerance, and
  weights below ``threshold`` set to zero. Matrix products only, so it suits GPUs.
* :func:`pruning` (``solver="pruning"``): the one-way pruning solver of the authors' released
  code (spec §1.9(b)): from :math:`x=b`, Cholesky solves on a keep set that only shrinks, a
  near-duplicate collapse and a final threshold. Batched Cholesky in torch (any device), or a
  compiled per-system loop with numba; it can miss the optimum, which :func:`active_set` finds.

All work in the dtype and on the device of ``A`` and process the batch in chunks of
``batch_size`` systems so memory stays bounded. On CPU, when ``numba`` is installed (the ``fast``
extra) and not switched off (:func:`use_compiled`), :func:`active_set` and :func:`pruning` use
the compiled per-system solvers of :mod:`convsim.nnk._numba` (``engine="auto"``; ``engine``
names how they run, :data:`ENGINES`; measured 5-21x faster than their torch paths on CPU,
``benchmarks/bench_nnk_solvers.py``); systems the compiled exact solver does not settle
(iteration limit, KKT violation above ``kkt_tol``) are re-solved by the torch path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from convsim._internal.compiled import (  # the one switch, shared with the CS kernels
    compiled_enabled,
    compiled_kernels,
    compiled_module,
)

__all__ = [
    "SolveResult",
    "active_set",
    "projected_gradient",
    "pruning",
    "solve",
    "objective",
    "numba_available",
    "use_compiled",
    "uses_compiled_solver",
    "uses_compiled_pruning",
    "compiled_kernels",
    "SOLVERS",
    "ENGINES",
]

SOLVERS = ("exact", "pgd", "pruning")  # exact active set; projected gradient descent; released one-way pruning
ENGINES = ("auto", "torch", "numba")  # how the exact and pruning solvers run (their ``engine``)


def numba_available() -> bool:
    """Whether the compiled exact solver can be used (``numba`` imports); looked up once.

    Example:
        >>> isinstance(numba_available(), bool)
        True
    """
    return _numba_module() is not None


def _numba_module() -> ModuleType | None:
    """convsim.nnk._numba if numba imports (looked up once)."""
    return compiled_module("convsim.nnk._numba")


def use_compiled() -> bool:
    """Whether the CPU fast paths (selection, kernel systems, exact solver) use the numba kernels.

    True when numba imports and they are switched on: by default, unless the environment
    variable ``CONVSIM_NUMBA=0`` switches them off for the process or :func:`compiled_kernels`
    for a block.

    Example:
        >>> with compiled_kernels(False):
        ...     use_compiled()
        False
    """
    return compiled_enabled() and numba_available()


def uses_compiled_solver(device: torch.device, dtype: torch.dtype, engine: str = "auto") -> bool:
    """Whether :func:`active_set` with this ``engine`` solves systems of ``dtype`` on ``device``
    with the compiled solver: ``"numba"`` always, ``"auto"`` for float64 CPU tensors when
    :func:`use_compiled`.

    Example:
        >>> uses_compiled_solver(torch.device("cpu"), torch.float32)
        False
    """
    return engine == "numba" or (
        engine == "auto" and device.type == "cpu" and dtype == torch.float64 and use_compiled()
    )


@dataclass
class SolveResult:
    r"""Solutions and diagnostics of a batch of NNK systems (B = number of systems, k = size).

    Attributes:
        theta: (B, k) non-negative solutions.
        converged: (B,) bool; False when the iteration limit was reached first.
        kkt: (B,) largest KKT violation :math:`\max(\max_P|g_P|,\ \max_R(-g_R)^+)`,
            :math:`g = A\theta - b`.
        pivot: (B,) smallest :math:`1/(A_{PP}^{-1})_{pp}` over the support :math:`P` (the squared
            distance of a neighbour from the span of the others, in kernel space); ``inf`` for an
            empty support. Small values mean an ill-conditioned support.
        iterations: (B,) iterations used (rounds for :func:`pruning`).
        jitter: (B,) diagonal shift :func:`pruning` added to factor numerically singular systems
            (0 when none); ``None`` for the other solvers.
    """

    theta: torch.Tensor
    converged: torch.Tensor
    kkt: torch.Tensor
    pivot: torch.Tensor
    iterations: torch.Tensor
    jitter: torch.Tensor | None = None


@contextmanager
def cpu_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None``, or a non-CPU device: unchanged).

    The NNK loops issue many small tensor operations; on CPU each one's OpenMP fork/join costs
    more than the split saves, and on a loaded machine a descheduled worker thread stalls every
    operation (measured on 2 busy cores: a 3000-query NNK took 0.7 s with 2 threads, 0.23 s
    with 1). The setting is process-wide, so it is restored on exit.
    """
    old = torch.get_num_threads()
    if n is None or device.type != "cpu" or n == old:
        yield
        return
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def matvec(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product: (B, k, k) x (B, k) -> (B, k).

    Example:
        >>> matvec(torch.eye(2).expand(3, 2, 2), torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """
    return torch.bmm(A, v.unsqueeze(-1)).squeeze(-1)


def objective(A: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r""":math:`\tfrac12\theta^\top A\theta - b^\top\theta` for each system: (B,).

    Example:
        >>> objective(torch.eye(2)[None], torch.ones(1, 2), torch.ones(1, 2))
        tensor([-1.])
    """
    At = matvec(A, theta)
    return 0.5 * (theta * At).sum(-1) - (b * theta).sum(-1)


def _check(A: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(A, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("A and b must be torch tensors")
    if A.dim() != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"A must have shape (B, k, k), got {tuple(A.shape)}")
    if b.shape != A.shape[:2]:
        raise ValueError(f"b must have shape (B, k) = {tuple(A.shape[:2])}, got {tuple(b.shape)}")
    if not A.is_floating_point() or A.dtype != b.dtype:
        raise TypeError(f"A and b must share one floating dtype, got {A.dtype} and {b.dtype}")


def _kkt(A: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    g = matvec(A, theta) - b
    on = theta > 0
    stationarity = torch.where(on, g.abs(), torch.zeros_like(g))
    dual = torch.where(on, torch.zeros_like(g), (-g).clamp_min(0))
    return torch.maximum(stationarity, dual).amax(-1) if theta.shape[-1] else theta.new_zeros(theta.shape[0])


def _sweep_(
    T: torch.Tensor,
    p: torch.Tensor,
    E: torch.Tensor,
    sgn: torch.Tensor,
    actf: torch.Tensor,
    diag_at: torch.Tensor,
    rowbase: torch.Tensor,
    ar: torch.Tensor,
) -> None:
    """Sweep (sgn=+1) or reverse-sweep (sgn=-1) the symmetric tableaux ``T`` on pivot ``p``.

    For a pivot value d = T[p, p]: T_RR -= T_Rp T_pR / d, T_pR = sgn * T_pR / d, T_pp = -1/d.
    Systems with ``actf`` = 0 are left unchanged (their update is multiplied by zero). ``E`` (m, n)
    is the one-hot of ``p`` on active rows, ``diag_at`` = ``(n + 1) * arange(m * n)[::n]``-style
    offsets of each tableau's diagonal start, ``rowbase`` (m, n) the flat offsets of each
    tableau's first row, ``ar`` = arange(m).
    """
    m, n, _ = T.shape
    flat = T.view(-1)
    at = (rowbase + (p * n).unsqueeze(1)).view(-1)  # flat offsets of row p
    row = flat.index_select(0, at).view(m, n)  # row p (T symmetric)
    d = flat.index_select(0, diag_at + p * (n + 1))
    inv = actf / d.masked_fill(actf == 0, 1.0)
    # One rank-one update also sets column p: with c = row/d except c_p = 1 - sgn/d,
    # T_ip - row_i c_p = sgn row_i / d. Row p is then overwritten (a contiguous write), so the
    # strided column write of the symmetric update is not needed.
    c = row * inv.unsqueeze(1)
    c.addcmul_(E, (sgn * inv).unsqueeze(1), value=-1.0)
    T.addcmul_(row.unsqueeze(2), c.unsqueeze(1), value=-1.0)
    coef = sgn * inv + (1 - actf)  # inactive rows keep their row unchanged
    new = row * coef.unsqueeze(1)
    new.addcmul_(E, (-inv - d * coef).unsqueeze(1))  # the pivot entry becomes -1/d
    flat.index_copy_(0, at, new.view(-1))


@dataclass
class _Working:
    """The unfinished systems of :func:`_lawson_hanson` (working row i is output row ``ids[i]``).

    The bookkeeping is arithmetic on a one-hot of the pivot (no boolean indexing in the loop):
    ``Pf`` is 1 on the passive set, ``off`` is ``big`` off it, ``pen`` is ``-big`` on the passive
    and blocked variables, so ``col + off`` exposes passive values and ``col + pen`` free gradients.
    ``ar``, ``base``, ``rowbase`` and ``E`` are the index layout of :func:`_sweep_` for the
    current number of rows (rebuilt by :meth:`keep`).
    """

    ids: torch.Tensor  # (mw,) output rows
    T: torch.Tensor  # (mw, k+1, k+1) swept tableaux
    x: torch.Tensor  # (mw, k) feasible iterates
    Pf: torch.Tensor
    off: torch.Tensor
    pen: torch.Tensor
    last: torch.Tensor  # (mw,) variable added in the previous iteration (-1: none)
    fin_it: torch.Tensor  # (mw,) iteration at which a system finished
    done: torch.Tensor  # (mw,) finished, not yet compacted away
    ar: torch.Tensor = field(init=False)
    base: torch.Tensor = field(init=False)
    rowbase: torch.Tensor = field(init=False)
    E: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self._layout()

    def _layout(self) -> None:
        mw, n = self.T.shape[0], self.T.shape[1]
        dev = self.T.device
        self.ar = torch.arange(mw, device=dev)
        self.base = self.ar * (n * n)
        self.rowbase = self.base.unsqueeze(1) + torch.arange(n, device=dev)
        self.E = torch.zeros(mw, n, dtype=self.T.dtype, device=dev)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the working rows ``rows`` (none of them done)."""
        for name in ("ids", "T", "x", "Pf", "off", "pen", "last", "fin_it"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self.done = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
        self._layout()


def _lh_iteration(w: _Working, big: float, tol: float, pivot_tol: float) -> torch.Tensor:
    """One Lawson--Hanson step of every working system; returns the systems that finished now.

    Each live system either adds the free variable with the largest gradient (``outer``), or,
    when the passive solution has a non-positive entry (``inner``), moves to the feasible boundary
    and removes the variable that hit zero.
    """
    k = w.x.shape[1]
    n, dt = k + 1, w.T.dtype
    col = w.T[:, k, :k]  # row k = column k (symmetric), contiguous: passive solution / gradients
    z = col * w.Pf
    live = ~w.done
    inner = ((col + w.off).amin(1) <= 0) & live
    wmax, j = (col + w.pen).max(1)
    piv = w.T.view(-1).index_select(0, w.base + j * (n + 1))
    outer0 = live & ~inner
    wok = wmax > tol
    fin = outer0 & ~wok
    pok = piv > pivot_tol
    outer = outer0 & wok & pok
    any_inner = bool(inner.any())
    if any_inner:  # move to the boundary and drop the variable that hits zero
        neg = (z <= 0) & (w.Pf > 0)
        ratio = (w.x / (w.x - z).clamp_min(torch.finfo(dt).tiny)).masked_fill_(~neg, float("inf"))
        alpha, r = ratio.min(1)
        alpha = alpha.clamp(0, 1)
        step = torch.where(inner, alpha, (outer | fin).to(dt))
        pvt = torch.where(inner, r, j)
        # a variable added in the last iteration and removed now without progress would cycle
        stuck = inner & (r == w.last) & (alpha <= 0)
        act = inner | outer
        sgn = 1 - 2 * inner.to(dt)  # +1 add, -1 remove
    else:
        step = (outer | fin).to(dt)
        pvt, act, sgn = j, outer, torch.ones_like(wmax)
    actf = act.to(dt)
    w.E.zero_().scatter_(1, pvt.unsqueeze(1), actf.unsqueeze(1))
    Ek = w.E[:, :k]
    w.x = torch.addcmul(w.x, z - w.x, step.unsqueeze(1))
    if any_inner:
        w.x.clamp_min_(0).mul_(1 - Ek * inner.to(dt).unsqueeze(1))  # the removed variable is 0
    _sweep_(w.T, pvt, w.E, sgn, actf, w.base, w.rowbase, w.ar)
    upd = Ek * sgn.unsqueeze(1)
    w.Pf.add_(upd)
    w.off.add_(upd, alpha=-big)
    w.pen.add_(upd, alpha=-big)
    newly = outer0 & wok & ~pok  # numerically dependent: never try again
    if any_inner:
        newly |= stuck
    if bool(newly.any()):
        rows = torch.nonzero(newly).squeeze(1)
        w.pen[rows, pvt[rows] if any_inner else j[rows]] = -big
    w.last = j  # only an added j can be removed next with no progress (j is never passive)
    return fin


def _lawson_hanson(
    T: torch.Tensor,
    P: torch.Tensor,
    x: torch.Tensor,
    blocked: torch.Tensor,
    tol: float,
    pivot_tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run Lawson--Hanson on swept tableaux. Returns (T, P, x, done, iterations).

    ``T`` (m, k+1, k+1) must be the tableau swept on the passive sets ``P`` (m, k) and ``x`` a
    feasible point supported on ``P`` (the subspace solution when no entry is negative); ``T``,
    ``P`` and ``x`` are updated in place and returned. Finished systems are compacted away once a
    third of the working batch is done (:class:`_Working`, :func:`_lh_iteration`).
    """
    m, k = P.shape
    dev, dt = T.device, T.dtype
    big = min(1e300, torch.finfo(dt).max / 8)  # finite in float32 too
    iters = torch.zeros(m, dtype=torch.long, device=dev)
    done_out = torch.zeros(m, dtype=torch.bool, device=dev)
    Pf = P.to(dt)
    w = _Working(
        ids=torch.arange(m, device=dev),
        T=T,
        x=x.clone(),
        Pf=Pf,
        off=(1 - Pf) * big,
        pen=(P | blocked).to(dt) * -big,
        last=torch.full((m,), -1, dtype=torch.long, device=dev),
        fin_it=torch.zeros(m, dtype=torch.long, device=dev),
        done=torch.zeros(m, dtype=torch.bool, device=dev),
    )
    it = 0
    while w.ar.numel() and it < max_iter:
        it += 1
        fin = _lh_iteration(w, big, tol, pivot_tol)
        if bool(fin.any()):
            w.fin_it = torch.where(fin, it, w.fin_it)
            w.done = w.done | fin
            if 3 * int(w.done.sum()) >= w.ar.numel():  # compact: store the finished systems, keep the others
                dsel = torch.nonzero(w.done).squeeze(1)
                fd = w.ids.index_select(0, dsel)
                if w.T is not T:  # (index_select/index_copy_ copy whole tableaux faster than masks)
                    T.index_copy_(0, fd, w.T.index_select(0, dsel))
                P[fd] = w.Pf.index_select(0, dsel) > 0.5
                x.index_copy_(0, fd, w.x.index_select(0, dsel))
                done_out[fd] = True
                iters[fd] = w.fin_it.index_select(0, dsel)
                w.keep(torch.nonzero(~w.done).squeeze(1))
    if w.ids.numel():  # iteration limit: store the unfinished state as it is
        if w.T is not T:
            T[w.ids] = w.T
        P[w.ids] = w.Pf > 0.5
        x[w.ids] = w.x
        done_out[w.ids] = w.done
        iters[w.ids] = torch.where(w.done, w.fin_it, it)
    return T, P, x, done_out, iters


def _tableau(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The symmetric tableau [[A, b], [b^T, 0]] of every system: (m, k+1, k+1)."""
    m, k = b.shape
    T = A.new_empty(m, k + 1, k + 1)
    T[:, :k, :k] = A
    T[:, :k, k] = b
    T[:, k, :k] = b
    T[:, k, k] = 0
    return T


def _swept_tableau(A: torch.Tensor, b: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The tableau of (A, b) swept on the passive sets ``P``, computed afresh (masked inverse)."""
    T0 = _tableau(A, b)
    m, n, _ = T0.shape
    Pm = torch.cat([P, P.new_zeros(m, 1)], 1)
    PP = Pm.unsqueeze(2) & Pm.unsqueeze(1)
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    Minv = torch.linalg.inv(T0 * PP + eye * (~Pm).to(A.dtype).unsqueeze(1)) * PP
    MT = Minv @ T0
    TM = T0 @ Minv
    R = ~Pm
    RR = R.unsqueeze(2) & R.unsqueeze(1)
    PR = Pm.unsqueeze(2) & R.unsqueeze(1)
    T = (T0 - T0 @ MT) * RR + MT * PR + TM * PR.transpose(1, 2) - Minv
    return T


def active_set(
    A: torch.Tensor,
    b: torch.Tensor,
    *,
    tol: float = 1e-10,
    pivot_tol: float = 1e-13,
    max_iter: int | None = None,
    kkt_tol: float = 1e-8,
    batch_size: int = 4096,
    threads: int | None = 1,
    engine: str = "auto",
) -> SolveResult:
    r"""Exact batched NNK/NNLS: Lawson--Hanson active set on the Gram form.

    .. math::
        \theta^\star = \arg\min_{\theta\ge0}\ \tfrac12\theta^\top A\theta - b^\top\theta

    for every system of the batch. A free variable enters only when its gradient
    :math:`w_j = (b - A\theta)_j` exceeds ``tol`` and its pivot (the Schur complement
    :math:`A_{jj} - A_{jP}A_{PP}^{-1}A_{Pj}`) exceeds ``pivot_tol``, so the passive set never
    contains (numerically) dependent columns and each passive solve is well posed. Systems still
    violating the KKT conditions by more than ``kkt_tol`` after refinement get a second pass from a
    freshly computed tableau.

    Args:
        A: (B, k, k) symmetric positive semi-definite matrices (float64 recommended).
        b: (B, k) right-hand sides.
        tol: gradient tolerance for adding a variable (LH's optimality test).
        pivot_tol: smallest pivot accepted when a variable enters.
        max_iter: iteration limit per system (default ``10 * k + 10``).
        kkt_tol: KKT violation above which a system is re-solved from a fresh tableau.
        batch_size: systems per chunk (bounds memory at about ``batch_size * (k+1)**2`` floats).
        threads: intra-op CPU threads while solving (see :func:`cpu_threads`; ``None`` = as set);
            with numba, its worker threads (``None`` = numba's default, one per core).
        engine: how the solver runs (:data:`ENGINES`; in the NNK functions
            ``solver_options={"engine": ...}``): ``"torch"`` (batched tensor operations, any
            device), ``"numba"`` (compiled per-system solver, CPU only, float64 internally; needs
            ``numba``) or ``"auto"`` (numba for float64 CPU tensors when it imports, torch
            otherwise). Both follow the same rules and give the same supports; the numba path
            re-solves with torch the systems it does not settle.

    Returns:
        :class:`SolveResult`.

    Example:
        >>> A = torch.tensor([[[2.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
        >>> b = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
        >>> active_set(A, b).theta
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    _check(A, b)
    B, k = b.shape
    max_iter = 10 * k + 10 if max_iter is None else int(max_iter)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numba":
        if A.device.type != "cpu":
            raise ValueError(f"engine='numba' solves CPU tensors only, got device {A.device}")
        if not numba_available():
            raise ImportError("engine='numba' needs numba (pip install 'convsim[fast]')")
    if uses_compiled_solver(A.device, A.dtype, engine) and B:
        return _active_set_numba(A, b, tol, pivot_tol, max_iter, kkt_tol, batch_size, threads)
    with cpu_threads(threads, A.device):
        outs = [
            _active_set_chunk(A[s : s + batch_size], b[s : s + batch_size], tol, pivot_tol, max_iter, kkt_tol)
            for s in range(0, B, batch_size)
        ]
    if not outs:
        z = b.new_zeros(0)
        return SolveResult(b.new_zeros(0, k), z.bool(), z, z, z.long())
    return SolveResult(
        *(torch.cat([getattr(o, f) for o in outs]) for f in ("theta", "converged", "kkt", "pivot", "iterations"))
    )


def _active_set_numba(
    A: torch.Tensor,
    b: torch.Tensor,
    tol: float,
    pivot_tol: float,
    max_iter: int,
    kkt_tol: float,
    batch_size: int,
    threads: int | None,
) -> SolveResult:
    """The compiled solver on the whole batch; unsettled systems go to the torch path."""
    compiled = _numba_module()
    assert compiled is not None  # the caller checked numba_available()
    An = A.detach().to(torch.float64).contiguous().numpy()
    bn = b.detach().to(torch.float64).contiguous().numpy()
    theta, status, kkt, pivot, iters = compiled.solve_batch(
        An, bn, tol=tol, pivot_tol=pivot_tol, max_iter=max_iter, kkt_tol=kkt_tol, threads=threads
    )
    res = SolveResult(
        torch.from_numpy(theta).to(A.dtype),
        torch.from_numpy(status == 0),
        torch.from_numpy(kkt).to(A.dtype),
        torch.from_numpy(pivot).to(A.dtype),
        torch.from_numpy(iters),
    )
    redo = torch.from_numpy(status != 0).nonzero().squeeze(1)
    if redo.numel():
        r = active_set(
            A[redo],
            b[redo],
            tol=tol,
            pivot_tol=pivot_tol,
            max_iter=max_iter,
            kkt_tol=kkt_tol,
            batch_size=batch_size,
            threads=threads,
            engine="torch",
        )
        for f in ("theta", "converged", "kkt", "pivot", "iterations"):
            getattr(res, f)[redo] = getattr(r, f)
    return res


def _active_set_chunk(
    A: torch.Tensor, b: torch.Tensor, tol: float, pivot_tol: float, max_iter: int, kkt_tol: float
) -> SolveResult:
    m, k = b.shape
    T = _tableau(A, b)
    P = torch.zeros(m, k, dtype=torch.bool, device=A.device)
    x = torch.zeros_like(b)
    blocked = torch.zeros_like(P)
    T, P, x, done, iters = _lawson_hanson(T, P, x, blocked, tol, pivot_tol, max_iter)
    theta, pivot = _refine(A, b, T, P)
    kkt = _kkt(A, b, theta)
    redo = torch.nonzero(done & (kkt > kkt_tol)).squeeze(1)
    if redo.numel():  # numerical trouble (ill-conditioned supports): restart from a fresh tableau
        A2, b2, P2 = A[redo], b[redo], theta[redo] > 0
        T2 = _swept_tableau(A2, b2, P2)
        x2 = T2[:, k, :k] * P2.to(A.dtype)
        T2, P2, x2, d2, it2 = _lawson_hanson(T2, P2, x2.clamp_min(0), torch.zeros_like(P2), tol, pivot_tol, max_iter)
        th2, pv2 = _refine(A2, b2, T2, P2)
        k2 = _kkt(A2, b2, th2)
        better = k2 < kkt[redo]
        theta[redo[better]], pivot[redo[better]], kkt[redo[better]] = th2[better], pv2[better], k2[better]
        iters[redo] += it2
        done[redo] = d2 | done[redo]
    return SolveResult(theta, done, kkt, pivot, iters)


def _refine(A: torch.Tensor, b: torch.Tensor, T: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of iterative refinement on the support, using the swept tableau as the inverse.

    The swept tableau holds -A_PP^{-1} in its (P, P) block, so for a residual r supported on P,
    A_PP^{-1} r = -(T r) restricted to P.
    """
    k = b.shape[1]
    Pf = P.to(A.dtype)
    Tk = T[:, :k, :k]
    theta = T[:, k, :k] * Pf
    r = (b - matvec(A, theta)) * Pf
    theta = theta - matvec(Tk, r)
    theta = torch.where(P & (theta > 0), theta, torch.zeros_like(theta))  # also turns -0.0 into 0
    d = -Tk.diagonal(dim1=1, dim2=2)  # diag of A_PP^{-1} on P
    pivot = torch.where(P & (d > 0), 1.0 / d.clamp_min(torch.finfo(A.dtype).tiny), torch.full_like(d, float("inf")))
    return theta, pivot.amin(1) if k else pivot.new_full((b.shape[0],), float("inf"))


def _lambda_max_bound(A: torch.Tensor, iters: int = 10) -> torch.Tensor:
    r"""An upper bound :math:`\hat\lambda\ge\lambda_{\max}(A)` for entrywise non-negative ``A``.

    Power iteration from the all-ones vector, then the Collatz--Wielandt bound
    :math:`\max_i (Av)_i / v_i` (valid for non-negative matrices and positive ``v``; it tightens
    as ``v`` approaches the Perron vector). Falls back to the Gershgorin bound when ``A`` has
    negative entries.
    """
    v = torch.ones(A.shape[:2], dtype=A.dtype, device=A.device)
    for _ in range(iters):
        v = torch.bmm(A, v.unsqueeze(-1)).squeeze(-1)
        v = v / v.amax(-1, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    Av = torch.bmm(A, v.unsqueeze(-1)).squeeze(-1)
    cw = (Av / v.clamp_min(torch.finfo(A.dtype).tiny)).amax(-1)
    gersh = A.abs().sum(-1).amax(-1)
    nonneg = (A >= 0).flatten(1).all(1) & (v > 0).all(1)
    return torch.where(nonneg, torch.minimum(cw, gersh), gersh).clamp_min(torch.finfo(A.dtype).tiny)


def projected_gradient(
    A: torch.Tensor,
    b: torch.Tensor,
    *,
    tol: float = 1e-9,
    max_iter: int = 3000,
    threshold: float = 1e-6,
    accelerated: bool = True,
    batch_size: int = 16384,
    threads: int | None = 1,
) -> SolveResult:
    r"""Approximate batched NNK by projected gradient onto :math:`\theta\ge0`.

    .. math::
        y \leftarrow \theta_t + \beta_t(\theta_t-\theta_{t-1}),\qquad
        \theta_{t+1} = \max\!\big(0,\ y - (Ay - b)/\hat\lambda\big)

    with :math:`\hat\lambda\ge\lambda_{\max}(A)` per system (:func:`_lambda_max_bound`), FISTA
    momentum :math:`\beta_t` restarted whenever it points uphill (``accelerated=False`` gives plain
    projected gradient, :math:`\beta_t=0`). A system stops when
    :math:`\max_j|\theta_{t+1}-\theta_t|_j\le` ``tol`` or after ``max_iter`` steps; weights below
    ``threshold`` are then set to 0. There is no upper clamp (a box constraint would solve a
    different problem).

    Example:
        >>> A = torch.tensor([[[2.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
        >>> b = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
        >>> projected_gradient(A, b).theta
        tensor([[0.5000, 0.0000]], dtype=torch.float64)
    """
    _check(A, b)
    B, k = b.shape
    with cpu_threads(threads, A.device):
        outs = [
            _pg_chunk(A[s : s + batch_size], b[s : s + batch_size], tol, max_iter, threshold, accelerated)
            for s in range(0, B, batch_size)
        ]
    if not outs:
        z = b.new_zeros(0)
        return SolveResult(b.new_zeros(0, k), z.bool(), z, z, z.long())
    return SolveResult(
        *(torch.cat([getattr(o, f) for o in outs]) for f in ("theta", "converged", "kkt", "pivot", "iterations"))
    )


def _pg_chunk(
    A: torch.Tensor, b: torch.Tensor, tol: float, max_iter: int, threshold: float, accelerated: bool
) -> SolveResult:
    m, k = b.shape
    eta = (1.0 / _lambda_max_bound(A)).unsqueeze(1)
    theta = torch.zeros_like(b)
    done = torch.zeros(m, dtype=torch.bool, device=A.device)
    iters = torch.zeros(m, dtype=torch.long, device=A.device)
    ids = torch.arange(m, device=A.device)
    Aw, bw, ew, xw = A, b, eta, theta.clone()
    yw, tw = xw.clone(), torch.ones(m, dtype=A.dtype, device=A.device)
    for _ in range(max_iter):
        if not ids.numel():
            break
        g = matvec(Aw, yw) - bw
        xn = (yw - ew * g).clamp_min_(0)
        step = (xn - xw).abs().amax(1)
        iters[ids] += 1
        if accelerated:
            tn = 0.5 * (1 + torch.sqrt(1 + 4 * tw * tw))
            restart = ((yw - xn) * (xn - xw)).sum(1) > 0
            beta = torch.where(restart, torch.zeros_like(tw), (tw - 1) / tn)
            tw = torch.where(restart, torch.ones_like(tn), tn)
            yw = xn + beta.unsqueeze(1) * (xn - xw)
        else:
            yw = xn
        xw = xn
        fin = step <= tol
        if fin.any():
            theta[ids[fin]] = xw[fin]
            done[ids[fin]] = True
            keep = ~fin
            ids, Aw, bw, ew, xw, yw, tw = ids[keep], Aw[keep], bw[keep], ew[keep], xw[keep], yw[keep], tw[keep]
    if ids.numel():
        theta[ids] = xw
    theta = torch.where(theta < threshold, torch.zeros_like(theta), theta)
    kkt = _kkt(A, b, theta)
    on = (theta > 0).to(A.dtype)
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    Lm, _ = torch.linalg.cholesky_ex(A * on.unsqueeze(2) * on.unsqueeze(1) + eye * (1 - on).unsqueeze(1))
    d2 = Lm.diagonal(dim1=1, dim2=2) ** 2
    pivot = torch.where(on > 0, d2, torch.full_like(d2, float("inf"))).amin(1) if k else b.new_zeros(m)
    return SolveResult(theta, done, kkt, pivot, iters)


# ------------------------------------------------------------------------- released pruning solver

PRUNING_JITTER_TRIES = 16  # shifts tol, 10 tol, ..., 10^15 tol (or from eps when tol = 0)


def uses_compiled_pruning(device: torch.device, dtype: torch.dtype, engine: str = "auto") -> bool:
    """Whether :func:`pruning` with this ``engine`` runs the compiled (numba) loop: ``"numba"``
    always, ``"auto"`` for float64 CPU tensors when :func:`use_compiled`.

    Example:
        >>> uses_compiled_pruning(torch.device("cpu"), torch.float32)
        False
    """
    return uses_compiled_solver(device, dtype, engine)


def pruning(
    A: torch.Tensor,
    b: torch.Tensor,
    *,
    max_iter: int | None = None,
    tol: float = 1e-6,
    batch_size: int = 4096,
    threads: int | None = 1,
    engine: str = "auto",
) -> SolveResult:
    r"""The released one-way pruning solver of PyNNK, DeepNNK and CW-DeepNNK (spec §1.9(b)), batched.

    For every system, with ``tol`` as the released code's ``x_tol = eps_low = eps_high = check_tol``:

    1. **Collapse**: if some :math:`b_j > 1-` ``tol`` (a near-duplicate candidate), return
       :math:`b` with every entry not above :math:`1-` ``tol`` set to 0 (all such candidates keep
       their :math:`b_j\approx1`, so m of them reconstruct the query with error about
       :math:`(m-1)^2`, as released).
    2. Start from :math:`x = b`; keep set :math:`F=\{j: b_j >` ``tol``:math:`\}`.
    3. Each round: :math:`x_F = A_{FF}^{-1} b_F` by Cholesky, :math:`x = 0` off :math:`F`;
       ``check`` = the largest :math:`|x_j|` among the entries :math:`x_j <` ``tol``;
       :math:`F \leftarrow F\cap\{j: x_j >` ``tol``:math:`\}` (variables are only ever removed);
       stop when ``check`` :math:`\le` ``tol`` or after ``max_iter`` rounds (default
       :math:`50k`, the released limit).
    4. Set :math:`x_j = 0` where :math:`x_j <` ``tol``.

    Because a dropped variable never comes back, the result can miss the NNLS optimum
    (:func:`active_set`); it is the optimum whenever the first unconstrained solution
    :math:`A^{-1}b` is already above ``tol`` everywhere.

    **Jitter.** A round whose :math:`A_{FF}` is not numerically positive definite (Cholesky fails,
    or a squared pivot is at most :math:`k\,\varepsilon\max_j A_{jj}`, e.g. duplicate candidates or
    more candidates than the feature dimension + 1 with no jitter in ``A``) is factored again with
    :math:`A_{FF}+\delta I`, :math:`\delta = \max(` ``tol`` :math:`,\,k\varepsilon\max_j A_{jj})`
    times 1, 10, 100, ... until it succeeds (the released code adds ``tol`` to a partial factor
    instead). The largest
    :math:`\delta` a system needed is in ``SolveResult.jitter``; no result is NaN.

    Args:
        A: (B, k, k) symmetric positive semi-definite matrices (:math:`K_{S,S}`; float64
            recommended).
        b: (B, k) right-hand sides (:math:`K_{S,i}`, the initial iterate).
        max_iter: round limit per system (default ``50 * k``).
        tol: the tolerance above, a number in [0, 1) (default 1e-6, PyNNK's).
        batch_size: systems per chunk (bounds memory at a few ``batch_size * k**2`` floats).
        threads: intra-op CPU threads while solving (see :func:`cpu_threads`); with numba, its
            worker threads (``None`` = one per core).
        engine: ``"torch"`` (batched Cholesky, any device), ``"numba"`` (compiled per-system loop,
            CPU, float64 internally) or ``"auto"`` (numba for float64 CPU tensors when it imports).

    Returns:
        :class:`SolveResult`; ``converged`` is False for systems stopped by ``max_iter``, ``kkt``
        the KKT violation of the returned weights (not 0 where pruning missed the optimum),
        ``pivot`` as for :func:`active_set` on the returned support, ``iterations`` the rounds (0
        for a collapse) and ``jitter`` the :math:`\delta` added (0 when none).

    Example:
        >>> A = torch.tensor([[[1.0, 0.9], [0.9, 1.0]]], dtype=torch.float64)
        >>> b = torch.tensor([[0.8, 0.5]], dtype=torch.float64)
        >>> pruning(A, b).theta  # x = A^{-1} b has a negative entry: drop it, re-solve on the rest
        tensor([[0.8000, 0.0000]], dtype=torch.float64)
    """
    _check(A, b)
    B, k = b.shape
    max_iter = 50 * k if max_iter is None else int(max_iter)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= float(tol) < 1:
        raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numba":
        if A.device.type != "cpu":
            raise ValueError(f"engine='numba' solves CPU tensors only, got device {A.device}")
        if not numba_available():
            raise ImportError("engine='numba' needs numba (pip install 'convsim[fast]')")
    if uses_compiled_pruning(A.device, A.dtype, engine) and B:
        return _pruning_numba(A, b, float(tol), max_iter, threads)
    with cpu_threads(threads, A.device):
        outs = [
            _pruning_chunk(A[s : s + batch_size], b[s : s + batch_size], float(tol), max_iter)
            for s in range(0, B, batch_size)
        ]
    names = ("theta", "converged", "kkt", "pivot", "iterations", "jitter")
    if not outs:
        z = b.new_zeros(0)
        return SolveResult(b.new_zeros(0, k), z.bool(), z, z, z.long(), z)
    return SolveResult(*(torch.cat([getattr(o, f) for o in outs]) for f in names))


def _singular_floor(A: torch.Tensor) -> torch.Tensor:
    """(m,) squared Cholesky pivots at or below this are treated as zero: k eps max_j A_jj."""
    k = A.shape[-1]
    return k * torch.finfo(A.dtype).eps * A.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1.0)


def _pruning_factor(
    A: torch.Tensor, F: torch.Tensor, tol: float, floor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cholesky factors of :math:`A_{FF}` (identity off F) and the shift :math:`\delta` each needed.

    Systems whose factor fails, or has a squared pivot at or below ``floor``, are factored again
    with :math:`A_{FF}+\delta I`, :math:`\delta` = ``tol`` (or ``floor`` when ``tol`` is smaller)
    times 1, 10, 100, ... (:data:`PRUNING_JITTER_TRIES` tries). A system that never factors (a
    non-finite ``A``) keeps nothing: its F is cleared and its shift is ``inf``.
    """
    Ff = F.to(A.dtype)
    M = A * Ff.unsqueeze(2) * Ff.unsqueeze(1)
    M.diagonal(dim1=-2, dim2=-1).add_(1 - Ff)
    L, info = torch.linalg.cholesky_ex(M)
    delta = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)

    def bad(L_: torch.Tensor, info_: torch.Tensor, fl: torch.Tensor) -> torch.Tensor:
        return (info_ != 0) | ~((L_.diagonal(dim1=-2, dim2=-1) ** 2).amin(-1) > fl)

    rows = torch.nonzero(bad(L, info, floor)).squeeze(1)
    if not rows.numel():
        return L, delta
    Mr, Fr, fr = M[rows], Ff[rows], floor[rows]
    shift = torch.clamp_min(fr, tol)
    for _ in range(PRUNING_JITTER_TRIES):
        Ms = Mr.clone()
        Ms.diagonal(dim1=-2, dim2=-1).add_(shift.unsqueeze(1) * Fr)
        Lr, ir = torch.linalg.cholesky_ex(Ms)
        ok = ~bad(Lr, ir, fr)
        L[rows[ok]] = Lr[ok]
        delta[rows[ok]] = shift[ok]
        keep = ~ok
        if not bool(keep.any()):
            break
        rows, Mr, Fr, fr, shift = rows[keep], Mr[keep], Fr[keep], fr[keep], shift[keep] * 10
    else:
        L[rows] = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        F[rows] = False
        delta[rows] = float("inf")
    return L, delta


def _pruning_chunk(A: torch.Tensor, b: torch.Tensor, tol: float, max_iter: int) -> SolveResult:
    """:func:`pruning` on one chunk with batched Cholesky factorisations (torch path)."""
    m, k = b.shape
    dev, dt = A.device, A.dtype
    collapse = (b > 1 - tol).any(1)
    # collapse rows: b on the near-duplicates, 0 elsewhere; the others start from x = b
    theta = torch.where(collapse.unsqueeze(1) & (b <= 1 - tol), torch.zeros_like(b), b)
    converged = collapse.clone()
    rounds = torch.zeros(m, dtype=torch.long, device=dev)
    jitter = torch.zeros(m, dtype=dt, device=dev)
    ids = torch.nonzero(~collapse).squeeze(1)
    Aw, bw = A[ids], b[ids]
    Fw = bw > tol
    floor = _singular_floor(Aw)
    for it in range(1, max_iter + 1):
        if not ids.numel():
            break
        L, delta = _pruning_factor(Aw, Fw, tol, floor)
        Ff = Fw.to(dt)
        x = torch.cholesky_solve((bw * Ff).unsqueeze(-1), L).squeeze(-1) * Ff
        check = torch.where(x < tol, x.abs(), torch.zeros_like(x)).amax(1) if k else x.new_zeros(x.shape[0])
        Fw = Fw & (x > tol)
        theta[ids] = x
        rounds[ids] = it
        jitter[ids] = torch.maximum(jitter[ids], delta)
        fin = check <= tol
        converged[ids[fin]] = True
        if bool(fin.any()):
            keep = ~fin
            ids, Aw, bw, Fw, floor = ids[keep], Aw[keep], bw[keep], Fw[keep], floor[keep]
    theta = torch.where(theta < tol, torch.zeros_like(theta), theta)
    return SolveResult(theta, converged, _kkt(A, b, theta), _support_pivot(A, theta), rounds, jitter)


def _support_pivot(A: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""(m,) smallest :math:`1/(A_{PP}^{-1})_{pp}` over the support :math:`P` of ``theta`` (``inf`` if empty).

    Uses a Cholesky factor of :math:`A_{PP}` (identity off P): the diagonal of the inverse is the
    squared column norms of :math:`L^{-1}`. A support whose factor fails gets 0.
    """
    m, k = theta.shape
    if not k:
        return theta.new_full((m,), float("inf"))
    on = theta > 0
    Pf = on.to(A.dtype)
    M = A * Pf.unsqueeze(2) * Pf.unsqueeze(1)
    M.diagonal(dim1=-2, dim2=-1).add_(1 - Pf)
    L, info = torch.linalg.cholesky_ex(M)
    eye = torch.eye(k, dtype=A.dtype, device=A.device).expand(m, k, k)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    d = (Linv * Linv).sum(-2)
    piv = torch.where(on, 1.0 / d.clamp_min(torch.finfo(A.dtype).tiny), torch.full_like(d, float("inf"))).amin(1)
    return torch.where(info == 0, piv, torch.zeros_like(piv))


def _pruning_numba(A: torch.Tensor, b: torch.Tensor, tol: float, max_iter: int, threads: int | None) -> SolveResult:
    """The compiled pruning loop on the whole batch (float64 internally)."""
    compiled = _numba_module()
    assert compiled is not None  # the caller checked numba_available()
    An = A.detach().to(torch.float64).contiguous().numpy()
    bn = b.detach().to(torch.float64).contiguous().numpy()
    theta, converged, rounds, jitter, pivot, kkt = compiled.pruning_batch(
        An, bn, tol=tol, max_iter=max_iter, tries=PRUNING_JITTER_TRIES, threads=threads
    )
    return SolveResult(
        torch.from_numpy(theta).to(A.dtype),
        torch.from_numpy(converged),
        torch.from_numpy(kkt).to(A.dtype),
        torch.from_numpy(pivot).to(A.dtype),
        torch.from_numpy(rounds),
        torch.from_numpy(jitter).to(A.dtype),
    )


def solve(A: torch.Tensor, b: torch.Tensor, solver: str = "exact", **options: Any) -> SolveResult:
    """Dispatch to :func:`active_set` (``"exact"``), :func:`projected_gradient` (``"pgd"``) or
    :func:`pruning` (``"pruning"``).

    Example:
        >>> A = torch.eye(2, dtype=torch.float64)[None]
        >>> solve(A, torch.tensor([[1.0, -1.0]], dtype=torch.float64), "pgd").theta
        tensor([[1., 0.]], dtype=torch.float64)
    """
    if solver == "exact":
        return active_set(A, b, **options)
    if solver == "pgd":
        return projected_gradient(A, b, **options)
    if solver == "pruning":
        return pruning(A, b, **options)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
