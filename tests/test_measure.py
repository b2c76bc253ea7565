"""FeatureMapSimilarity against direct float64 computations on stored activations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from convsim._internal.hooks import capture
from convsim.measure import (
    KEYS,
    FeatureMapSimilarity,
    effective_rank,
    feature_map_cosine,
    kernel_cosine_matrix,
    summarize,
)
from convsim.similarity import conv_similarity


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU(), nn.Conv2d(5, 1, 1)
    ).double()


def batch(n, seed=0):
    return torch.randn(n, 2, 10, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def stored(model, x, names):
    model.eval()
    with capture(model, names) as out:
        model(x)
    return {k: v.clone() for k, v in out.items()}


def pooled_vectors(h):
    """Channel i's maps over all samples concatenated: (M, N*positions) numpy."""
    h = h.numpy()
    return np.stack([np.concatenate([h[n, i].ravel() for n in range(h.shape[0])]) for i in range(h.shape[1])])


def direct_summary(h, weight, centered):
    v = pooled_vectors(h)
    if centered:
        v = v - v.mean(axis=1, keepdims=True)
    m = v.shape[0]
    cos = [
        abs(float(v[i] @ v[j]) / math.sqrt(float(v[i] @ v[i]) * float(v[j] @ v[j])))
        for i in range(m)
        for j in range(i + 1, m)
    ]
    lam = np.linalg.eigvalsh(v @ v.T / (v.shape[1] if centered else 1))
    k = weight.detach().reshape(m, -1).numpy()
    kcos = [abs(k[i] @ k[j]) / (np.linalg.norm(k[i]) * np.linalg.norm(k[j])) for i in range(m) for j in range(i + 1, m)]
    return {
        "fm_abs_cos": np.mean(cos),
        "fm_frac_above": np.mean([c > 0.5 for c in cos]),
        "fm_effective_rank": lam.sum() ** 2 / (lam**2).sum(),
        "kernel_abs_cos": np.mean(kcos),
        "cs": conv_similarity(weight.detach()).item(),
    }


@pytest.mark.parametrize("centered", [False, True])
def test_compute_matches_direct_computation(centered):
    """Every key equals its definition computed from the stored conv outputs (pooled over samples)."""
    model, x = net(), batch(6)
    fms = FeatureMapSimilarity(model, centered=centered)
    assert fms.layers == ["0", "3"]
    fms.update(x)
    got = fms.compute()
    acts = stored(model, x, ["0", "3"])
    for name, idx in (("0", 0), ("3", 3)):
        ref = direct_summary(acts[name], model[idx].weight, centered)
        assert set(got[name]) == set(KEYS)
        for key in KEYS:
            assert isinstance(got[name][key], float)
            assert got[name][key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key


def test_streaming_equals_one_big_batch():
    """Three updates of 4 samples give the same result as one update of the 12."""
    model, x = net(), batch(12, seed=1)
    streamed, whole = FeatureMapSimilarity(model, centered=True), FeatureMapSimilarity(model, centered=True)
    for part in x.split(4):
        streamed.update(part)
    whole.update(x)
    a, b = streamed.compute(), whole.compute()
    for name in a:
        for key in KEYS:
            assert a[name][key] == pytest.approx(b[name][key], rel=1e-10, abs=1e-12)


def test_reset_clears_state():
    """After reset(), compute() fails until the next update, which starts from scratch."""
    model = net()
    fms = FeatureMapSimilarity(model)
    fms.update(batch(3, seed=2))
    fms.reset()
    with pytest.raises(RuntimeError, match="before update"):
        fms.compute()
    fms.update(batch(3, seed=3))
    fresh = FeatureMapSimilarity(model)
    fresh.update(batch(3, seed=3))
    assert fms.compute() == fresh.compute()


def test_single_sample_single_position_centered_no_nan():
    """N=1 with a 1x1 output: zero covariance gives 0 statistics, not NaN."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3)).double()
    fms = FeatureMapSimilarity(model, centered=True)
    fms.update(torch.randn(1, 2, 3, 3, dtype=torch.float64))
    res = fms.compute()["0"]
    assert all(math.isfinite(v) for v in res.values())
    assert res["fm_abs_cos"] == 0.0 and res["fm_effective_rank"] == 0.0


def test_zero_maps_no_nan():
    """A dead layer (zero weight and bias) gives finite zeros everywhere."""
    conv = nn.Conv2d(2, 3, 3).double()
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    fms = FeatureMapSimilarity(nn.Sequential(conv))
    fms.update(batch(2))
    res = fms.compute()["0"]
    assert res == {"fm_abs_cos": 0.0, "fm_frac_above": 0.0, "fm_effective_rank": 0.0, "kernel_abs_cos": 0.0, "cs": 0.0}


def test_update_restores_modes_and_bn_statistics():
    """update() runs in eval mode: BN running stats unchanged, train flags restored."""
    model = net().train()
    model[1].eval()  # a mixed-mode model keeps its per-module flags
    before = model[1].running_mean.clone()
    FeatureMapSimilarity(model).update(batch(4))
    assert model.training and not model[1].training and model[3].training
    assert torch.equal(model[1].running_mean, before)


def test_update_returns_output_without_graph():
    """update() returns the model output, computed without autograd."""
    model = net()
    out = FeatureMapSimilarity(model).update(batch(2))
    assert out.shape == (2, 1, 3, 3) and not out.requires_grad


def test_activation_measures_transformed_maps():
    """activation=torch.relu measures relu(conv output)."""
    model, x = net(), batch(5, seed=4)
    fms = FeatureMapSimilarity(model, layers=["3"], activation=torch.relu)
    fms.update(x)
    h = torch.relu(stored(model, x, ["3"])["3"])
    ref = direct_summary(h, model[3].weight, False)
    assert fms.compute()["3"]["fm_abs_cos"] == pytest.approx(ref["fm_abs_cos"], rel=1e-10)


def test_explicit_layers_and_errors():
    """layers picks named convs; unknown names are a KeyError, non-conv modules a ValueError."""
    model = net()
    assert FeatureMapSimilarity(model, layers=["5"]).layers == ["5"]
    with pytest.raises(KeyError, match="no module named"):
        FeatureMapSimilarity(model, layers=["nope"])
    with pytest.raises(ValueError, match="Conv1d/2d/3d"):
        FeatureMapSimilarity(model, layers=["1"])


def test_single_channel_layer_has_zero_pair_statistics():
    """A 1-channel layer has no pairs: pair statistics are 0, effective rank 1."""
    model = net()
    fms = FeatureMapSimilarity(model, layers=["5"])
    fms.update(batch(2))
    res = fms.compute()["5"]
    assert res["fm_abs_cos"] == 0.0 and res["kernel_abs_cos"] == 0.0 and res["fm_effective_rank"] == pytest.approx(1.0)


def test_no_conv_model_raises():
    """Default selection on a model without convs is an error."""
    with pytest.raises(ValueError, match="no conv layer"):
        FeatureMapSimilarity(nn.Sequential(nn.Linear(2, 2)))


def test_feature_map_cosine_matches_loop():
    """The functional cosine is the pooled cosine of concatenated maps."""
    h = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v = pooled_vectors(h)
    ref = np.array([[v[i] @ v[j] / np.sqrt((v[i] @ v[i]) * (v[j] @ v[j])) for j in range(4)] for i in range(4)])
    assert np.allclose(feature_map_cosine(h).numpy(), ref, rtol=1e-12)


def test_feature_map_cosine_centered_is_corrcoef():
    """centered=True gives Pearson correlations over samples x positions (numpy corrcoef)."""
    h = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 2.0
    assert np.allclose(feature_map_cosine(h, centered=True).numpy(), np.corrcoef(pooled_vectors(h)), rtol=1e-10)


def test_kernel_cosine_matrix_matches_loop():
    """Cosines of the flattened kernels."""
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    k = w.reshape(4, -1).numpy()
    ref = np.array([[k[i] @ k[j] / (np.linalg.norm(k[i]) * np.linalg.norm(k[j])) for j in range(4)] for i in range(4)])
    assert np.allclose(kernel_cosine_matrix(w).numpy(), ref, rtol=1e-12)


def test_effective_rank_matches_eigenvalues():
    """(tr A)^2 / ||A||_F^2 equals the participation ratio of the eigenvalues."""
    a = torch.randn(5, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    gram = a @ a.T
    lam = np.linalg.eigvalsh(gram.numpy())
    assert effective_rank(gram).item() == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-12)
    assert effective_rank(torch.zeros(3, 3)).item() == 0.0


def test_summarize_averages_over_layers():
    """summarize() averages each key over the layers of a compute() result."""
    model = net()
    fms = FeatureMapSimilarity(model)
    fms.update(batch(3))
    res = fms.compute()
    summ = summarize(res)
    assert set(summ) == set(KEYS)
    assert summ["cs"] == pytest.approx((res["0"]["cs"] + res["3"]["cs"]) / 2)


def test_chunked_gram_equals_one_shot(monkeypatch):
    """Converting a few samples at a time to float64 gives the same statistics."""
    import convsim.measure as measure

    h = torch.randn(7, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    whole = feature_map_cosine(h, centered=True)
    monkeypatch.setattr(measure, "_CHUNK", 40)  # 2 samples per chunk
    assert torch.allclose(feature_map_cosine(h, centered=True), whole, rtol=1e-12, atol=1e-14)


SYNC_WORKER = """
import json, sys
import torch, torch.distributed as dist
from torch import nn
from convsim.measure import FeatureMapSimilarity
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
x = torch.randn(12, 1, 9, 9, generator=torch.Generator().manual_seed(1))
shard = x[: 5] if rank == 0 else x[5:]  # unequal shards
result = {}
for sync in (True, False):
    fms = FeatureMapSimilarity(net, centered=True, sync_on_compute=sync)
    fms.update(shard)
    result[str(sync)] = fms.compute()
json.dump({"state": {k: v.tolist() for k, v in net.state_dict().items()}, **result}, open(out, "w"))
dist.destroy_process_group()
"""


def test_compute_sums_the_states_of_all_ranks(tmp_path):
    """Two gloo ranks on unequal shards: synced compute() equals one process on all the data."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SYNC_WORKER, str(r), str(port), str(outs[r])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        log = p.communicate(timeout=120)[0]
        assert p.returncode == 0, log[-3000:]
    got = [json.loads(o.read_text()) for o in outs]
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    net.load_state_dict({k: torch.tensor(v) for k, v in got[0]["state"].items()})
    x = torch.randn(12, 1, 9, 9, generator=torch.Generator().manual_seed(1))
    whole, first = (FeatureMapSimilarity(net, centered=True) for _ in range(2))
    whole.update(x)
    first.update(x[:5])
    for r in range(2):
        for layer, stats in whole.compute().items():
            assert got[r]["True"][layer] == pytest.approx(stats, rel=1e-9, abs=1e-12)
    for layer, stats in first.compute().items():  # unsynced: rank 0 sees its own shard only
        assert got[0]["False"][layer] == pytest.approx(stats, rel=1e-9, abs=1e-12)
        assert got[0]["False"][layer]["fm_abs_cos"] != pytest.approx(got[0]["True"][layer]["fm_abs_cos"])
