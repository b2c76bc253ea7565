"""The feature-map / kernel identity against float64 loops (spec §3, §4.3, §11, §13)."""

import itertools

import numpy as np
import pytest
import torch

from convsim.theory import (
    feature_map_gram,
    feature_maps,
    identity_error,
    input_correlations,
    kernel_cross_correlations,
    predicted_feature_map_gram,
    shifted_delta_counterexample,
    smooth_signal,
    toy_comparison,
)
from oracles import rand


def maps_loop_1d(x, w, padding):
    """F_i[t] = sum_c sum_n K_ic[n] X_c[t + n] with the padding's index range, as loops."""
    x, w = x.numpy(), w.numpy()
    c, s = x.shape
    m, _, k = w.shape
    if padding == "full":
        ts, get = range(1 - k, s), lambda ch, q: x[ch, q] if 0 <= q < s else 0.0
    elif padding == "same":
        ts, get = range(-(k - 1) // 2, s - (k - 1) // 2), lambda ch, q: x[ch, q] if 0 <= q < s else 0.0
    elif padding == "valid":
        ts, get = range(0, s - k + 1), lambda ch, q: x[ch, q]
    else:  # circular
        ts, get = range(0, s), lambda ch, q: x[ch, q % s]
    return np.array(
        [[sum(w[i, ch, n] * get(ch, t + n) for ch in range(c) for n in range(k)) for t in ts] for i in range(m)]
    )


@pytest.mark.parametrize("padding", ["full", "circular", "same", "valid"])
def test_feature_maps_match_loop(padding):
    """The four paddings produce the maps their index ranges define (1-D, 2 channels)."""
    x, w = rand(2, 11, seed=1), rand(3, 2, 5, seed=2)
    assert np.allclose(feature_maps(x, w, padding)[0].numpy(), maps_loop_1d(x, w, padding), rtol=1e-12, atol=1e-12)


def test_kernel_cross_correlations_match_loop():
    """Entry [i, j, c, d, l] = sum_n K_ic[n] K_jd[n + l - (k-1)] (2-D, rectangular kernel)."""
    w = rand(2, 2, 3, 2, seed=3)
    kk = kernel_cross_correlations(w).numpy()
    wn = w.numpy()
    assert kk.shape == (2, 2, 2, 2, 5, 3)
    for i, j, c, d, l1, l2 in itertools.product(range(2), range(2), range(2), range(2), range(5), range(3)):
        ref = 0.0
        for n1, n2 in itertools.product(range(3), range(2)):
            q1, q2 = n1 + l1 - 2, n2 + l2 - 1
            if 0 <= q1 < 3 and 0 <= q2 < 2:
                ref += wn[i, c, n1, n2] * wn[j, d, q1, q2]
        assert kk[i, j, c, d, l1, l2] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("circular", [False, True])
def test_input_correlations_match_loop(circular):
    """R_cd[l] = sum_n sum_t X_nc[t] X_nd[t + l] (zero outside, or modulo S), lags |l| <= k-1."""
    x = rand(2, 3, 6, seed=4)  # N=2, C=3, S=6; k=8 makes circular lags wrap past the input size
    k = 8
    r = input_correlations(x, k, circular=circular).numpy()
    xn = x.numpy()
    for c, d, li in itertools.product(range(3), range(3), range(2 * k - 1)):
        lag = li - (k - 1)
        ref = 0.0
        for n, t in itertools.product(range(2), range(6)):
            q = t + lag
            if circular:
                ref += xn[n, c, t] * xn[n, d, q % 6]
            elif 0 <= q < 6:
                ref += xn[n, c, t] * xn[n, d, q]
        assert r[c, d, li] == pytest.approx(ref, abs=1e-12)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("padding", ["full", "circular"])
def test_identity_exact_1d(padding):
    """1-D single channel, L=64, k=9: Gram of maps = <K_i * K_j, R_X> to rounding."""
    x, w = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)[None], rand(2, 1, 9, seed=6)
    assert rel(predicted_feature_map_gram(x, w, padding), feature_map_gram(x, w, padding)) < 1e-10


@pytest.mark.parametrize("padding", ["full", "circular"])
def test_identity_exact_2d_multichannel_batch(padding):
    """2-D, C=3 with cross-channel terms, a batch of 4 summed: exact to rounding."""
    x, w = rand(4, 3, 12, 10, seed=7), rand(5, 3, 3, 3, seed=8)
    assert rel(predicted_feature_map_gram(x, w, padding), feature_map_gram(x, w, padding)) < 1e-10


def test_identity_exact_3d_rectangular():
    """3-D, rectangular kernel, full padding: exact to rounding."""
    x, w = rand(2, 2, 6, 5, 4, seed=9), rand(3, 2, 3, 1, 2, seed=10)
    assert rel(predicted_feature_map_gram(x, w, "full"), feature_map_gram(x, w, "full")) < 1e-10


def test_identity_circular_kernel_larger_than_input():
    """Circular padding stays exact when the lag window wraps past the input size."""
    x, w = rand(2, 4, seed=11), rand(3, 2, 7, seed=12)
    assert rel(predicted_feature_map_gram(x, w, "circular"), feature_map_gram(x, w, "circular")) < 1e-10


def test_identity_needs_cross_channel_terms():
    """Dropping the c != d terms breaks the multi-channel identity (they are not negligible)."""
    x, w = rand(3, 16, 16, seed=13) + 1.0, rand(4, 3, 3, 3, seed=14)  # shared offset: correlated channels
    kk = kernel_cross_correlations(w).flatten(4)
    r = input_correlations(x[None], 3).flatten(2)
    same_channel_only = torch.einsum("ijccl,ccl->ij", kk, r)
    assert rel(same_channel_only, feature_map_gram(x, w, "full")) > 1e-3


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_identity_error_nonzero_and_shrinks_with_input(padding):
    """same/valid miss boundary terms: a nonzero error that shrinks as the input grows."""
    w = rand(3, 2, 5, seed=15)
    small = identity_error(rand(2, 16, seed=16), w, padding).item()
    large = identity_error(rand(2, 2048, seed=16), w, padding).item()
    assert small > 1e-4 and large < small / 4


def test_identity_error_full_is_rounding():
    """identity_error reports rounding only for the exact paddings."""
    x, w = rand(2, 9, 9, seed=17), rand(3, 2, 3, 3, seed=18)
    assert identity_error(x, w, "full").item() < 1e-12 and identity_error(x, w, "circular").item() < 1e-12


def test_counterexample_cosine_is_autocorrelation_ratio():
    """Shifted deltas: kernels orthogonal, cos(F1, F2) = R_X[1]/R_X[0] exactly (full padding)."""
    x = smooth_signal(200, generator=torch.Generator().manual_seed(19))
    out = shifted_delta_counterexample(x)
    ref = (x[:-1] @ x[1:]) / (x @ x)
    assert out["kernel_inner_product"].item() == 0.0
    assert out["fm_cosine"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert out["autocorr_ratio"].item() == pytest.approx(ref.item(), rel=1e-12)


def test_counterexample_smooth_input_is_far_from_orthogonal():
    """On a smooth input the orthogonal kernels give strongly correlated maps (near (B-1)/B)."""
    x = smooth_signal(4000, box=8, generator=torch.Generator().manual_seed(20))
    assert shifted_delta_counterexample(x)["fm_cosine"].item() > 0.7


def test_counterexample_rejects_zero_input():
    """An all-zero input has no autocorrelation ratio."""
    with pytest.raises(ValueError, match="zeros"):
        shifted_delta_counterexample(torch.zeros(8, dtype=torch.float64))


def test_smooth_signal_is_zero_mean_and_seeded():
    """The smooth input is exactly zero-mean and reproducible from its generator."""
    a = smooth_signal(64, generator=torch.Generator().manual_seed(0))
    b = smooth_signal(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and abs(a.mean().item()) < 1e-14


def test_toy_cs_lowers_feature_map_cosine_far_more_than_orthogonality():
    """Spec §11 (seeded, means over seeds): orthogonality zeroes the kernel cosine but leaves the
    maps similar; CS lowers the feature-map |cos| far more."""
    rows = {(r["input"], r["objective"]): r for r in toy_comparison(seeds=4, steps=300)["rows"]}
    for inp in ("uniform", "smooth"):
        ortho, cs = rows[(inp, "orthogonality")], rows[(inp, "cs")]
        assert abs(ortho["kernel_cos_after"]) < 1e-6
        assert ortho["fm_abs_cos_after"] > 0.5
        assert cs["fm_abs_cos_after"] < 0.5 * ortho["fm_abs_cos_after"]
        assert cs["fm_abs_cos_after"] < cs["fm_abs_cos_before"] / 3
    # CS shrinks the kernels, orthogonality does not (spec §8.2)
    cs_uniform = rows[("uniform", "cs")]
    assert max(cs_uniform["kernel_norms_after"]) < 0.8 * min(cs_uniform["kernel_norms_before"])


def test_toy_batched_seeds_equal_separate_runs():
    """Running seeds as one batch equals running each seed alone (means of the per-seed rows)."""
    both = toy_comparison(seeds=2, steps=20)["rows"]
    one = [toy_comparison(seeds=1, steps=20, seed=s)["rows"] for s in (0, 1)]
    for k, row in enumerate(both):
        for key in ("kernel_cos_after", "fm_abs_cos_after", "fm_cos_relu_after"):
            assert row[key] == pytest.approx((one[0][k][key] + one[1][k][key]) / 2, rel=1e-10, abs=1e-12)


def test_toy_is_reproducible():
    """Same arguments, same numbers."""
    assert toy_comparison(seeds=2, steps=5) == toy_comparison(seeds=2, steps=5)


def test_rejects_unknown_padding():
    """Only full, circular, same and valid exist."""
    with pytest.raises(ValueError, match="padding must be one of"):
        feature_map_gram(rand(1, 8), rand(2, 1, 3), "reflect")


def test_prediction_only_for_exact_paddings():
    """The prediction is defined for full and circular padding only."""
    with pytest.raises(ValueError, match="padding must be one of"):
        predicted_feature_map_gram(rand(1, 8), rand(2, 1, 3), "same")


def test_same_padding_needs_odd_kernel():
    """same padding with an even kernel is ambiguous."""
    with pytest.raises(ValueError, match="odd"):
        feature_map_gram(rand(1, 8), rand(2, 1, 4), "same")


def test_channel_mismatch_raises():
    """x must have the weight's input channels."""
    with pytest.raises(ValueError, match="C=2"):
        feature_map_gram(rand(3, 8), rand(2, 2, 3))
