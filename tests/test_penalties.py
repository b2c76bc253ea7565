"""Baseline penalties against their formulas written as float64 loops."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from convsim.penalties import (
    PENALTIES,
    Penalty,
    decov,
    double_soft_orthogonality,
    mutual_coherence,
    ocnn,
    ocnn_existence,
    soft_orthogonality,
    srip,
)
from convsim.similarity import conv_similarity
from oracles import rand


def gram_loop(w2, side):
    """(M, M) rows Gram ("rows") or (D, D) columns Gram ("cols") by explicit loops."""
    a = w2 if side == "rows" else w2.T
    n = a.shape[0]
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = sum(a[i, k] * a[j, k] for k in range(a.shape[1]))
    return g


def small_gram_minus_eye(w):
    w2 = w.reshape(w.shape[0], -1).numpy()
    g = gram_loop(w2, "rows" if w2.shape[0] <= w2.shape[1] else "cols")
    return g - np.eye(g.shape[0])


# shapes with M < D, M > D (1x1 conv) and M = D
SHAPES = [(4, 3, 3, 3), (6, 2, 1, 1), (4, 1, 2, 2), (3, 2, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_soft_orthogonality_matches_loop(shape):
    """SO = sum of squared entries of (smaller Gram - I)."""
    w = rand(*shape)
    assert soft_orthogonality(w).item() == pytest.approx((small_gram_minus_eye(w) ** 2).sum(), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_double_soft_orthogonality_matches_both_grams(shape):
    """DSO = ||W^T W - I_D||^2 + ||W W^T - I_M||^2 with both Grams built by loops."""
    w = rand(*shape, seed=1)
    w2 = w.reshape(w.shape[0], -1).numpy()
    rows, cols = gram_loop(w2, "rows"), gram_loop(w2, "cols")
    ref = ((rows - np.eye(len(rows))) ** 2).sum() + ((cols - np.eye(len(cols))) ** 2).sum()
    assert double_soft_orthogonality(w).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_mutual_coherence_matches_loop(shape):
    """MC = the largest |entry| of (smaller Gram - I)."""
    w = rand(*shape, seed=2)
    assert mutual_coherence(w).item() == pytest.approx(np.abs(small_gram_minus_eye(w)).max(), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_srip_converges_to_spectral_norm(shape):
    """With many power-iteration steps SRIP reaches sigma_max(G - I) (numpy 2-norm)."""
    w = rand(*shape, seed=3)
    exact = np.linalg.norm(small_gram_minus_eye(w), 2)
    est = srip(w, iterations=500, generator=torch.Generator().manual_seed(0)).item()
    assert est == pytest.approx(exact, rel=1e-6)


def test_srip_is_a_lower_bound():
    """Every estimate (any iterations, any start) is <= the true spectral norm."""
    w = rand(8, 3, 3, 3, seed=4)
    exact = np.linalg.norm(small_gram_minus_eye(w), 2)
    for it, seed in itertools.product((1, 2, 3, 10), range(5)):
        est = srip(w, iterations=it, generator=torch.Generator().manual_seed(seed)).item()
        assert est <= exact * (1 + 1e-12)


def test_srip_same_generator_seed_same_value():
    """The random start comes from the generator: equal seeds give equal values."""
    w = rand(5, 2, 3, 3, seed=5)
    a = srip(w, generator=torch.Generator().manual_seed(7))
    b = srip(w, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_srip_orthonormal_weight_is_zero_and_finite_gradient():
    """Orthonormal filters give u = 0: value 0 and no NaN in the gradient."""
    w = torch.eye(4, dtype=torch.float64).reshape(4, 1, 2, 2).requires_grad_()
    val = srip(w, generator=torch.Generator().manual_seed(0))
    val.backward()
    assert val.item() == 0.0 and torch.isfinite(w.grad).all()


def test_srip_rejects_bad_iterations():
    """iterations must be a positive int."""
    with pytest.raises(ValueError, match="iterations"):
        srip(rand(2, 1, 3), iterations=0)


def ocnn_loop(w, stride):
    """||Conv(K, K, P, s) - I||^2 - delta written as loops over (i, j, lag, c, n)."""
    w = w.numpy()
    m, c, kernel = w.shape[0], w.shape[1], w.shape[2:]
    d = len(kernel)
    s = (stride,) * d if isinstance(stride, int) else stride
    pads = [(k - 1) // si * si for k, si in zip(kernel, s, strict=True)]
    lag_ranges = [range(-p, p + 1, si) for p, si in zip(pads, s, strict=True)]
    total = 0.0
    for i, j in itertools.product(range(m), range(m)):
        for lag in itertools.product(*lag_ranges):
            val = 0.0
            for ch in range(c):
                for n in itertools.product(*[range(k) for k in kernel]):
                    q = tuple(a + b for a, b in zip(n, lag, strict=True))
                    if all(0 <= qa < k for qa, k in zip(q, kernel, strict=True)):
                        val += w[(i, ch) + n] * w[(j, ch) + q]
            if i == j and all(v == 0 for v in lag):
                val -= 1.0
            total += val**2
    return total - max(0, m - c * int(np.prod(s)))


@pytest.mark.parametrize(
    "shape,stride",
    [
        ((3, 2, 3, 3), 1),
        ((3, 2, 3, 3), 2),
        ((4, 2, 5, 5), 2),
        ((2, 3, 5, 3), (3, 1)),
        ((3, 2, 5), 2),
        ((2, 2, 3, 3, 3), 1),
        ((3, 2, 4, 4), 2),
        ((3, 2, 2, 4), (1, 2)),
        ((2, 3, 6), 3),
    ],
)
def test_ocnn_matches_loop(shape, stride):
    """OCNN equals the loop over multiples-of-stride lags for Conv1d/2d/3d, any stride, odd and even kernels."""
    w = rand(*shape, seed=6)
    assert ocnn(w, stride, check="off").item() == pytest.approx(ocnn_loop(w, stride), rel=1e-12)


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (5, 2, 3, 3), (3, 3, 3)])
def test_ocnn_stride1_decomposition(shape):
    """Stride 1: OCNN + delta = 2 x channel-summed all-pairs CS + self terms (spec §5.6)."""
    w = rand(*shape, seed=7)
    m, c, k = shape[0], shape[1], shape[2]
    cs = conv_similarity(w, channels="summed").item()
    self_terms = 0.0
    for i in range(m):
        # sum_c K_ic * K_ic at every lag: filter i correlated with itself (channels summed)
        corr = torch.nn.functional.conv2d if w.dim() == 4 else torch.nn.functional.conv1d
        a = corr(w[i : i + 1], w[i : i + 1], padding=k - 1)[0, 0]
        centre = (k - 1,) * (w.dim() - 2)
        off = a.square().sum() - a[centre] ** 2
        self_terms += off.item() + (w[i].square().sum().item() - 1) ** 2
    delta = max(0, m - c)
    assert ocnn(w, check="off").item() + delta == pytest.approx(2 * cs + self_terms, rel=1e-12)


def test_ocnn_orthogonal_conv_reaches_zero():
    """Centre-delta kernels with an orthogonal mixing matrix are an orthogonal conv: value 0."""
    q, _ = torch.linalg.qr(rand(3, 3, seed=8))
    w = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    w[:, :, 1, 1] = q
    assert ocnn(w, check="off").item() == pytest.approx(0.0, abs=1e-12)


def test_ocnn_impossible_row_orthogonal_raises():
    """deel-lip: M > C*k^d with M <= C*s^d has no orthogonal conv (ValueError)."""
    with pytest.raises(ValueError, match="row-orthogonal"):
        ocnn(rand(8, 2, 1, 1), stride=2)


def test_ocnn_impossible_column_orthogonal_raises():
    """deel-lip: M > C*s^d with a stride larger than the kernel (ValueError)."""
    with pytest.raises(ValueError, match="column-orthogonal"):
        ocnn(rand(16, 1, 1, 1), stride=2)


def test_ocnn_even_kernel_is_accepted():
    """Even kernels are no longer refused: a 2x2 kernel with a possible orthogonal conv raises and warns nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        val = ocnn(rand(2, 3, 2, 2))
    assert torch.isfinite(val)


def test_ocnn_square_case_warns():
    """M = C*s^d is allowed but warned about (hard to optimise)."""
    with pytest.warns(UserWarning, match="square case"):
        ocnn(rand(4, 4, 3, 3))


def test_ocnn_check_warn_downgrades_errors():
    """check='warn' warns instead of raising and still returns the value."""
    with pytest.warns(UserWarning, match="row-orthogonal"):
        val = ocnn(rand(6, 2, 1, 1), stride=2, check="warn")
    assert torch.isfinite(val)


def test_ocnn_existence_ok_case_is_empty():
    """A 3x3 stem 3 -> 16 channels, stride 1, is a valid column-orthogonal case."""
    assert ocnn_existence((16, 3, 3, 3), 1) == []


def test_ocnn_rejects_bad_stride():
    """stride must be positive ints, one per spatial axis."""
    with pytest.raises(ValueError, match="stride"):
        ocnn(rand(2, 2, 3, 3), stride=(1, 1, 1), check="off")


def decov_loop(h):
    h = h.numpy()
    n, m = h.shape[0], h.shape[1]
    rows = [h[a].reshape(m, -1)[:, p] for a in range(n) for p in range(h[a].reshape(m, -1).shape[1])]
    mu = [sum(r[i] for r in rows) / len(rows) for i in range(m)]
    total = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:
                cov = sum((r[i] - mu[i]) * (r[j] - mu[j]) for r in rows) / len(rows)
                total += cov**2
    return 0.5 * total


@pytest.mark.parametrize("shape", [(5, 3), (3, 4, 2, 3), (2, 3, 5)])
def test_decov_matches_loop(shape):
    """DeCov = half the squared off-diagonal channel covariance over N*positions."""
    h = rand(*shape, seed=9)
    assert decov(h).item() == pytest.approx(decov_loop(h), rel=1e-12)


def test_decov_single_position_is_zero():
    """One sample and no spatial extent: the covariance is 0."""
    assert decov(rand(1, 4)).item() == 0.0


def test_decov_rejects_bad_shape():
    """A 1-D tensor has no channel axis."""
    with pytest.raises(ValueError, match="N, M"):
        decov(rand(5))


@pytest.mark.parametrize(
    "fn",
    [
        soft_orthogonality,
        double_soft_orthogonality,
        mutual_coherence,
        lambda w: srip(w, 3, torch.Generator().manual_seed(0)),
        lambda w: ocnn(w, 2, check="off"),
        decov,
    ],
    ids=["so", "dso", "mc", "srip", "ocnn", "decov"],
)
def test_gradcheck(fn):
    """Autograd gradients match finite differences in float64."""
    w = rand(3, 2, 3, 3, seed=10).requires_grad_()
    assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("fn", [soft_orthogonality, mutual_coherence, srip, ocnn])
def test_weight_penalties_reject_non_conv_weight(fn):
    """A 2-D tensor is not a conv weight."""
    with pytest.raises(ValueError, match="M, C"):
        fn(rand(3, 4))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Conv2d(6, 1, 1),  # one output channel: not selected
    ).double()


@pytest.mark.parametrize("name", ["so", "dso", "mc", "ocnn"])
def test_penalty_is_beta_times_sum_of_layers(name):
    """reg() = beta x sum of the functional penalty over the selected layers (ocnn with strides)."""
    net = small_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = Penalty(net, name, beta=0.5)
    fn = {"so": soft_orthogonality, "dso": double_soft_orthogonality, "mc": mutual_coherence}.get(name)
    if name == "ocnn":
        ref = ocnn(net[0].weight, 1, check="off") + ocnn(net[2].weight, 2, check="off")
    else:
        ref = fn(net[0].weight) + fn(net[2].weight)
    assert reg.layers == ["0", "2"]
    assert reg().item() == pytest.approx(0.5 * ref.item(), rel=1e-12)
    assert reg.beta == 0.5 and "beta=0.5" in repr(reg)
    assert not hasattr(reg, "weight")  # on an nn.Module, .weight means a Parameter


def test_penalty_srip_uses_generator_option():
    """Options reach the function: srip with a seeded generator is reproducible."""
    net = small_net()
    a = Penalty(net, "srip", iterations=4, generator=torch.Generator().manual_seed(1))()
    b = Penalty(net, "srip", iterations=4, generator=torch.Generator().manual_seed(1))()
    assert torch.equal(a, b)


def test_penalty_per_layer_names_and_gradients():
    """per_layer() is name -> 0-dim tensor and backprop reaches the conv weights."""
    net = small_net()
    reg = Penalty(net, "so")
    vals = reg.per_layer()
    assert list(vals) == ["0", "2"] and all(v.dim() == 0 for v in vals.values())
    reg().backward()
    assert net[0].weight.grad is not None and net[4].weight.grad is None


def test_penalty_registers_no_parameters():
    """The model's parameters do not become the penalty's parameters."""
    assert list(Penalty(small_net(), "dso").parameters()) == []


def test_penalty_include_exclude():
    """include/exclude predicates select layers like ConvSimilarity."""
    reg = Penalty(small_net(), "so", exclude=lambda n, m: n == "0")
    assert reg.layers == ["2"]


def test_penalty_no_layer_raises():
    """A model without a selectable conv is an error."""
    with pytest.raises(ValueError, match="no conv layer"):
        Penalty(nn.Sequential(nn.Linear(3, 3)), "so")


def test_penalty_unknown_name_raises():
    """Only the names in PENALTIES exist."""
    with pytest.raises(ValueError, match="must be one of"):
        Penalty(small_net(), "l2")
    assert set(PENALTIES) == {"so", "dso", "mc", "srip", "ocnn", "decov"}


def test_penalty_grouped_conv_is_sum_over_groups():
    """A grouped conv is penalised block by block (filters of one group only)."""
    conv = nn.Conv2d(4, 6, 3, groups=2).double()
    reg = Penalty(nn.Sequential(conv), "so")
    ref = soft_orthogonality(conv.weight[:3]) + soft_orthogonality(conv.weight[3:])
    assert reg().item() == pytest.approx(ref.item(), rel=1e-12)


def test_penalty_ocnn_warns_for_impossible_layer_by_default():
    """ocnn on a model with an impossible layer warns at construction (check='warn')."""
    net = nn.Sequential(nn.Conv2d(2, 8, 1, stride=2))
    with pytest.warns(UserWarning, match="layer '0'"):
        reg = Penalty(net, "ocnn")
    assert torch.isfinite(reg())


def test_penalty_ocnn_check_error():
    """check='error' makes impossible layers an error at construction."""
    with pytest.raises(ValueError, match="layer '0'"):
        Penalty(nn.Sequential(nn.Conv2d(2, 8, 1, stride=2)), "ocnn", check="error")


def test_penalty_decov_uses_last_forward_and_backprops():
    """decov: reg() is DeCov of the hooked outputs (not detached: gradients reach the model)."""
    net = small_net()
    x = rand(3, 2, 9, 9, seed=11)
    with Penalty(net, "decov", beta=2.0) as reg:
        net(x)
        val = reg()
        h0 = net[0](x)
        ref = decov(h0) + decov(net[2](net[1](h0)))
        assert val.item() == pytest.approx(2 * ref.item(), rel=1e-12)
        val.backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_penalty_decov_before_forward_raises():
    """Calling the data-dependent penalty before any forward is an error."""
    with Penalty(small_net(), "decov") as reg, pytest.raises(RuntimeError, match="forward"):
        reg()


def test_penalty_decov_remove_stops_capturing():
    """After remove() (or leaving the with block) no hook remains on the model."""
    net = small_net()
    with Penalty(net, "decov"):
        assert len(net[0]._forward_hooks) == 1
    assert len(net[0]._forward_hooks) == 0 and len(net[2]._forward_hooks) == 0


def test_penalty_under_ddp(tmp_path):
    """Layers and decov hooks work through a DistributedDataParallel wrapper (gloo, 1 process)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        net = small_net()
        ddp = nn.parallel.DistributedDataParallel(net)
        assert Penalty(ddp, "so").layers == ["0", "2"]
        with Penalty(ddp, "decov") as reg:
            ddp(rand(2, 2, 9, 9, seed=12))
            assert torch.isfinite(reg())
    finally:
        dist.destroy_process_group()
