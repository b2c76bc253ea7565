"""OCNN for strided, even-kernel and transposed convs against the conv operator built as a matrix (float64).

The oracle (tests/oracles_ocnn.py) writes the conv, or the transposed conv, as an explicit matrix on
a periodic domain and measures min(||AA^T - I||_F^2, ||A^T A - I||_F^2) directly. What holds exactly
(see :func:`convsim.penalties.ocnn`) is

    ocnn(W) * n_coarse = min(||AA^T - I||_F^2, ||A^T A - I||_F^2),

with n_coarse the number of positions on the coarse side (the forward conv's outputs, the transposed
conv's inputs). So OCNN is zero exactly when the operator is orthogonal, and tracks the oracle
everywhere else.
"""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import convsim.penalties as penalties_module
from convsim._internal.layers import CONV_TYPES, TRANSPOSED_CONV_TYPES, unwrap
from convsim.penalties import (
    Penalty,
    decov,
    double_soft_orthogonality,
    layer_penalty,
    mutual_coherence,
    ocnn,
    ocnn_existence,
    soft_orthogonality,
    srip,
)
from oracles import rand
from oracles_ocnn import (
    block,
    compose,
    conv_operator,
    conv_transpose_operator,
    domain,
    embed,
    one_tap,
    paraunitary,
    smaller_gram_distance,
    strided_orthogonal,
)

# (weight shape, stride): odd and even kernels, k = s and k = 2s, fat / square / tall, 1-D to 3-D.
# A forward weight is (M, C, *k); the same shapes are read as transposed weights (C_in, C_out, *k).
RANDOM_CASES = [
    ((3, 2, 3), (1,)),
    ((3, 2, 2), (1,)),
    ((3, 2, 4), (2,)),
    ((5, 2, 4), (2,)),
    ((3, 2, 3), (2,)),
    ((3, 2, 6), (3,)),
    ((3, 2, 3, 3), (1, 1)),
    ((4, 1, 2, 2), (2, 2)),
    ((6, 2, 4, 4), (2, 2)),
    ((9, 2, 4, 4), (2, 2)),
    ((3, 2, 3, 4), (1, 2)),
    ((3, 2, 2, 2, 2), (2, 2, 2)),
]


def _id(case):
    shape, stride = case
    return f"{'x'.join(map(str, shape))}-s{''.join(map(str, stride))}"


def _coarse(size, stride):
    return int(np.prod([n // s for n, s in zip(size, stride, strict=True)]))


def oracle(w, stride, transposed=False, groups=1):
    """Smaller-Gram distance of the operator per coarse position (the quantity OCNN must equal)."""
    size = domain(w.shape[2:], stride)
    build = conv_transpose_operator if transposed else conv_operator
    return smaller_gram_distance(build(w, stride, size, groups)) / _coarse(size, stride)


@pytest.mark.parametrize("case", RANDOM_CASES[:3] + RANDOM_CASES[8:9], ids=_id)
def test_oracle_forward_operator_is_the_circular_conv(case):
    """The oracle's forward matrix applied to x is torch's conv of the circularly padded x."""
    shape, stride = case
    w, d = rand(*shape, seed=1), len(stride)
    size = domain(shape[2:], stride)
    x = rand(1, shape[1], *size, seed=2)
    pad = [p for k in reversed(shape[2:]) for p in (0, k - 1)]
    conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}[d]
    expected = conv(nn.functional.pad(x, pad, mode="circular"), w, stride=stride)
    got = conv_operator(w, stride, size) @ x.flatten().numpy()
    np.testing.assert_allclose(got, expected.flatten().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", RANDOM_CASES[:3] + RANDOM_CASES[8:9], ids=_id)
def test_oracle_transposed_operator_is_the_folded_conv_transpose(case):
    """The oracle's transposed matrix applied to x is torch's conv_transpose with its output wrapped mod N."""
    shape, stride = case
    w, d = rand(*shape, seed=3), len(stride)
    size = domain(shape[2:], stride)
    coarse = [n // s for n, s in zip(size, stride, strict=True)]
    x = rand(1, shape[0], *coarse, seed=4)
    conv_t = {1: nn.functional.conv_transpose1d, 2: nn.functional.conv_transpose2d}[d]
    full = conv_t(x, w, stride=stride)[0].numpy()
    folded = np.zeros((shape[1], *size))
    for idx in np.ndindex(*full.shape[1:]):
        folded[(slice(None), *(i % n for i, n in zip(idx, size, strict=True)))] += full[(slice(None), *idx)]
    got = conv_transpose_operator(w, stride, size) @ x.flatten().numpy()
    np.testing.assert_allclose(got, folded.flatten(), rtol=1e-12, atol=1e-12)


def test_compose_is_the_conv_of_the_two_convs():
    """The composed kernel (stride s) equals a strided conv followed by a stride-1 conv on the coarse grid."""
    inner, outer = rand(3, 2, 2, 2, seed=5), rand(4, 3, 2, 3, seed=6)
    x = rand(1, 2, 12, 13, seed=7)
    expected = nn.functional.conv2d(nn.functional.conv2d(x, inner, stride=2), outer)
    w = torch.from_numpy(compose(outer.numpy(), inner.numpy(), (2, 2)))
    torch.testing.assert_close(nn.functional.conv2d(x, w, stride=2), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", RANDOM_CASES, ids=_id)
def test_ocnn_is_the_forward_oracle_per_output_position(case):
    """Random weights: ocnn(W) = min(||AA^T - I||^2, ||A^T A - I||^2) / (number of output positions)."""
    shape, stride = case
    w = rand(*shape, seed=8)
    assert ocnn(w, stride, check="off").item() == pytest.approx(oracle(w, stride), rel=1e-11)


@pytest.mark.parametrize("case", RANDOM_CASES, ids=_id)
def test_ocnn_is_the_transposed_oracle_per_input_position(case):
    """Random transposed weights (C_in, C_out, *k): ocnn = the transposed operator's smaller-Gram distance / inputs."""
    shape, stride = case
    w = rand(*shape, seed=9)
    got = ocnn(w, stride, transposed=True, check="off").item()
    assert got == pytest.approx(oracle(w, stride, transposed=True), rel=1e-11)


def _orthogonal_cases():
    """(name, weight, stride): orthogonal convs, built from 1x1 blocks, block convs and paraunitary factors."""
    cases = [
        ("1d-onetap-k2-s1", one_tap(3, 3, (2,), (1,), 0), (1,)),
        ("1d-paraunitary-k3-s1-fat", paraunitary(2, 3, (3,), 1), (1,)),
        ("1d-k4-s2-square", strided_orthogonal(2, 1, (2,), (2,), 2), (2,)),
        ("1d-k4-s2-fat", strided_orthogonal(3, 2, (2,), (2,), 3), (2,)),
        ("1d-k4-s2-tall", strided_orthogonal(5, 2, (2,), (2,), 4), (2,)),
        ("1d-k6-s3-square", strided_orthogonal(3, 1, (3,), (2,), 5), (3,)),
        ("1d-k3-s2-embedded-block", embed(block(3, 2, (2,), 6), (3,)), (2,)),
        ("1d-k5-s2-embedded-k4", embed(strided_orthogonal(3, 2, (2,), (2,), 7), (5,)), (2,)),
        ("2d-onetap-k2-s1", one_tap(4, 4, (2, 2), (0, 1), 8), (1, 1)),
        ("2d-paraunitary-k3-s1-square", paraunitary(4, 4, (3, 3), 9), (1, 1)),
        ("2d-paraunitary-k2-s1-tall", paraunitary(6, 2, (2, 2), 10), (1, 1)),
        ("2d-block-k2-s2-square", block(4, 1, (2, 2), 11), (2, 2)),
        ("2d-block-k2-s2-fat", block(3, 2, (2, 2), 12), (2, 2)),
        ("2d-block-k2-s2-tall", block(10, 2, (2, 2), 13), (2, 2)),
        ("2d-k4-s2-square", strided_orthogonal(4, 1, (2, 2), (2, 2), 14), (2, 2)),
        ("2d-k4-s2-fat", strided_orthogonal(6, 2, (2, 2), (2, 2), 15), (2, 2)),
        ("2d-k4-s2-tall", strided_orthogonal(9, 2, (2, 2), (2, 2), 16), (2, 2)),
        ("2d-k24-s12-fat", strided_orthogonal(3, 2, (1, 2), (2, 2), 17), (1, 2)),
        ("3d-k4-s2-square", strided_orthogonal(8, 1, (2, 2, 2), (2, 2, 2), 18), (2, 2, 2)),
    ]
    return [pytest.param(torch.from_numpy(w), stride, id=name) for name, w, stride in cases]


ORTHOGONAL = _orthogonal_cases()
K2S = [p for p in ORTHOGONAL if "-k4-" in p.id or "-k6-" in p.id]


@pytest.mark.parametrize("w,stride", K2S)
def test_k2s_constructions_use_every_tap(w, stride):
    """The k = 2s orthogonal convs are not a 1x1 or k = s conv in disguise: every tap holds a nonzero entry."""
    assert tuple(w.shape[2:]) == tuple(2 * s for s in stride)
    assert (w.abs().sum(dim=(0, 1)) > 1e-3).all()


@pytest.mark.parametrize("w,stride", ORTHOGONAL)
def test_constructed_shapes_are_declared_possible(w, stride):
    """ocnn_existence raises no error for a shape that has an orthogonal conv (forward or read as transposed)."""
    for transposed in (False, True):
        assert all(level != "error" for level, _ in ocnn_existence(w.shape, stride, transposed=transposed))


@pytest.mark.parametrize("w,stride", ORTHOGONAL)
def test_orthogonal_conv_reads_zero(w, stride):
    """An orthogonal forward conv: the oracle reads 0 and so does OCNN, to rounding."""
    assert oracle(w, stride) < 1e-24
    assert abs(ocnn(w, stride, check="off").item()) < 1e-13


@pytest.mark.parametrize("w,stride", ORTHOGONAL)
def test_orthogonal_transposed_conv_reads_zero(w, stride):
    """The same weights as transposed convs (the adjoint operators): the oracle and OCNN read 0."""
    assert oracle(w, stride, transposed=True) < 1e-24
    assert abs(ocnn(w, stride, transposed=True, check="off").item()) < 1e-13


@pytest.mark.parametrize("w,stride", [p for p in ORTHOGONAL if p.id.startswith(("1d-k4", "2d-k4"))])
@pytest.mark.parametrize("transposed", [False, True], ids=["forward", "transposed"])
def test_perturbed_orthogonal_conv_is_positive_and_tracked(w, stride, transposed):
    """A small perturbation makes the operator non-orthogonal: OCNN > 0 and still equals the oracle."""
    v = w + 1e-3 * rand(*w.shape, seed=19)
    ref = oracle(v, stride, transposed=transposed)
    got = ocnn(v, stride, transposed=transposed, check="off").item()
    assert ref > 1e-8 and got == pytest.approx(ref, rel=1e-9)  # the tall case subtracts delta: ~1e-12 measured


@pytest.mark.parametrize(
    "shape,stride,transposed",
    [
        ((8, 2, 1, 1), (2, 2), False),
        ((3, 1, 1, 4), (2, 2), False),  # anisotropic: deel-lip's M > C*prod(k) misses it
        ((5, 1, 2), (3,), False),
        ((8, 2, 1, 1), (2, 2), True),
        ((3, 1, 1, 4), (2, 2), True),
        ((5, 1, 2), (3,), True),
    ],
)
def test_existence_errors_match_the_operator_rank(shape, stride, transposed):
    """An impossible shape has a rank-deficient operator on the side the message names (random weight)."""
    (error,) = [msg for level, msg in ocnn_existence(shape, stride, transposed=transposed) if level == "error"]
    w = rand(*shape, seed=20)
    size = domain(shape[2:], stride)
    op = (conv_transpose_operator if transposed else conv_operator)(w, stride, size)
    rank = np.linalg.matrix_rank(op)
    assert rank < (op.shape[0] if "no row-orthogonal" in error else op.shape[1])
    assert ("transposed" in error) == transposed


@pytest.mark.parametrize(
    "fn", [lambda w: ocnn(w, 2, check="off"), lambda w: ocnn(w, (1, 2), transposed=True, check="off")]
)
def test_gradcheck_even_kernels(fn):
    """Autograd gradients match finite differences for even kernels, strided and transposed."""
    w = rand(2, 3, 2, 4, seed=21).requires_grad_()
    assert torch.autograd.gradcheck(fn, (w,))


def test_ocnn_rejects_non_bool_transposed():
    """transposed is a flag."""
    with pytest.raises(TypeError, match="transposed"):
        ocnn(rand(2, 2, 3, 3), transposed="yes", check="off")


def regrouped_filters(w, groups):
    """A transposed weight (C_in, C_out/g, *k) as output filters (C_out, C_in/g, *k), by explicit loops."""
    c_in, og = w.shape[0], w.shape[1]
    cg = c_in // groups
    out = torch.zeros(og * groups, cg, *w.shape[2:], dtype=w.dtype)
    for c in range(c_in):
        for o in range(og):
            out[(c // cg) * og + o, c % cg] = w[c, o]
    return out


FILTER_PENALTIES = {"so": soft_orthogonality, "dso": double_soft_orthogonality, "mc": mutual_coherence, "srip": srip}


@pytest.mark.parametrize("name", list(FILTER_PENALTIES))
def test_layer_penalty_of_a_transposed_layer_acts_on_its_output_filters(name):
    """SO/DSO/MC/SRIP of a ConvTranspose = the function summed over groups of its regrouped output filters."""
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False).double()
    filt = regrouped_filters(layer.weight.detach(), 2)

    def opts():  # srip draws its start from the generator: the same seed on both sides
        return {"iterations": 3, "generator": torch.Generator().manual_seed(0)} if name == "srip" else {}

    ref_opts = opts()
    ref = sum(FILTER_PENALTIES[name](filt[g * 3 : (g + 1) * 3], **ref_opts).item() for g in range(2))
    assert layer_penalty(layer, name, **opts()).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize(
    "layer",
    [
        nn.ConvTranspose2d(4, 6, 4, stride=2, groups=2, bias=False),
        nn.ConvTranspose1d(6, 4, 4, stride=2, padding=1, groups=2, bias=False),
        nn.Conv2d(4, 6, 4, stride=2, groups=2, bias=False),
        nn.Conv1d(2, 6, 3, stride=2, bias=False),
    ],
    ids=["convT2d-g2", "convT1d-g2-pad1", "conv2d-g2", "conv1d-tall"],
)
def test_layer_penalty_ocnn_is_the_whole_layer_oracle(layer):
    """Layer OCNN (groups summed, own stride) = its whole operator's smaller-Gram distance per coarse position."""
    layer = layer.double()
    w, stride = layer.weight.detach(), layer.stride
    transposed = isinstance(layer, TRANSPOSED_CONV_TYPES)
    ref = oracle(w, stride, transposed=transposed, groups=layer.groups)
    assert layer_penalty(layer, "ocnn", check="off").item() == pytest.approx(ref, rel=1e-11)


def test_layer_penalty_rejects_decov():
    """decov is about activations, not a layer's weight."""
    with pytest.raises(ValueError, match="must be one of"):
        layer_penalty(nn.Conv2d(2, 2, 3), "decov")


def select_with_transposed(model, include=None, exclude=None, min_out_per_group=2):
    """Stand-in for the planned selection rule (forward and transposed convs) until _internal.layers has it."""
    chosen = []
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, CONV_TYPES + TRANSPOSED_CONV_TYPES):
            continue
        if module.out_channels // module.groups < min_out_per_group:
            continue
        if (include is not None and not include(name, module)) or (exclude is not None and exclude(name, module)):
            continue
        chosen.append((name, module))
    return chosen


def decoder():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    ).double()


@pytest.fixture
def with_transposed(monkeypatch):
    monkeypatch.setattr(penalties_module, "select_conv_layers", select_with_transposed)


@pytest.mark.parametrize("name", ["so", "dso", "mc"])
def test_penalty_over_transposed_layers_is_beta_times_sum(with_transposed, name):
    """Once transposed convs are selected, reg() = beta x sum of layer_penalty over them and the forward convs."""
    net = decoder()
    reg = Penalty(net, name, beta=0.5)
    assert reg.layers == ["0", "2", "4"]
    ref = sum(layer_penalty(net[i], name).item() for i in (0, 2, 4))
    assert reg().item() == pytest.approx(0.5 * ref, rel=1e-12)


def test_penalty_ocnn_over_transposed_layers_is_the_oracle(with_transposed):
    """Penalty('ocnn') on a decoder = beta x sum over layers of each operator's oracle (own stride, groups)."""
    net = decoder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = Penalty(net, "ocnn", beta=2.0)
    ref = sum(oracle(net[i].weight.detach(), net[i].stride, transposed=i < 4, groups=net[i].groups) for i in (0, 2, 4))
    assert reg().item() == pytest.approx(2.0 * ref, rel=1e-11)


def test_penalty_ocnn_existence_reads_a_transposed_layer_as_transposed(with_transposed):
    """check='error': a 2 -> 8 1x1 stride-2 upsampler can be an isometry; 8 -> 2 can be neither kind."""
    Penalty(nn.Sequential(nn.ConvTranspose2d(2, 8, 1, stride=2)), "ocnn", check="error")
    with pytest.raises(ValueError, match="layer '0': no column-orthogonal transposed conv"):
        Penalty(nn.Sequential(nn.ConvTranspose2d(8, 2, 1, stride=2)), "ocnn", check="error")


def test_penalty_decov_over_transposed_layers(with_transposed):
    """decov hooks a transposed layer's output like a forward conv's."""
    net = decoder()
    x = rand(2, 4, 3, 3, seed=22)
    with Penalty(net, "decov") as reg:
        net(x)
        val = reg()
    h0 = net[0](x)
    h2 = net[2](net[1](h0))
    ref = decov(h0) + decov(h2) + decov(net[4](net[3](h2)))
    assert val.item() == pytest.approx(ref.item(), rel=1e-12)
