"""The feature-map / kernel identity for strided and transposed convolutions (issue 10), float64.

Grams are computed here by running ``torch.nn.functional.conv{1,2,3}d`` (full padding, the given
stride) and ``conv_transpose{1,2,3}d`` (padding 0) directly, and compared with the prediction from
kernel and input correlations alone. The correlation helpers are checked against loops.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convsim import theory
from convsim.cli import verify
from convsim.theory import (
    feature_maps,
    identity_error,
    input_correlations,
    kernel_cross_correlations,
    polyphase_input_correlations,
    polyphase_kernel_cross_correlations,
    predicted_feature_map_gram,
    upsampled_input_correlations,
)
from oracles import rand

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
# per dimension: input size and kernel sizes to draw (even and odd, some smaller than the stride)
SIZES = {1: ((13,), [(1,), (2,), (4,), (5,)]), 2: ((7, 6), [(4, 4), (3, 2), (1, 3)]), 3: ((5, 4, 5), [(2, 3, 2)])}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def run_gram(x, w, stride, transposed):
    """<F_i, F_j> summed over the batch, by running PyTorch's own conv (not convsim's feature_maps)."""
    d = w.dim() - 2
    if transposed:
        f = CONV_T[d](x, w, stride=stride)
    else:
        f = CONV[d](x, w, stride=stride, padding=[k - 1 for k in w.shape[2:]])
    f = f.flatten(2)
    return torch.einsum("nip,njp->ij", f, f)


# --------------------------------------------------------------------------- the identity


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("transposed", [False, True])
def test_identity_matches_running_the_conv(d, stride, transposed):
    """Gram of the maps = prediction from kernel and input correlations, to rounding (several draws)."""
    spatial, kernels = SIZES[d]
    for draw, kernel in enumerate(kernels * 2):
        seed = 100 * d + 10 * stride + draw
        x = rand(2, 3, *spatial, seed=seed)
        w = rand(*((3, 4) if transposed else (4, 3)), *kernel, seed=seed + 1)
        want = run_gram(x, w, stride, transposed)
        got = predicted_feature_map_gram(x, w, stride=stride, transposed=transposed)
        assert rel(got, want) < 1e-12, (kernel, rel(got, want))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("stride", [(2, 3), (3, 1, 2)], ids=str)
def test_identity_with_a_stride_per_axis(transposed, stride):
    """A different stride on each axis (2-D and 3-D) is exact too."""
    d = len(stride)
    x = rand(2, 2, *[7, 6, 5][:d], seed=1)
    w = rand(2, 3, *[4, 3, 2][:d], seed=2)
    w = w if transposed else w.transpose(0, 1)
    assert (
        rel(predicted_feature_map_gram(x, w, stride=stride, transposed=transposed), run_gram(x, w, stride, transposed))
        < 1e-12
    )


def test_feature_maps_match_loops_1d():
    """feature_maps: F_i[t] = sum K_ic[n] X_c[st + n - (k-1)] (forward) and sum X_c[u] W[c,i][t - su] (transposed)."""
    x, w, s = rand(2, 9, seed=3).numpy(), rand(3, 2, 4, seed=4).numpy(), 2
    c, length = x.shape
    k = w.shape[-1]

    def at(ch, q):
        return x[ch, q] if 0 <= q < length else 0.0

    fwd = [
        [
            sum(w[i, ch, n] * at(ch, s * t + n - (k - 1)) for ch in range(c) for n in range(k))
            for t in range((length + k - 2) // s + 1)
        ]
        for i in range(3)
    ]
    np.testing.assert_allclose(feature_maps(torch.from_numpy(x), torch.from_numpy(w), stride=s)[0], fwd, atol=1e-12)
    wt = w.transpose(1, 0, 2)  # (C, M, k)
    up = [
        [
            sum(x[ch, u] * wt[ch, i, t - s * u] for ch in range(c) for u in range(length) if 0 <= t - s * u < k)
            for t in range(s * (length - 1) + k)
        ]
        for i in range(3)
    ]
    got = feature_maps(torch.from_numpy(x), torch.from_numpy(wt), stride=s, transposed=True)[0]
    np.testing.assert_allclose(got, up, atol=1e-12)


def test_forward_identity_needs_the_phase_shift():
    """Pairing R^phi with P^phi instead of P^(phi+k-1) breaks the identity for an even kernel."""
    x, w = rand(2, 3, 10, 9, seed=5), rand(4, 3, 4, 4, seed=6)
    kk = polyphase_kernel_cross_correlations(w, 2).flatten(5)
    r = polyphase_input_correlations(x, 4, 2).flatten(3)
    unshifted = torch.einsum("pijcdl,pcdl->ij", kk, r)
    assert rel(unshifted, run_gram(x, w, 2, False)) > 1e-3


def test_transposed_identity_needs_the_lag_flip():
    """With correlated input channels, R^u_cd[l] in place of R^u_cd[-l] breaks the transposed identity."""
    x, w = rand(2, 3, 6, 6, seed=7), rand(3, 4, 4, 4, seed=8)
    x = x + x.roll(1, dims=1).roll(1, dims=-1)  # channel c correlated with a shifted channel c-1
    kk = kernel_cross_correlations(w.transpose(0, 1)).flatten(4)
    r = upsampled_input_correlations(x, 4, 2).flatten(2)
    assert rel(torch.einsum("ijcdl,cdl->ij", kk, r), run_gram(x, w, 2, True)) > 1e-3


def test_stride_one_forward_prediction_is_unchanged():
    """stride=1 (int or per axis) gives the very numbers of the stride-1 prediction."""
    x, w = rand(2, 3, 8, 8, seed=9), rand(4, 3, 3, 3, seed=10)
    assert torch.equal(predicted_feature_map_gram(x, w, stride=(1, 1)), predicted_feature_map_gram(x, w))


def test_identity_error_is_rounding_for_strided_and_transposed():
    """identity_error reports rounding for a strided forward and a transposed conv."""
    x = rand(3, 9, 9, seed=11)
    assert identity_error(x, rand(4, 3, 3, 3, seed=12), stride=2).item() < 1e-12
    assert identity_error(x, rand(3, 4, 3, 3, seed=13), stride=3, transposed=True).item() < 1e-12


# --------------------------------------------------------------------------- the correlations


def test_polyphase_kernel_correlations_match_loops():
    """P^psi_{ic,jd}[l] = sum_{n = psi (mod s)} K_ic[n] K_jd[n + l], per-axis stride (2, 3)."""
    w = rand(2, 2, 4, 3, seed=14)
    got = polyphase_kernel_cross_correlations(w, (2, 3))
    wn = w.numpy()
    for p, (psi0, psi1) in enumerate(itertools.product(range(2), range(3))):
        for i, j, c, d, l0, l1 in itertools.product(range(2), range(2), range(2), range(2), range(-3, 4), range(-2, 3)):
            want = sum(
                wn[i, c, n0, n1] * wn[j, d, n0 + l0, n1 + l1]
                for n0 in range(psi0, 4, 2)
                for n1 in range(psi1, 3, 3)
                if 0 <= n0 + l0 < 4 and 0 <= n1 + l1 < 3
            )
            assert got[p, i, j, c, d, l0 + 3, l1 + 2].item() == pytest.approx(want, abs=1e-12)


def test_polyphase_input_correlations_match_loops():
    """R^phi_cd[l] = sum_n sum_{t = phi (mod s)} X_nc[t] X_nd[t + l], over a batch of 2."""
    x = rand(2, 2, 5, 4, seed=15)
    got = polyphase_input_correlations(x, (3, 2), 2)
    xn = x.numpy()
    for p, (f0, f1) in enumerate(itertools.product(range(2), range(2))):
        for c, d, l0, l1 in itertools.product(range(2), range(2), range(-2, 3), range(-1, 2)):
            want = sum(
                xn[n, c, t0, t1] * xn[n, d, t0 + l0, t1 + l1]
                for n in range(2)
                for t0 in range(f0, 5, 2)
                for t1 in range(f1, 4, 2)
                if 0 <= t0 + l0 < 5 and 0 <= t1 + l1 < 4
            )
            assert got[p, c, d, l0 + 2, l1 + 1].item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("stride", [2, 3, (2, 3)], ids=str)
def test_upsampled_correlations_are_those_of_the_zero_inserted_input(stride):
    """R on the lattice sZ equals the correlations of the explicitly zero-inserted input."""
    x = rand(2, 3, 5, 4, seed=16)
    s = (stride, stride) if isinstance(stride, int) else stride
    u = torch.zeros(2, 3, s[0] * 4 + 1, s[1] * 3 + 1, dtype=x.dtype)
    u[:, :, :: s[0], :: s[1]] = x
    torch.testing.assert_close(upsampled_input_correlations(x, (5, 4), stride), input_correlations(u, (5, 4)))


def test_phases_sum_to_the_stride_one_correlations():
    """Summed over the phases, the polyphase correlations are the stride-1 ones."""
    x, w = rand(2, 3, 7, 6, seed=17), rand(3, 2, 4, 3, seed=18)
    torch.testing.assert_close(polyphase_kernel_cross_correlations(w, (3, 2)).sum(0), kernel_cross_correlations(w))
    torch.testing.assert_close(polyphase_input_correlations(x, (4, 3), (3, 2)).sum(0), input_correlations(x, (4, 3)))


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
def test_strided_or_transposed_needs_full_padding(padding):
    """A strided or transposed conv is defined here with full padding only."""
    with pytest.raises(ValueError, match="padding='full' only"):
        feature_maps(rand(2, 9, 9), rand(3, 2, 3, 3), padding, stride=2)
    with pytest.raises(ValueError, match="padding='full' only"):
        identity_error(rand(2, 9, 9), rand(2, 3, 3, 3), padding, transposed=True)


def test_transposed_weight_layout_is_checked():
    """A transposed weight is (C, M, *k): x must have weight.shape[0] channels."""
    with pytest.raises(ValueError, match="C=3"):
        predicted_feature_map_gram(rand(2, 9), rand(3, 2, 3), transposed=True)


@pytest.mark.parametrize("stride,error", [(0, ValueError), ((2, 2, 2), ValueError), (1.5, TypeError)])
def test_rejects_bad_stride(stride, error):
    with pytest.raises(error, match="stride must be"):
        predicted_feature_map_gram(rand(2, 9, 9), rand(3, 2, 3, 3), stride=stride)


# --------------------------------------------------------------------------- convsim verify


def verify_args():
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    return parser.parse_args(["--seeds", "1", "--steps", "2"])


def test_verify_has_exact_stride_two_rows():
    """convsim verify checks a stride-2 forward and a stride-2 transposed identity, both exact."""
    rows = [r for r in verify.identity_checks(0) if r["stride"] == 2]
    assert sorted(r["transposed"] for r in rows) == [False, True]
    assert all(r["exact"] and r["ok"] and r["rel_error"] < 1e-12 for r in rows)


def test_verify_fails_when_a_strided_identity_breaks(monkeypatch, capsys):
    """A strided prediction off by 1e-6 relative makes `convsim verify` exit non-zero."""
    real = theory._lattice_prediction
    monkeypatch.setattr(theory, "_lattice_prediction", lambda *a: real(*a) * (1 + 1e-6))
    assert verify.run(verify_args()) == 1
    out = capsys.readouterr().out
    assert "stride 2 transposed" in out and "exact: FAIL" in out
