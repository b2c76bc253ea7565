"""Channel-wise NNK: batching, overlap measures against loops, dead channels, LOO, layer capture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from convsim.nnk import channel_loo_error, channel_overlap, layer_overlap, nnk_neighbors
from convsim.nnk.channels import overlap_stats


def activations(N, C, hw, seed, relu=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(N, C, hw, hw, generator=g)
    return a.relu() if relu else a


def slow_overlap(indices, weights):
    """M1, M1w, union and total by Python sets and loops."""
    C, N, _ = indices.shape
    sets = [
        [
            {int(j): float(w) for j, w in zip(indices[c, i], weights[c, i], strict=True) if j >= 0 and w > 0}
            for i in range(N)
        ]
        for c in range(C)
    ]
    jac = np.zeros((C, C))
    wov = np.zeros((C, C))
    for a in range(C):
        for b in range(C):
            js, ws = [], []
            for i in range(N):
                A, B = sets[a][i], sets[b][i]
                if A or B:
                    js.append(len(A.keys() & B.keys()) / len(A.keys() | B.keys()))
                if A and B:
                    sa, sb = sum(A.values()), sum(B.values())
                    ws.append(sum(min(A[j] / sa, B[j] / sb) for j in A.keys() & B.keys()))
            jac[a, b] = np.mean(js) if js else 0.0
            wov[a, b] = np.mean(ws) if ws else 0.0
    union = [len(set().union(*(sets[c][i].keys() for c in range(C)))) for i in range(N)]
    total = [sum(len(sets[c][i]) for c in range(C)) for i in range(N)]
    return jac, wov, np.array(union), np.array(total)


def slow_loo(indices, weights, labels):
    """Weighted-vote LOO error by loops; no neighbours = error."""
    errs = []
    for i in range(indices.shape[0]):
        votes = {}
        for j, w in zip(indices[i].tolist(), weights[i].tolist(), strict=True):
            if j >= 0 and w > 0:
                votes[int(labels[j])] = votes.get(int(labels[j]), 0.0) + w
        if not votes:
            errs.append(1.0)
            continue
        best = max(votes.values())
        pred = min(c for c, v in votes.items() if v == best)
        errs.append(float(pred != int(labels[i])))
    return float(np.mean(errs))


def test_overlap_stats_match_loops():
    """M1, M1w, union and total equal the set-based loop, including empty neighbourhoods."""
    g = torch.Generator().manual_seed(0)
    C, N, k = 4, 30, 6
    indices = torch.randint(0, 12, (C, N, k), generator=g)
    weights = torch.rand(C, N, k, generator=g, dtype=torch.float64) * (torch.rand(C, N, k, generator=g) > 0.4)
    weights[1, :5] = 0  # empty neighbourhoods
    indices[2, :, -1] = -1
    # unique indices per row so a neighbour appears once
    for c in range(C):
        for i in range(N):
            seen = set()
            for s in range(k):
                j = int(indices[c, i, s])
                if j in seen:
                    weights[c, i, s] = 0
                seen.add(j)
    st = overlap_stats(indices, weights, max_pairs=37)  # tiny chunks exercise the chunking
    jac, wov, union, total = slow_overlap(indices, weights)
    np.fill_diagonal(jac, 1.0)
    np.fill_diagonal(wov, 1.0)
    assert np.allclose(st["jaccard"].numpy(), jac)
    assert np.allclose(st["weighted"].numpy(), wov)
    assert st["union"].tolist() == union.tolist() and st["total"].tolist() == total.tolist()


def test_batched_channels_equal_a_per_channel_loop():
    """One batched problem over channels gives what nnk_neighbors gives channel by channel."""
    a = activations(80, 3, 3, seed=1)
    r = channel_overlap(a, k=8, return_neighbors=True)
    for c in range(3):
        ref = nnk_neighbors(a[:, c].flatten(1), k=8, duplicates="drop")
        assert torch.equal(r.indices[c], ref.indices)
        assert torch.allclose(r.weights[c], ref.weights, atol=1e-12)
        assert torch.equal(r.counts[:, c], ref.count)
    agg = nnk_neighbors(a.flatten(1), k=8, duplicates="drop")
    assert torch.equal(r.aggregate_counts, agg.count)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_identical_channels_overlap_fully(kernel):
    """C copies of one channel: M1 = M1w = 1, M2 = 1/C and M3 = 1/C (spec §7.7)."""
    base = activations(100, 1, 3, seed=2, relu=False)
    r = channel_overlap(base.repeat(1, 4, 1, 1), k=10, kernel=kernel)
    assert torch.allclose(r.jaccard, torch.ones(4, 4, dtype=torch.float64))
    assert torch.allclose(r.weighted_overlap, torch.ones(4, 4, dtype=torch.float64))
    assert math.isclose(float(r.union_ratio), 0.25)
    if kernel == "cosine":  # the concatenation has the same angles, hence the same NNK
        assert math.isclose(float(r.aggregate_ratio), 0.25)


def test_independent_channels_barely_overlap():
    """Independent channels: M1 near 0 and M2 near 1."""
    r = channel_overlap(activations(200, 4, 3, seed=3, relu=False), k=15)
    assert r.jaccard_score < 0.1 and r.weighted_score < 0.1
    assert float(r.union_ratio) > 0.9


def test_union_ratio_lies_between_one_over_c_and_one():
    """M2 is always in [1/C, 1]."""
    for seed in range(3):
        a = activations(60, 3, 2, seed=seed)
        a[:, 1] = a[:, 0] * (seed + 1) + 0.01 * a[:, 2]  # partly redundant channels
        r = channel_overlap(a, k=8)
        assert 1 / 3 - 1e-12 <= float(r.union_ratio) <= 1 + 1e-12


def test_dead_and_constant_channels_are_flagged_not_nan():
    """All-zero and constant channels: flagged, zero rows/columns, LOO error 1, nothing NaN."""
    a = activations(70, 4, 3, seed=4)
    a[:, 1] = 0
    a[:, 3] = 2.5
    y = torch.arange(70) % 3
    r = channel_overlap(a, k=8, labels=y)
    assert r.dead.tolist() == [False, True, False, True]
    assert bool((r.counts[:, 1] == 0).all()) and bool((r.jaccard[1] == 0).all())
    assert r.loo_error[1] == 1.0 and r.loo_error[3] == 1.0
    d = r.to_dict()
    text = json.dumps(d)
    assert "NaN" not in text and "Infinity" not in text
    assert d["n_dead"] == 2


def test_channels_with_zero_maps_give_flags_not_nan():
    """Samples whose channel map is all zero (dead ReLU for that input) are counted, not NaN."""
    a = activations(60, 2, 2, seed=5, relu=False).abs() + 0.1
    a[:20, 0] = 0
    r = channel_overlap(a, k=6, labels=torch.arange(60) % 2)
    assert math.isclose(float(r.zero_fraction[0]), 20 / 60)
    assert bool((r.counts[:20, 0] == 0).all())
    assert all(math.isfinite(v) for v in r.loo_error.tolist())
    assert math.isfinite(float(r.union_ratio)) and math.isfinite(float(r.aggregate_ratio))


def test_loo_error_matches_loop_reference():
    """Per-channel and layer LOO errors equal the weighted vote computed by loops."""
    a = activations(90, 3, 2, seed=6)
    y = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(6))
    r = channel_overlap(a, k=8, labels=y, kernel="gaussian", return_neighbors=True)
    for c in range(3):
        assert math.isclose(float(r.loo_error[c]), slow_loo(r.indices[c], r.weights[c], y))
    agg = nnk_neighbors(a.flatten(1), k=8, kernel="gaussian", duplicates="drop")
    assert math.isclose(float(r.layer_loo_error), slow_loo(agg.indices, agg.weights, y))


def test_channel_loo_error_equals_overlap_loo_error():
    """The cheap entry point gives the same per-channel errors."""
    a = activations(70, 3, 3, seed=7)
    y = torch.arange(70) % 2
    assert torch.allclose(channel_loo_error(a, y, k=8), channel_overlap(a, k=8, labels=y).loo_error)


def test_loo_error_of_a_separating_channel_is_zero():
    """A channel that separates the classes has LOO error 0; self is never its own neighbour."""
    y = torch.arange(80) % 2
    a = torch.randn(80, 2, 2, 2, generator=torch.Generator().manual_seed(8))
    a[:, 0] += 6 * y.view(-1, 1, 1)
    err = channel_loo_error(a, y, k=10, kernel="gaussian")
    assert float(err[0]) == 0.0 and float(err[1]) > 0.2


def test_loo_with_a_query_subset_matches_the_full_run():
    """n_queries uses the first samples as queries against all samples."""
    a = activations(60, 2, 2, seed=9)
    y = torch.arange(60) % 3
    r = channel_overlap(a, k=6, labels=y, return_neighbors=True)
    sub = channel_loo_error(a, y, k=6, n_queries=25)
    for c in range(2):
        assert math.isclose(float(sub[c]), slow_loo(r.indices[c, :25], r.weights[c, :25], y[:]))


def test_duplicated_samples_are_dropped_as_candidates():
    """With duplicates='drop' (default) a sample's exact copy is not its neighbour (no label leak)."""
    a = activations(40, 1, 3, seed=10, relu=False)
    a = torch.cat([a, a])  # every sample twice
    r = channel_overlap(a, k=6, return_neighbors=True)
    copy = (torch.arange(80) + 40) % 80
    row_has_copy = r.indices[0] == copy.view(-1, 1)
    assert bool((r.weights[0][row_has_copy] == 0).all())
    assert float(r.duplicate_fraction[0]) == 1.0


def test_channel_overlap_validates_inputs():
    """Bad activations, labels and k raise with a message."""
    with pytest.raises(TypeError, match="activations must be a torch.Tensor"):
        channel_overlap(np.zeros((10, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"shape \(N, C, \*spatial\)"):
        channel_overlap(torch.zeros(10))
    with pytest.raises(ValueError, match="must be smaller than the number of samples"):
        channel_overlap(torch.rand(10, 2, 2, 2), k=10)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        channel_overlap(torch.rand(10, 2, 2, 2), k=3, labels=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="n_queries must be an int"):
        channel_loo_error(torch.rand(10, 2, 2, 2), torch.zeros(10, dtype=torch.long), k=3, n_queries=0)


def test_to_dict_is_json_ready():
    """to_dict() holds plain numbers and lists of the right sizes."""
    r = channel_overlap(activations(50, 3, 2, seed=11), k=6, labels=torch.arange(50) % 2)
    d = json.loads(json.dumps(r.to_dict()))
    assert len(d["jaccard"]) == 3 and len(d["mean_count_per_channel"]) == 3
    assert 0 <= d["layer_loo_error"] <= 1 and d["options"]["k"] == 6


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_layer_overlap_analyses_every_conv_layer():
    """Default layers are the conv layers; results hold one layer's channels each."""
    torch.manual_seed(12)
    net = TinyNet().train()
    res = layer_overlap(net, torch.randn(40, 1, 8, 8), k=5, labels=torch.arange(40) % 3, batch_size=16)
    assert list(res) == ["features.0", "features.2"]
    assert res["features.0"].counts.shape == (40, 4) and res["features.2"].counts.shape == (40, 6)
    assert res["features.2"].loo_error.shape == (6,)
    assert net.training  # mode restored


def test_layer_overlap_subsamples_with_a_seed():
    """n_samples draws a seeded subset; the same seed gives the same analysis."""
    torch.manual_seed(13)
    net = TinyNet()
    data = torch.randn(60, 1, 8, 8)
    a = layer_overlap(net, data, layers=["features.2"], n_samples=30, k=5, seed=1)["features.2"]
    b = layer_overlap(net, data, layers=["features.2"], n_samples=30, k=5, seed=1)["features.2"]
    assert a.counts.shape == (30, 6) and torch.equal(a.counts, b.counts)


def test_layer_overlap_validates_inputs():
    """Non-modules, bad data and unknown layer names raise."""
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        layer_overlap(lambda x: x, torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match="data must be a float tensor"):
        layer_overlap(TinyNet(), torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(KeyError, match="no module named"):
        layer_overlap(TinyNet(), torch.randn(20, 1, 8, 8), layers=["nope"], k=3)
