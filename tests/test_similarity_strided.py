"""Stride-aware CS (issue 10) against float64 loop oracles over lags, phases, channels and groups.

Oracles below share no code with convsim: transposed weights are regrouped by explicit loops,
lattice and polyphase correlations are loops over lags and taps. Shapes are (M, C, *kernel) for
forward weights and (C, M/groups, *kernel) for transposed ones.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from convsim.similarity import ConvSimilarity, conv_similarity, conv_similarity_matrix, per_axis_stride, phase_masks
from convsim.theory import feature_map_gram, polyphase_input_correlations, upsampled_input_correlations

PAIRS = ("all", "adjacent")
CHANNELS = ("per_channel", "summed", "cross")
VARIANTS = list(itertools.product(PAIRS, CHANNELS))
# (weight shape, stride): 1-D, 2-D square (the DCGAN 4x4 / stride 2), 2-D rectangular with a per-axis
# stride larger than one kernel side, 3-D; the same shapes serve as transposed weights
CASES = [
    ((4, 3, 5), 2),
    ((4, 2, 4, 4), 2),
    ((3, 2, 3, 2), (3, 3)),
    ((3, 2, 2, 3, 2), (2, 1, 2)),
]


def rand(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- oracles (loops)


def output_filters(w: np.ndarray, groups: int) -> np.ndarray:
    """Transposed weight (C, M/groups, *k) -> filters (M, C/groups, *k) with filters[i, c] = W[c, i], by loops."""
    c_in, m_per_group = w.shape[:2]
    c_per_group = c_in // groups
    out = np.zeros((groups * m_per_group, c_per_group) + w.shape[2:])
    for g in range(groups):
        for i in range(m_per_group):
            for c in range(c_per_group):
                out[g * m_per_group + i, c] = w[g * c_per_group + c, i]
    return out


def polyphase_xcorr(a: np.ndarray, b: np.ndarray, phase: tuple | None, stride: tuple) -> dict:
    """{lag: sum_{n = phase (mod s)} a[n] b[n + lag]} over every lag; phase None: every tap n, lags = 0 (mod s)."""
    out = {}
    for lag in itertools.product(*[range(1 - k, k) for k in a.shape]):
        if phase is None and any(t % s for t, s in zip(lag, stride, strict=True)):
            continue
        total = 0.0
        for n in itertools.product(*map(range, a.shape)):
            if phase is not None and any(p % s != q for p, s, q in zip(n, stride, phase, strict=True)):
                continue
            m = tuple(p + t for p, t in zip(n, lag, strict=True))
            if all(0 <= q < k for q, k in zip(m, b.shape, strict=True)):
                total += a[n] * b[m]
        out[lag] = total
    return out


def pair_term(f: np.ndarray, i: int, j: int, channels: str, stride: tuple, transposed: bool) -> float:
    """T_ij of the output filters f (M, C, *k): lattice lags (transposed) or polyphase sums (forward)."""
    phases = [None] if transposed else list(itertools.product(*map(range, stride)))
    c_range = range(f.shape[1])
    total = 0.0
    for phase in phases:
        cd = [(c, d) for c in c_range for d in c_range if channels == "cross" or c == d]
        corr = {(c, d): polyphase_xcorr(f[i, c], f[j, d], phase, stride) for c, d in cd}
        lags = corr[0, 0].keys()
        if channels == "per_channel":
            total += sum(corr[c, c][lag] ** 2 for c in c_range for lag in lags)
        elif channels == "summed":
            total += sum(sum(corr[c, c][lag] for c in c_range) ** 2 for lag in lags)
        else:
            total += sum(corr[c, d][lag] ** 2 for c in c_range for d in c_range for lag in lags)
    return total


def filters_of(w, groups, transposed, normalize):
    f = output_filters(np.asarray(w, dtype=np.float64), groups) if transposed else np.asarray(w, dtype=np.float64)
    if normalize:
        f = f / np.sqrt((f.reshape(f.shape[0], -1) ** 2).sum(1)).reshape(-1, *([1] * (f.ndim - 1)))
    return f


def cs_oracle(w, stride, transposed, pairs="all", channels="per_channel", normalize=False, reduction="sum", groups=1):
    f = filters_of(w, groups, transposed, normalize)
    stride = per_axis_stride(stride, f.ndim - 2)
    m = f.shape[0] // groups
    plist = []
    for g in range(groups):
        idx = range(g * m, (g + 1) * m)
        plist += [(i, j) for i in idx for j in idx if i < j] if pairs == "all" else [(i, i + 1) for i in idx[:-1]]
    total = sum(pair_term(f, i, j, channels, stride, transposed) for i, j in plist)
    return total / max(len(plist), 1) if reduction == "mean" else total


def cs_matrix_oracle(w, stride, transposed, channels, groups=1):
    f = filters_of(w, groups, transposed, False)
    stride = per_axis_stride(stride, f.ndim - 2)
    m = f.shape[0]
    out = np.zeros((m, m))
    for i, j in itertools.product(range(m), repeat=2):
        if i != j:
            out[i, j] = pair_term(f, i, j, channels, stride, transposed)
    return out


# --------------------------------------------------------------------------- the oracle itself


def test_oracle_regrouping_matches_conv_transpose():
    """The oracle's filters are what conv_transpose2d applies: output i = sum_c full conv of x_c with W[c, i]."""
    w, x = rand((4, 3, 2, 2), 1), rand((1, 4, 3, 3), 2)
    f = torch.from_numpy(output_filters(w.numpy(), 2))  # (6, 2, 2, 2)
    y = torch.nn.functional.conv_transpose2d(x, w, groups=2)
    for i in range(6):
        g = i // 3
        want = sum(
            torch.nn.functional.conv2d(x[:, 2 * g + c : 2 * g + c + 1], f[i, c].flip(0, 1)[None, None], padding=1)
            for c in range(2)
        )
        np.testing.assert_allclose(y[:, i : i + 1].numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


def test_oracle_phases_partition_the_stride1_correlation():
    """Summed over the phases, the polyphase correlations are the full cross-correlation (every lag)."""
    a, b = rand((3, 4), 3).numpy(), rand((3, 4), 4).numpy()
    whole = polyphase_xcorr(a, b, (0, 0), (1, 1))
    parts = [polyphase_xcorr(a, b, p, (2, 3)) for p in itertools.product(range(2), range(3))]
    for lag, value in whole.items():
        assert sum(p[lag] for p in parts) == pytest.approx(value, abs=1e-12)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape,stride", CASES, ids=str)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_matches_loop_oracle(shape, stride, transposed, pairs, channels):
    """Every pair set and channel mode, forward and transposed, 1-D to 3-D, equals the loops."""
    w = rand(shape, seed=len(shape))
    got = conv_similarity(w, pairs=pairs, channels=channels, stride=stride, transposed=transposed)
    want = cs_oracle(w.numpy(), stride, transposed, pairs, channels)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("normalize,reduction", [(True, "sum"), (False, "mean")])
def test_normalize_and_mean_match_loop_oracle(transposed, pairs, channels, normalize, reduction):
    """normalize (unit output filters) and reduction='mean' keep their meaning with a stride."""
    w = rand((4, 2, 4, 3), seed=5)
    got = conv_similarity(
        w, pairs=pairs, channels=channels, normalize=normalize, reduction=reduction, stride=2, transposed=transposed
    )
    want = cs_oracle(w.numpy(), 2, transposed, pairs, channels, normalize, reduction)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_groups_match_loop_oracle(groups, transposed, pairs, channels):
    """Filters are paired within their group; a transposed weight's groups split its input channels."""
    w = rand((6, 2, 3, 4), seed=groups)
    got = conv_similarity(w, pairs=pairs, channels=channels, groups=groups, stride=(2, 3), transposed=transposed)
    want = cs_oracle(w.numpy(), (2, 3), transposed, pairs, channels, groups=groups)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("shape,stride", CASES, ids=str)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("channels", CHANNELS)
def test_matrix_matches_loop_oracle(shape, stride, transposed, channels):
    """conv_similarity_matrix gives every stride-aware pair term T_ij (zero diagonal)."""
    w = rand(shape, seed=7)
    got = conv_similarity_matrix(w, channels, stride=stride, transposed=transposed).numpy()
    np.testing.assert_allclose(got, cs_matrix_oracle(w.numpy(), stride, transposed, channels), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("channels", CHANNELS)
def test_matrix_sums_to_twice_the_loss_and_is_symmetric(transposed, channels):
    """Half the table's sum is the all-pairs loss; its first off-diagonal is the adjacent loss."""
    w = rand((5, 3, 4, 4), seed=8)
    mat = conv_similarity_matrix(w, channels, normalize=True, stride=2, transposed=transposed, groups=1)
    kw = dict(channels=channels, normalize=True, stride=2, transposed=transposed)
    torch.testing.assert_close(mat, mat.T)
    torch.testing.assert_close(mat.sum() / 2, conv_similarity(w, **kw))
    torch.testing.assert_close(torch.diagonal(mat, 1).sum(), conv_similarity(w, pairs="adjacent", **kw))


def test_transposed_matrix_regroups_with_groups():
    """With groups, a transposed weight's table is indexed by its output channels (loop regrouping)."""
    w = rand((4, 3, 3), seed=9)
    got = conv_similarity_matrix(w, "cross", stride=2, transposed=True, groups=2).numpy()
    np.testing.assert_allclose(got, cs_matrix_oracle(w.numpy(), 2, True, "cross", groups=2), rtol=1e-10)


# --------------------------------------------------------------------------- stride 1 and limits


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_stride_one_is_todays_cs_bit_for_bit(pairs, channels):
    """stride=1 (int or per axis) runs today's code: the very same numbers and gradients."""
    w = rand((5, 3, 3, 3), seed=10).requires_grad_()
    base = conv_similarity(w, pairs=pairs, channels=channels)
    (g0,) = torch.autograd.grad(base, w)
    same = conv_similarity(w, pairs=pairs, channels=channels, stride=(1, 1))
    (g1,) = torch.autograd.grad(same, w)
    assert torch.equal(base, same) and torch.equal(g0, g1)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_transposed_stride_one_is_todays_cs_of_the_output_filters(pairs, channels):
    """A transposed weight at stride 1 has exactly the CS of its regrouped output filters."""
    w = rand((6, 2, 3, 3), seed=11)
    f = torch.from_numpy(output_filters(w.numpy(), 3))
    got = conv_similarity(w, pairs=pairs, channels=channels, groups=3, transposed=True)
    assert torch.equal(got, conv_similarity(f, pairs=pairs, channels=channels, groups=3))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_stride_at_least_the_kernel_leaves_only_lag_zero(transposed, pairs, channels):
    """stride >= k on every axis: only the centre lag / one tap per phase remains, the 1x1 formula."""
    w = rand((4, 3, 2, 3), seed=12)
    got = conv_similarity(w, pairs=pairs, channels=channels, stride=(2, 5), transposed=transposed)
    want = cs_oracle(w.numpy(), (2, 5), transposed, pairs, channels)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_transposed_lattice_never_exceeds_stride_one():
    """Transposed: restricting the squared lags to the lattice can only lower each term."""
    w = rand((3, 6, 4, 4), seed=13)
    for channels in CHANNELS:
        lattice = conv_similarity_matrix(w, channels, stride=2, transposed=True)
        assert bool((lattice <= conv_similarity_matrix(w, channels, transposed=True) + 1e-12).all())


def test_forward_stride_is_the_lattice_of_autocorrelations():
    """Forward, one channel: sum_psi sum_l P^psi_ij[l]^2 = sum_{delta = 0 mod s} R_i[delta] R_j[delta]."""
    w = rand((2, 1, 7), seed=14).numpy()
    r = [np.correlate(w[i, 0], w[i, 0], mode="full") for i in range(2)]  # lags -6 .. 6
    lattice = sum(r[0][6 + d] * r[1][6 + d] for d in range(-6, 7) if d % 3 == 0)
    assert conv_similarity(torch.from_numpy(w), stride=3).item() == pytest.approx(lattice, rel=1e-12)


def test_phase_masks_partition_the_taps():
    """Every tap lies in exactly one phase, the one its coordinates give modulo the stride."""
    masks = phase_masks([4, 5], [2, 3], dtype=torch.float64)
    assert masks.shape == (6, 4, 5) and torch.equal(masks.sum(0), torch.ones(4, 5))
    assert masks[1 * 3 + 2, 3, 2] == 1 and masks[1 * 3 + 2, 3, 3] == 0


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_gradcheck(transposed, pairs, channels):
    """Exact gradients (finite differences, float64), 2-D stride 2, normalised."""
    w = rand((4, 2, 3, 3), seed=15).requires_grad_()
    fn = lambda v: conv_similarity(  # noqa: E731
        v, pairs=pairs, channels=channels, normalize=True, stride=2, transposed=transposed
    )
    assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("shape,stride,groups", [((6, 1, 5), 3, 3), ((2, 2, 2, 3, 2), (2, 1, 2), 1)], ids=str)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("channels", ["per_channel", "cross"])
def test_gradcheck_other_shapes(shape, stride, groups, transposed, channels):
    """1-D with groups and 3-D with a per-axis stride: the hand-written backward is exact."""
    w = rand(shape, seed=16).requires_grad_()
    for pairs in PAIRS:
        fn = lambda v, p=pairs: conv_similarity(  # noqa: E731
            v, pairs=p, channels=channels, groups=groups, stride=stride, transposed=transposed
        )
        assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("transposed", [False, True])
def test_float32_agrees_with_float64(transposed):
    """float32 stays float32: value within 1e-5 and gradient within 1e-4 (of its largest entry) of float64."""
    w64 = rand((8, 4, 4, 4), seed=17).requires_grad_()
    w32 = w64.detach().float().requires_grad_()
    values = [conv_similarity(w, stride=2, transposed=transposed, channels="cross") for w in (w64, w32)]
    for v in values:
        v.backward()
    assert values[1].dtype == torch.float32 and values[1].item() == pytest.approx(values[0].item(), rel=1e-5)
    torch.testing.assert_close(w32.grad.double(), w64.grad, rtol=1e-4, atol=1e-4 * w64.grad.abs().max().item())


def test_zero_weight_with_normalize_is_finite():
    """A zero weight gives 0 and a zero gradient, no NaN, in the stride-aware paths too."""
    for transposed, channels in itertools.product([False, True], CHANNELS):
        w = torch.zeros(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
        value = conv_similarity(w, normalize=True, stride=2, transposed=transposed, channels=channels)
        value.backward()
        assert value.item() == 0 and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_cuda_agrees_with_cpu(transposed, pairs, channels):
    """The stride-aware paths run on CUDA with the CPU's value and gradient (float64)."""
    w = rand((6, 4, 4, 4), seed=21).requires_grad_()
    wc = w.detach().cuda().requires_grad_()
    kw = dict(pairs=pairs, channels=channels, stride=2, transposed=transposed)
    a, b = conv_similarity(w, **kw), conv_similarity(wc, **kw)
    a.backward()
    b.backward()
    torch.testing.assert_close(b.cpu(), a)
    torch.testing.assert_close(wc.grad.cpu(), w.grad)
    mat = dict(stride=2, transposed=transposed)
    torch.testing.assert_close(
        conv_similarity_matrix(wc.detach(), channels, **mat).cpu(), conv_similarity_matrix(w.detach(), channels, **mat)
    )


# --------------------------------------------------------------------------- the Cauchy-Schwarz bound


def test_forward_cross_bounds_the_feature_map_gram():
    r"""Forward stride 2, any input: |<F_i,F_j>|^2 <= T^x_ij * sum_{phi,c,d} ||R^phi_cd||^2 on the lag window."""
    w = rand((4, 3, 4, 4), seed=18)
    for seed in range(5):
        x = rand((2, 3, 9, 8), seed=100 + seed) + 0.5  # correlated channels (shared offset)
        gram = feature_map_gram(x, w, stride=2)
        r2 = polyphase_input_correlations(x, [4, 4], 2).square().sum()
        bound = conv_similarity_matrix(w, "cross", stride=2) * r2
        off = ~torch.eye(4, dtype=torch.bool)
        assert bool((gram.square()[off] <= bound[off] * (1 + 1e-12)).all())


def test_transposed_cross_bounds_the_feature_map_gram():
    r"""Transposed stride 2, any input: |<F_i,F_j>|^2 <= T^x_ij * sum_{c,d} ||R^u_cd||^2 on the lag window."""
    w = rand((3, 4, 4, 4), seed=19)  # ConvTranspose2d(3, 4, 4, stride=2)
    for seed in range(5):
        x = rand((2, 3, 5, 6), seed=200 + seed) + 0.5
        gram = feature_map_gram(x, w, stride=2, transposed=True)
        r2 = upsampled_input_correlations(x, [4, 4], 2).square().sum()
        bound = conv_similarity_matrix(w, "cross", stride=2, transposed=True) * r2
        off = ~torch.eye(4, dtype=torch.bool)
        assert bool((gram.square()[off] <= bound[off] * (1 + 1e-12)).all())


@pytest.mark.parametrize("transposed", [False, True])
def test_per_channel_bounds_the_gram_for_uncorrelated_channels(transposed):
    r"""Input channels with supports farther apart than the kernel (R_cd = 0 for c != d on the window):
    |<F_i,F_j>|^2 <= T^pc_ij * sum_c ||R_cc||^2 (polyphase R forward, zero-inserted R transposed)."""
    w = rand((3, 4, 3, 3), seed=20)
    for seed in range(5):
        x = torch.zeros(1, 3, 8, 24, dtype=torch.float64)
        for c in range(3):  # channel c lives in columns 8c .. 8c+4: gaps of 4 > k-1 (and > (k-1)/s)
            x[0, c, :, 8 * c : 8 * c + 5] = rand((8, 5), seed=300 + 3 * seed + c)
        if transposed:
            weight, r = w, upsampled_input_correlations(x, [3, 3], 2)
        else:
            weight, r = w.transpose(0, 1), polyphase_input_correlations(x, [3, 3], 2)
        same = torch.eye(3, dtype=torch.bool)
        assert bool((r[..., ~same, :, :] == 0).all()) and bool((r[..., same, :, :] != 0).any())  # the premise
        gram = feature_map_gram(x, weight, stride=2, transposed=transposed)
        bound = conv_similarity_matrix(weight, stride=2, transposed=transposed) * r.square().sum()
        off = ~torch.eye(4, dtype=torch.bool)
        assert bool((gram.square()[off] <= bound[off] * (1 + 1e-12)).all())


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(stride=0), ValueError, "stride must be a positive int or 2 of them"),
        (dict(stride=(2,)), ValueError, "stride must be a positive int or 2 of them"),
        (dict(stride=(2, True)), ValueError, "stride must be a positive int or 2 of them"),
        (dict(stride=2.0), TypeError, "stride must be an int or a sequence of ints"),
        (dict(stride="2"), TypeError, "stride must be an int or a sequence of ints"),
        (dict(transposed="yes"), TypeError, "transposed must be a bool"),
        (dict(transposed=True, groups=4), ValueError, "input channels of the transposed weight"),
    ],
)
def test_rejects_bad_stride_options(kwargs, error, match):
    """A bad stride or transposed flag is refused by the loss and by the table, saying what was expected."""
    with pytest.raises(error, match=match):
        conv_similarity(rand((6, 2, 3, 3)), **kwargs)
    with pytest.raises(error, match=match):
        conv_similarity_matrix(rand((6, 2, 3, 3)), **kwargs)


# --------------------------------------------------------------------------- ConvSimilarity(stride_aware=)


def strided_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 4, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, groups=2)
    ).double()


def test_regulariser_is_stride_one_by_default():
    """Without stride_aware every layer's CS is the paper's stride-1 value, whatever its stride."""
    net = strided_net()
    values = ConvSimilarity(net).per_layer()
    torch.testing.assert_close(values["0"], conv_similarity(net[0].weight))
    torch.testing.assert_close(values["2"], conv_similarity(net[2].weight, groups=2))


def test_stride_aware_regulariser_uses_each_layers_stride():
    """stride_aware=True: each layer with its own stride (and groups); the step descends that loss."""
    net = strided_net()
    reg = ConvSimilarity(net, beta=0.5, stride_aware=True)
    values = reg.per_layer()
    torch.testing.assert_close(values["0"], conv_similarity(net[0].weight, stride=2))
    torch.testing.assert_close(values["2"], conv_similarity(net[2].weight, groups=2))
    assert not torch.allclose(values["0"], conv_similarity(net[0].weight))
    before = reg.step(lr=1e-3)
    torch.testing.assert_close(before, 0.5 * (values["0"] + values["2"]).detach())
    assert reg().item() < before.item() and "stride_aware=True" in repr(reg)


def test_regulariser_rejects_non_bool_stride_aware():
    with pytest.raises(TypeError, match="stride_aware must be a bool"):
        ConvSimilarity(strided_net(), stride_aware=1)
