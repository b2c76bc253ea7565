"""NNK graph assembly: mutual-candidate rule, error-based direction, tie rule, symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from convsim.nnk import nnk_graph, nnk_neighbors
from convsim.nnk.graph import graph_from_result


def reference_graph(r) -> np.ndarray:
    """Dense loop version of the documented rule."""
    n, k = r.indices.shape
    cand = [set(r.indices[i].tolist()) for i in range(n)]
    e = r.error.tolist()
    W = np.zeros((n, n))
    for i in range(n):
        for s in range(k):
            j, w = int(r.indices[i, s]), float(r.weights[i, s])
            if j < 0 or w <= 0 or i not in cand[j]:
                continue
            if (e[i], i) < (e[j], j):
                W[i, j] = w
    return np.maximum(W, W.T)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_graph_equals_dense_reference(kernel):
    """The sparse assembly equals the loop over directed entries."""
    X = torch.tensor(np.random.default_rng(0).standard_normal((150, 4)))
    r = nnk_neighbors(X, k=10, kernel=kernel)
    W = graph_from_result(r)
    assert sp.issparse(W) and W.shape == (150, 150)
    assert np.allclose(W.toarray(), reference_graph(r))


def test_graph_is_symmetric_without_self_loops():
    """W = W^T and the diagonal is empty."""
    X = torch.tensor(np.random.default_rng(1).standard_normal((120, 3)))
    W = nnk_graph(X, k=8, kernel="gaussian")
    assert (W != W.T).nnz == 0
    assert np.all(W.diagonal() == 0)


def test_edges_only_between_mutual_candidates():
    """Every edge joins points that are in each other's candidate lists."""
    X = torch.tensor(np.random.default_rng(2).standard_normal((120, 3)))
    r = nnk_neighbors(X, k=6, kernel="cosine")
    W = graph_from_result(r).tocoo()
    cand = [set(r.indices[i].tolist()) for i in range(120)]
    assert W.nnz > 0
    for i, j in zip(W.row, W.col, strict=True):
        assert j in cand[i] and i in cand[j]


def test_edge_weight_comes_from_the_endpoint_with_smaller_error():
    """W_ij is theta of the endpoint with the smaller reconstruction error."""
    X = torch.tensor(np.random.default_rng(3).standard_normal((100, 3)))
    r = nnk_neighbors(X, k=8, kernel="gaussian")
    W = graph_from_result(r).tocoo()
    for i, j, w in zip(W.row, W.col, W.data, strict=True):
        src, dst = (i, j) if (float(r.error[i]), i) < (float(r.error[j]), j) else (j, i)
        row = r.indices[src].tolist()
        assert np.isclose(w, float(r.weights[src, row.index(dst)]))


def test_tie_keeps_the_entry_of_the_smaller_index():
    """Duplicates tie at error 0: the edge survives (taken from the smaller index)."""
    X = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    r = nnk_neighbors(X, k=2, kernel="gaussian")
    assert float(r.error[0]) == float(r.error[1]) == 0.0
    W = graph_from_result(r)
    assert W[0, 1] > 0 and W[0, 1] == W[1, 0]


def test_graph_rejects_queries():
    """A graph is built on X itself."""
    with pytest.raises(TypeError, match="queries are not supported"):
        nnk_graph(torch.zeros(5, 2), k=2, queries=torch.zeros(1, 2))
