r"""NNK graphs: error-based pruning of the directed NNK neighbourhoods, then max-symmetrisation.

With :math:`\theta_{ij}` the NNK weight of candidate j for node i and :math:`e_i` the node's
reconstruction error (:func:`~convsim.nnk.nnk_neighbors`), the directed entry :math:`i\to j` is
kept only when

* i and j are **mutual candidates** (:math:`j\in S_i` and :math:`i\in S_j`), and
* i reconstructs itself better than j: :math:`e_i < e_j`. **Tie rule**: when :math:`e_i = e_j`
  the entry of the endpoint with the smaller index is kept, i.e. the order is lexicographic on
  :math:`(e_i, i)`. (PyNNK drops both directions on a tie and Matlab keeps both; this rule keeps
  exactly one, as in the untied case, so exact duplicates with :math:`e=0` stay connected.)

The graph is then :math:`W = \max(W_{\to}, W_{\to}^\top)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from convsim.nnk.neighbors import NNKResult, nnk_neighbors
from convsim.nnk.options import NNKOptions

__all__ = ["nnk_graph", "graph_from_result"]


def graph_from_result(result: NNKResult) -> sp.csr_matrix:
    """The symmetric NNK graph (n, n) of an :class:`NNKResult` computed on the points themselves.

    Example:
        >>> r = nnk_neighbors(torch.tensor([[0.0], [1.0], [2.0]]), k=2, kernel="gaussian", sigma=1.0)
        >>> graph_from_result(r).nnz  # the path 0-1-2
        4
    """
    idx = result.indices.detach().cpu().numpy()
    w = result.weights.detach().cpu().to(torch.float64).numpy()
    e = result.error.detach().cpu().to(torch.float64).numpy()
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    cols = idx.reshape(-1)
    wts = w.reshape(-1)
    found = cols >= 0
    cand_keys = np.sort(rows[found].astype(np.int64) * n + cols[found])
    edge = found & (wts > 0)
    r, c, v = rows[edge], cols[edge], wts[edge]
    reverse = c.astype(np.int64) * n + r  # is i among j's candidates?
    pos = np.searchsorted(cand_keys, reverse)
    mutual = (pos < cand_keys.size) & (cand_keys[np.minimum(pos, cand_keys.size - 1)] == reverse)
    smaller = (e[r] < e[c]) | ((e[r] == e[c]) & (r < c))
    keep = mutual & smaller
    W = sp.coo_matrix((v[keep], (r[keep], c[keep])), shape=(n, n)).tocsr()
    return W.maximum(W.T).tocsr()


def nnk_graph(X: torch.Tensor, *, options: NNKOptions | None = None, **overrides: Any) -> sp.csr_matrix:
    r"""Symmetric NNK graph of the points ``X`` (n, d) as a ``scipy.sparse`` CSR matrix (n, n).

    The NNK settings are those of :func:`~convsim.nnk.nnk_neighbors`: an
    :class:`~convsim.nnk.options.NNKOptions` ``options`` and/or its fields as keywords (``k``,
    ``kernel``, ``sigma``, ``solver``, ...); ``queries`` are not supported. Entry :math:`W_{ij}`
    is the NNK weight of the edge kept by the rule in this module's docstring; the diagonal is
    empty.

    Example:
        >>> X = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> W = nnk_graph(X, k=2, kernel="gaussian", sigma=1.0)
        >>> (W != W.T).nnz, W.nnz  # symmetric; a path graph 0-1-2-3 has 3 edges (6 entries)
        (0, 6)
    """
    if "queries" in overrides:
        raise TypeError("nnk_graph builds a graph on X itself; queries are not supported")
    return graph_from_result(nnk_neighbors(X, options=options, **overrides))
