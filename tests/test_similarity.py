"""Tests of the CS core (convsim.similarity) against the float64 loop oracles in tests/oracles.py."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch
from torch import nn

import oracles
from convsim.similarity import (
    ConvSimilarity,
    conv_similarity,
    conv_similarity_matrix,
    cs_initialize,
    normalize_kernels,
    num_pairs,
)

PAIRS = ("all", "adjacent")
CHANNELS = ("per_channel", "summed", "cross")
VARIANTS = list(itertools.product(PAIRS, CHANNELS))
# 1-D, 2-D square, 2-D rectangular, 3-D, 1x1: shapes (M, C, *kernel)
SHAPES = [(4, 3, 3), (5, 3, 3, 3), (4, 2, 2, 3), (3, 2, 2, 3, 2), (5, 4, 1, 1)]


def rand(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_weight():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((6, 4, 3, 3)))


# --------------------------------------------------------------------------- the oracle itself


def test_oracle_xcorr_matches_scipy_orientation():
    a, b = rand((3, 2), 1).numpy(), rand((3, 2), 2).numpy()
    # scipy: correlate(b, a)[l + (na - 1)] = sum_n b[n + l] a[n], the same sliding inner product
    np.testing.assert_allclose(oracles.xcorr_full(a, b), scipy.signal.correlate(b, a, mode="full"), rtol=1e-12)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_loop_oracle(shape, pairs, channels, normalize, reduction):
    w = rand(shape)
    got = conv_similarity(w, pairs=pairs, channels=channels, normalize=normalize, reduction=reduction)
    want = oracles.cs_loss(w.numpy(), pairs, channels, normalize, reduction)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_groups_match_loop_oracle(groups, pairs, channels):
    w = rand((6, 2, 3, 3), seed=groups)
    got = conv_similarity(w, pairs=pairs, channels=channels, groups=groups, reduction="mean")
    want = oracles.cs_loss(w.numpy(), pairs, channels, reduction="mean", groups=groups)
    assert got.item() == pytest.approx(want, rel=1e-10)


# --------------------------------------------------------------------------- spec §6.6 reference values
# The spec publishes, to 10 decimals, the CS of W = default_rng(0).standard_normal((6, 4, 3, 3)), derived by
# brute-force float64 loops. Each published number is re-derived here from the definition (spec §5.1-5.2)
# with scipy's direct full cross-correlation, which shares no code with convsim or tests/oracles.py; a
# number must match its derivation (to the rounding of the 10 printed decimals) before convsim is
# checked against it.

PRINTED = 1e-10  # 10 printed decimals: rounding <= 5e-11, float64 summation error ~1e-12 relative


def derive_reference(w: np.ndarray, pairs: str, channels: str, normalize: bool = False, ordered: bool = False) -> float:
    r"""CS by the definition: the sum over the pairs (i, j) of :math:`T_{ij}` (spec §5.1), built from
    :math:`(a \star b)[l] = \sum_n a[n]\, b[n+l]` at every lag."""
    w = np.asarray(w, dtype=np.float64)
    if normalize:  # every output kernel to unit Frobenius norm (eps = 0)
        w = w / np.sqrt((w**2).sum(axis=tuple(range(1, w.ndim)), keepdims=True))
    m, c = w.shape[:2]

    def corr(i, j, a, b):  # K_ia star K_jb at every lag; scipy's correlate(x, y)[l] = sum_n x[n + l] y[n]
        return scipy.signal.correlate(w[j, b], w[i, a], mode="full", method="direct")

    def term(i, j):
        if channels == "per_channel":
            return sum((corr(i, j, a, a) ** 2).sum() for a in range(c))
        if channels == "summed":
            return (sum(corr(i, j, a, a) for a in range(c)) ** 2).sum()
        return sum((corr(i, j, a, b) ** 2).sum() for a in range(c) for b in range(c))

    if ordered:
        plist = [(i, j) for i in range(m) for j in range(m) if i != j]
    elif pairs == "all":
        plist = list(itertools.combinations(range(m), 2))
    else:
        plist = [(i, i + 1) for i in range(m - 1)]
    return float(sum(term(i, j) for i, j in plist))


def test_reference_weight_generator_stream():
    np.testing.assert_allclose(reference_weight()[0, 0, 0].numpy(), [0.12573022, -0.13210486, 0.64042265], atol=1e-8)


@pytest.mark.parametrize(
    "pairs,channels,value",
    [
        ("adjacent", "per_channel", 1539.0311239908),
        ("adjacent", "summed", 1517.3786829461),
        ("adjacent", "cross", 5875.5326326594),
        ("all", "per_channel", 4278.5657771597),
        ("all", "summed", 4312.2404925177),
        ("all", "cross", 16409.7406188660),
    ],
)
def test_spec_reference_values(pairs, channels, value):
    w = reference_weight()
    assert derive_reference(w.numpy(), pairs, channels) == pytest.approx(value, abs=PRINTED)
    assert conv_similarity(w, pairs=pairs, channels=channels).item() == pytest.approx(value, abs=2 * PRINTED)


@pytest.mark.parametrize("pairs,value", [("adjacent", 1.3268921782), ("all", 3.9059657769)])
def test_spec_reference_values_normalized(pairs, value):
    w = reference_weight()
    assert derive_reference(w.numpy(), pairs, "per_channel", normalize=True) == pytest.approx(value, abs=PRINTED)
    assert conv_similarity(w, pairs=pairs, normalize=True).item() == pytest.approx(value, abs=PRINTED)


def test_spec_reference_ordered_summed():
    """Ordered pairs (i != j) sum to twice the unordered "all" value: the matrix's total."""
    w, value = reference_weight(), 8624.4809850355
    assert derive_reference(w.numpy(), "all", "summed", ordered=True) == pytest.approx(value, abs=PRINTED)
    assert conv_similarity_matrix(w, "summed").sum().item() == pytest.approx(value, abs=10 * PRINTED)


@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (9, 4, 2, 5), (10, 6, 5), (6, 3, 3, 2, 3), (7, 5, 5, 5)], ids=str)
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_fast_path_matches_direct_conv_route(shape, pairs, channels):
    w = rand(shape, seed=3)
    want = oracles.direct_loss(w, pairs, channels)
    torch.testing.assert_close(conv_similarity(w, pairs=pairs, channels=channels), want, rtol=1e-11, atol=0)


@pytest.mark.parametrize("shape", [(6, 9, 3, 3), (9, 3, 3, 3)], ids=str)
def test_summed_matches_direct_with_more_channels_or_more_filters(shape):
    w = rand(shape, seed=4)
    torch.testing.assert_close(
        conv_similarity(w, channels="summed"), oracles.direct_loss(w, "all", "summed"), rtol=1e-11, atol=0
    )


@pytest.mark.parametrize("pairs", PAIRS)
def test_summed_vanishes_for_an_orthogonal_convolution_in_float32(pairs):
    # Spec §4.4: centre-delta kernels with orthonormal rows of the M x C mixing matrix cancel across channels.
    q, _ = torch.linalg.qr(rand((8, 8), seed=33))
    w = torch.zeros(6, 8, 3, 3)
    w[:, :, 1, 1] = q[:6].float()
    assert conv_similarity(w, pairs=pairs, channels="summed").abs().item() < 1e-10
    assert conv_similarity(w, pairs=pairs, channels="per_channel").item() > 0.01


def _numpy_rfft_cs(w: np.ndarray, sizes, column_weights=True) -> float:
    """All-pairs per-channel CS from numpy's rfftn at any DFT size >= 2k-1 (spec §6.4)."""
    power = np.abs(np.fft.rfftn(w, s=sizes, axes=(2, 3))) ** 2
    p2 = sizes[1]
    cols = np.full(p2 // 2 + 1, 2.0 if column_weights else 1.0)
    if column_weights:
        cols[0] = 1.0
        if p2 % 2 == 0:
            cols[-1] = 1.0
    return float(((power.sum(0) ** 2 - (power**2).sum(0)) * cols).sum() / (2 * np.prod(sizes)))


@pytest.mark.parametrize("sizes", [(5, 5), (6, 6), (5, 8), (7, 6)])
def test_rfft_with_column_weights_matches_oracle(sizes):
    w = rand((5, 3, 3, 3), seed=5).numpy()
    assert _numpy_rfft_cs(w, sizes) == pytest.approx(oracles.cs_loss(w), rel=1e-11)


def test_rfft_without_column_weights_is_wrong():
    w = rand((5, 3, 3, 3), seed=5).numpy()
    assert abs(_numpy_rfft_cs(w, (5, 5), column_weights=False) - oracles.cs_loss(w)) > 1e-3 * oracles.cs_loss(w)


def test_benchmark_rfft2_baseline_is_the_same_loss(monkeypatch):
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))  # as when the script runs: it imports machine_load
    spec = importlib.util.spec_from_file_location("bench_similarity", folder / "bench_similarity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    w = rand((7, 4, 3, 2), seed=6)
    torch.testing.assert_close(bench.rfft2_baseline(w), conv_similarity(w), rtol=1e-11, atol=0)


# --------------------------------------------------------------------------- matrix


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("normalize", [False, True])
def test_matrix_matches_loop_oracle(channels, normalize):
    w = rand((5, 3, 2, 3), seed=7)
    want = torch.from_numpy(oracles.cs_matrix(w.numpy(), channels, normalize))
    torch.testing.assert_close(conv_similarity_matrix(w, channels, normalize=normalize), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels", CHANNELS)
def test_matrix_sums_to_twice_all_pairs_loss(channels):
    w = rand((7, 4, 3, 3), seed=8)
    torch.testing.assert_close(conv_similarity_matrix(w, channels).sum(), 2 * conv_similarity(w, channels=channels))


@pytest.mark.parametrize("channels", CHANNELS)
def test_matrix_first_off_diagonal_is_adjacent_loss(channels):
    w = rand((7, 4, 3), seed=9)
    mat = conv_similarity_matrix(w, channels)
    torch.testing.assert_close(torch.diagonal(mat, 1).sum(), conv_similarity(w, pairs="adjacent", channels=channels))


@pytest.mark.parametrize("channels", CHANNELS)
def test_matrix_is_symmetric_with_zero_diagonal(channels):
    mat = conv_similarity_matrix(rand((6, 3, 3, 3), seed=10), channels)
    assert mat.shape == (6, 6)
    torch.testing.assert_close(mat, mat.T)
    assert torch.all(torch.diagonal(mat) == 0)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(pairs, channels, normalize):
    w = rand((4, 2, 3, 2), seed=11).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: conv_similarity(x, pairs=pairs, channels=channels, normalize=normalize), (w,)
    )


@pytest.mark.parametrize(
    "shape,groups", [((4, 2, 3), 1), ((3, 2, 2, 2, 2), 1), ((6, 2, 2, 2), 2), ((4, 3, 1, 1), 1)], ids=str
)
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_gradcheck_other_shapes(shape, groups, pairs, channels):
    w = rand(shape, seed=12).requires_grad_()
    fn = lambda x: conv_similarity(x, pairs=pairs, channels=channels, groups=groups, reduction="mean")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("shape", [(4, 2, 3, 3), (3, 2, 2, 3)], ids=str)
def test_released_definition_gradient_is_the_closed_form(shape):
    w = rand(shape, seed=13).requires_grad_()
    (grad,) = torch.autograd.grad(conv_similarity(w, pairs="adjacent", channels="per_channel"), w)
    np.testing.assert_allclose(grad.numpy(), oracles.released_gradient(w.detach().numpy()), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_gradient_scales_with_upstream_grad(pairs, channels):
    w = rand((5, 3, 3, 3), seed=14).requires_grad_()
    (g1,) = torch.autograd.grad(conv_similarity(w, pairs=pairs, channels=channels), w)
    (g3,) = torch.autograd.grad(-3.0 * conv_similarity(w, pairs=pairs, channels=channels), w)
    torch.testing.assert_close(g3, -3.0 * g1)


def test_weight_without_grad_gives_plain_value():
    w = rand((5, 3, 3, 3), seed=15)
    out = conv_similarity(w)
    assert out.grad_fn is None and out.dim() == 0 and out.dtype == w.dtype


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("channels", CHANNELS)
def test_all_pairs_invariant_to_filter_permutation(channels):
    w = rand((7, 3, 3, 3), seed=16)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(conv_similarity(w[perm], channels=channels), conv_similarity(w, channels=channels))


def test_adjacent_pairs_depend_on_filter_order():
    w = rand((7, 3, 3, 3), seed=16)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    a, b = conv_similarity(w, pairs="adjacent"), conv_similarity(w[perm], pairs="adjacent")
    assert abs(a - b) > 1e-3 * a


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_raw_loss_scales_as_alpha_to_the_fourth(pairs, channels):
    w = rand((5, 3, 3, 3), seed=17)
    base = conv_similarity(w, pairs=pairs, channels=channels)
    torch.testing.assert_close(conv_similarity(-1.7 * w, pairs=pairs, channels=channels), 1.7**4 * base)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_normalize_is_invariant_to_per_filter_scale(pairs, channels):
    w = rand((5, 3, 3, 3), seed=18)
    scale = torch.tensor([0.01, -3.0, 250.0, 1.0, -0.5], dtype=w.dtype).view(-1, 1, 1, 1)
    a = conv_similarity(w, pairs=pairs, channels=channels, normalize=True)
    torch.testing.assert_close(conv_similarity(w * scale, pairs=pairs, channels=channels, normalize=True), a)


@pytest.mark.parametrize("shape", [(4, 2, 3, 3), (4, 2, 3), (3, 2, 2, 3)], ids=str)
@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("dilation", [2, 3])
def test_dilated_zero_stuffed_kernel_leaves_value_unchanged(shape, pairs, channels, dilation):
    w = rand(shape, seed=19)
    stuffed = torch.from_numpy(oracles.dilate(w.numpy(), dilation))
    torch.testing.assert_close(
        conv_similarity(stuffed, pairs=pairs, channels=channels), conv_similarity(w, pairs=pairs, channels=channels)
    )


# --------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("normalize", [False, True])
def test_single_filter_gives_zero(pairs, channels, normalize):
    w = rand((1, 3, 3, 3), seed=20).requires_grad_()
    out = conv_similarity(w, pairs=pairs, channels=channels, normalize=normalize)
    assert out.item() == 0.0
    out.backward()
    assert torch.all(w.grad == 0)


def test_one_by_one_kernels_follow_the_released_formula():
    w = rand((6, 4, 1, 1), seed=21)
    v = w[:, :, 0, 0]
    want = ((v[:-1] * v[1:]) ** 2).sum()
    torch.testing.assert_close(conv_similarity(w, pairs="adjacent", channels="per_channel"), want)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_filters_with_normalize_are_finite(pairs, channels, dtype):
    w = rand((5, 3, 3, 3), seed=22, dtype=dtype)
    w[1] = 0
    w[2] = 0
    w.requires_grad_()
    out = conv_similarity(w, pairs=pairs, channels=channels, normalize=True)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("channels", CHANNELS)
def test_zero_filter_with_normalize_does_not_shift_the_value(channels):
    w = rand((5, 3, 3, 3), seed=23)
    with_zero = torch.cat([w[:2], torch.zeros_like(w[:1]), w[2:]])
    torch.testing.assert_close(
        conv_similarity(with_zero, channels=channels, normalize=True),
        conv_similarity(w, channels=channels, normalize=True),
    )


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_normalize_leaves_unit_norm_filters_unchanged(pairs, channels):
    w = normalize_kernels(rand((5, 3, 3, 3), seed=24))
    torch.testing.assert_close(
        conv_similarity(w, pairs=pairs, channels=channels, normalize=True),
        conv_similarity(w, pairs=pairs, channels=channels),
        rtol=1e-13,
        atol=0,
    )


def test_all_zero_weight_gives_zero_value_and_gradient():
    w = torch.zeros(4, 3, 3, 3, requires_grad=True)
    out = conv_similarity(w, normalize=True)
    out.backward()
    assert out.item() == 0.0 and torch.all(w.grad == 0)


# --------------------------------------------------------------------------- dtype, device, memory layout


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_float32_agrees_with_float64(pairs, channels):
    w = rand((12, 6, 3, 3), seed=25)
    low = conv_similarity(w.float(), pairs=pairs, channels=channels)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(conv_similarity(w, pairs=pairs, channels=channels).item(), rel=1e-5)


def test_float32_gradient_agrees_with_float64():
    w = rand((12, 6, 3, 3), seed=26)
    w32, w64 = w.float().requires_grad_(), w.clone().requires_grad_()
    conv_similarity(w32).backward()
    conv_similarity(w64).backward()
    torch.testing.assert_close(w32.grad.double(), w64.grad, rtol=1e-4, atol=1e-4 * w64.grad.abs().max().item())


def test_autocast_does_not_lower_precision():
    w = rand((8, 4, 3, 3), seed=27, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = conv_similarity(w)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, conv_similarity(w))


def test_channels_last_weight_gives_the_same_value():
    w = rand((8, 4, 3, 3), seed=28)
    torch.testing.assert_close(conv_similarity(w.to(memory_format=torch.channels_last)), conv_similarity(w))


def test_first_call_under_inference_mode_does_not_break_training():
    # The cached DFT basis must not be an inference tensor (autograd saves it).
    w = rand((5, 2, 4, 6), seed=29)
    with torch.inference_mode():
        a = conv_similarity(w, channels="summed")
    w.requires_grad_()
    b = conv_similarity(w, channels="summed")
    b.backward()
    torch.testing.assert_close(a, b.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_cuda_agrees_with_cpu(pairs, channels):
    w = rand((9, 5, 3, 3), seed=30).requires_grad_()
    wc = w.detach().cuda().requires_grad_()
    a = conv_similarity(w, pairs=pairs, channels=channels)
    b = conv_similarity(wc, pairs=pairs, channels=channels)
    a.backward()
    b.backward()
    torch.testing.assert_close(b.cpu(), a)
    torch.testing.assert_close(wc.grad.cpu(), w.grad)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(pairs="neighbours"), ValueError, "pairs must be one of"),
        (dict(channels="sum"), ValueError, "channels must be one of"),
        (dict(reduction="max"), ValueError, "reduction must be one of"),
        (dict(groups=4), ValueError, "must be >= 1 and divide"),
        (dict(groups=0), ValueError, "must be >= 1 and divide"),
        (dict(groups=2.0), TypeError, "groups must be an int"),
        (dict(normalize="yes"), TypeError, "normalize must be a bool"),
    ],
)
def test_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        conv_similarity(rand((6, 2, 3, 3)), **kwargs)


@pytest.mark.parametrize("shape", [(6,), (6, 9)], ids=str)
def test_rejects_weight_with_fewer_than_three_dims(shape):
    with pytest.raises(ValueError, match=r"expected a conv weight of shape \(M, C, \*kernel\)"):
        conv_similarity(torch.zeros(shape))


@pytest.mark.parametrize("weight", [np.zeros((2, 2, 3)), torch.zeros(2, 2, 3, dtype=torch.int64)], ids=["numpy", "int"])
def test_rejects_non_float_tensor(weight):
    with pytest.raises(TypeError, match="weight must be"):
        conv_similarity(weight)


def test_matrix_rejects_bad_channels():
    with pytest.raises(ValueError, match="channels must be one of"):
        conv_similarity_matrix(rand((4, 2, 3)), "all")


def test_mean_reduction_divides_by_num_pairs():
    w = rand((6, 3, 3, 3), seed=31)
    for pairs in PAIRS:
        torch.testing.assert_close(
            conv_similarity(w, pairs=pairs, reduction="mean", groups=2),
            conv_similarity(w, pairs=pairs, groups=2) / num_pairs(6, pairs, groups=2),
        )


@pytest.mark.parametrize(
    "args,want",
    [((6,), 15), ((6, "adjacent"), 5), ((6, "all", 2), 6), ((6, "adjacent", 3), 3), ((1,), 0), ((4, "adjacent", 4), 0)],
)
def test_num_pairs(args, want):
    assert num_pairs(*args) == want


@pytest.mark.parametrize("args,error", [((6, "some"), ValueError), ((6, "all", 4), ValueError), ((6.0,), TypeError)])
def test_num_pairs_rejects_bad_arguments(args, error):
    with pytest.raises(error):
        num_pairs(*args)


def test_normalize_kernels_gives_unit_norms_and_keeps_zero_kernels():
    w = rand((4, 3, 2, 2), seed=32)
    w[2] = 0
    out = normalize_kernels(w)
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=w.dtype))


# --------------------------------------------------------------------------- model level


class _Net(nn.Module):
    """Stem, BN, a block with a 1x1 shortcut, a grouped conv, a depthwise conv, a 1-filter conv, Conv1d, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(4, 8, 1, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.single = nn.Conv2d(8, 1, 1)
        self.seq = nn.Conv1d(2, 3, 5)
        self.fc = nn.Linear(8, 2)


def _net(seed=0):
    torch.manual_seed(seed)
    return _Net().double()


def test_default_selection_is_every_conv_with_two_filters_per_group():
    assert ConvSimilarity(_net()).layers == ["stem", "conv", "shortcut", "grouped", "seq"]


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_model_loss_is_beta_times_sum_of_layer_values(pairs, channels):
    net = _net()
    reg = ConvSimilarity(net, beta=0.3, pairs=pairs, channels=channels, reduction="mean")
    want = sum(
        oracles.cs_loss(m.weight.detach().numpy(), pairs, channels, reduction="mean", groups=m.groups)
        for m in (net.stem, net.conv, net.shortcut, net.grouped, net.seq)
    )
    assert reg().item() == pytest.approx(0.3 * want, rel=1e-10)


def test_per_layer_values_match_conv_similarity():
    net = _net()
    reg = ConvSimilarity(net, pairs="adjacent", normalize=True)
    values = reg.per_layer()
    assert list(values) == reg.layers
    for name, value in values.items():
        module = dict(net.named_modules())[name]
        want = conv_similarity(module.weight, pairs="adjacent", normalize=True, groups=module.groups)
        torch.testing.assert_close(value, want)


def test_grouped_conv_is_paired_within_groups():
    net = _net()
    value = ConvSimilarity(net, include=lambda n, m: n == "grouped")()
    w = net.grouped.weight
    torch.testing.assert_close(value, conv_similarity(w[:4]) + conv_similarity(w[4:]))
    assert abs(value - conv_similarity(w)) > 1e-6 * value


def test_include_and_exclude_predicates_select_layers():
    net = _net()
    reg = ConvSimilarity(
        net, include=lambda n, m: isinstance(m, nn.Conv2d), exclude=lambda n, m: m.kernel_size == (1, 1)
    )
    assert reg.layers == ["stem", "conv", "grouped"]


def test_no_selectable_layer_raises():
    with pytest.raises(ValueError, match="no conv layer"):
        ConvSimilarity(nn.Sequential(nn.Conv2d(3, 1, 3), nn.Linear(4, 4)))


def test_regulariser_has_no_parameters_of_its_own():
    reg = ConvSimilarity(_net())
    assert list(reg.parameters()) == [] and reg.state_dict() == {}


def test_regulariser_gradient_reaches_only_selected_conv_weights():
    net = _net()
    ConvSimilarity(net, beta=0.5)().backward()
    assert net.stem.weight.grad is not None and net.seq.weight.grad is not None
    assert net.conv.bias.grad is None and net.depthwise.weight.grad is None and net.fc.weight.grad is None


def test_regulariser_rejects_bad_options():
    with pytest.raises(ValueError, match="pairs must be one of"):
        ConvSimilarity(_net(), pairs="neighbours")
    with pytest.raises(TypeError, match="beta must be a number"):
        ConvSimilarity(_net(), beta="0.1")


# --------------------------------------------------------------------------- cs_initialize


def test_cs_initialize_lowers_cs():
    net = _net()
    before = ConvSimilarity(net)().item()
    history = cs_initialize(net, iterations=30, lr=1e-2)
    assert ConvSimilarity(net)().item() < 0.5 * before
    assert history[0] == pytest.approx(before) and history[-1] < history[0]


def test_cs_initialize_returns_one_value_per_iteration():
    assert len(cs_initialize(_net(), iterations=7)) == 7
    assert cs_initialize(_net(), iterations=0) == []


def test_cs_initialize_touches_only_selected_conv_weights():
    net = _net()
    net.bn.running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cs_initialize(net, iterations=5, lr=1e-2)
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"stem.weight", "conv.weight", "shortcut.weight", "grouped.weight", "seq.weight"}
    assert all(p.grad is None for p in net.parameters())


def test_cs_initialize_with_training_optimizer_keeps_momentum_state():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    cs_initialize(net, iterations=3, optimizer=opt)
    assert "momentum_buffer" in opt.state[net.stem.weight]
    assert opt.state[net.stem.weight]["momentum_buffer"].abs().sum() > 0
    assert net.fc.weight not in opt.state and net.conv.bias not in opt.state


def test_cs_initialize_passes_options_to_the_regulariser():
    net = _net()
    want = conv_similarity(net.conv.weight, pairs="adjacent", normalize=True).item()
    history = cs_initialize(net, iterations=1, pairs="adjacent", normalize=True, include=lambda n, m: n == "conv")
    assert history == [pytest.approx(want, rel=1e-12)]
    assert torch.equal(net.stem.weight, _net().stem.weight)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(iterations=-1), ValueError, "iterations must be >= 0"),
        (dict(iterations=2.5), TypeError, "iterations must be an int"),
        (dict(lr=0.0), ValueError, "lr must be > 0"),
        (dict(optimizer="adam"), TypeError, "optimizer must be"),
    ],
)
def test_cs_initialize_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        cs_initialize(_net(), **kwargs)
