"""The compiled (numba) stride-1 CS path held to the torch path, and the switch between them.

The torch path is the one the loop oracles of tests/test_similarity.py check (they also run the
compiled path, which is the default on CPU); here the two are compared on random shapes, dtypes,
layouts, groups and thread splits, values and gradients.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import oracles
from convsim import similarity
from convsim._internal import compiled
from convsim._internal.compiled import compiled_kernels
from convsim.similarity import conv_similarity

cs_numba = pytest.importorskip("convsim._internal.cs_numba", reason="numba is not installed")

VARIANTS = [(p, c) for p in ("all", "adjacent") for c in ("per_channel", "cross")]
# (shape, groups): 1-D, 2-D square and rectangular, 3-D, 1x1, grouped, a large one split into blocks
CASES = [
    ((7, 3, 5), 1),
    ((9, 5, 3, 3), 1),
    ((8, 4, 2, 5), 2),
    ((6, 3, 2, 3, 2), 3),
    ((12, 7, 1, 1), 4),
    ((40, 96, 3, 3), 1),
]
TOL = {torch.float64: dict(rtol=1e-11, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def rand(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def value_and_grad(w: torch.Tensor, on: bool, upstream: float = 1.7, **options) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = w.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    with compiled_kernels(on):
        value = conv_similarity(leaf, **options)
        (grad,) = torch.autograd.grad(upstream * value, leaf)
    return value.detach(), grad


def assert_same(got, want, dtype):
    scale = want.abs().max().item() or 1.0  # float32 sums cancel: compare at the size of the largest entry
    tol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the compiled value and gradient, so a test knows that path really ran."""
    calls = {"value": 0, "gradient": 0}
    for name in calls:
        original = getattr(cs_numba, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cs_numba, name, counted)
    return calls


# --------------------------------------------------------------------------- compiled path = torch path


@pytest.mark.parametrize("shape,groups", CASES, ids=str)
@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_compiled_value_and_gradient_match_the_torch_path(shape, groups, pairs, channels, dtype, kernel_calls):
    w = rand(shape, seed=len(shape) + groups, dtype=dtype)
    options = dict(pairs=pairs, channels=channels, groups=groups)
    value, grad = value_and_grad(w, True, **options)
    assert kernel_calls == {"value": 1, "gradient": 1}
    want_value, want_grad = value_and_grad(w, False, **options)
    assert value.dtype == dtype and grad.dtype == dtype
    assert_same(value, want_value, dtype)
    assert_same(grad, want_grad, dtype)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
def test_compiled_value_matches_the_loop_oracle(pairs, channels):
    w = rand((7, 4, 3, 2), seed=3)
    with compiled_kernels(True):
        got = conv_similarity(w, pairs=pairs, channels=channels, groups=1)
    assert got.item() == pytest.approx(oracles.cs_loss(w.numpy(), pairs, channels), rel=1e-10)


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_channels_last_weight_gets_a_channels_last_gradient_with_the_same_values(pairs, channels, dtype, kernel_calls):
    w = rand((10, 6, 3, 3), seed=4, dtype=dtype).to(memory_format=torch.channels_last)
    value, grad = value_and_grad(w, True, pairs=pairs, channels=channels)
    assert kernel_calls["gradient"] == 1
    assert grad.stride() == w.stride()
    want_value, want_grad = value_and_grad(w.contiguous(), False, pairs=pairs, channels=channels)
    assert_same(value, want_value, dtype)
    assert_same(grad, want_grad, dtype)


@pytest.mark.parametrize(
    "make",
    [lambda w: w[:, ::2], lambda w: w.transpose(2, 3).contiguous().transpose(2, 3)],
    ids=["strided slice", "dense, taps in another order"],
)
def test_weights_in_other_layouts_give_the_torch_path_gradient_in_their_own_layout(make):
    w = make(rand((6, 8, 3, 3), seed=5))
    value, grad = value_and_grad(w, True)
    want_value, want_grad = value_and_grad(w, False)
    assert grad.stride() == torch.empty_like(w).stride()
    assert_same(value, want_value, torch.float64)
    assert_same(grad, want_grad, torch.float64)


# --------------------------------------------------------------------------- row ranges over threads


@pytest.mark.parametrize("pairs,channels", VARIANTS)
@pytest.mark.parametrize("kc", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("threads", [2, 3])
def test_splitting_rows_over_threads_changes_nothing(pairs, channels, kc, threads, monkeypatch):
    # 50 filters in 5 groups of 10: the row ranges (>= 16 rows for adjacent pairs) cut through groups
    monkeypatch.setattr(cs_numba, "_PARALLEL", 0)
    w = rand((50, 6, 3, 3), seed=6)
    rows = (w.permute(0, 2, 3, 1).reshape(50, 9, 6) if kc else w.reshape(50, 6, 9)).contiguous().numpy()
    basis = similarity._dft_basis((3, 3), torch.float64, torch.device("cpu")).numpy()
    args = (rows, kc, basis, 5, channels == "cross", pairs == "adjacent")
    value_1, total_1 = cs_numba.value(*args, 1)
    value_n, total_n = cs_numba.value(*args, threads)
    assert value_n == pytest.approx(value_1, rel=1e-12)
    torch.testing.assert_close(torch.from_numpy(total_n), torch.from_numpy(total_1))
    grads = []
    for n in (1, threads):
        out = torch.empty(rows.shape, dtype=torch.float64)
        cs_numba.gradient(*args, total_1, 0.5, n, out.numpy())
        grads.append(out)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12 * grads[0].abs().max().item())


def test_threaded_split_matches_the_loop_oracle(monkeypatch):
    monkeypatch.setattr(cs_numba, "_PARALLEL", 0)
    w = rand((20, 4, 3, 3), seed=7)
    basis = similarity._dft_basis((3, 3), torch.float64, torch.device("cpu")).numpy()
    got, _ = cs_numba.value(w.reshape(20, 4, 9).numpy(), False, basis, 1, False, False, 3)
    assert got == pytest.approx(oracles.cs_loss(w.numpy(), "all", "per_channel"), rel=1e-10)


# --------------------------------------------------------------------------- the switch


@pytest.mark.parametrize("forward_on", [True, False])
def test_state_is_shared_by_both_paths(forward_on):
    # The switch may change between forward and backward: each path's state feeds the other's gradient.
    w = rand((8, 5, 3, 3), seed=8).requires_grad_()
    with compiled_kernels(forward_on):
        value = conv_similarity(w)
    with compiled_kernels(not forward_on):
        (grad,) = torch.autograd.grad(value, w)
    _, want = value_and_grad(w, False, upstream=1.0)
    assert_same(grad, want, torch.float64)


def test_switched_off_runs_the_torch_path(kernel_calls):
    w = rand((6, 3, 3, 3), seed=9).requires_grad_()
    with compiled_kernels(False):
        conv_similarity(w).backward()
    assert kernel_calls == {"value": 0, "gradient": 0}


def test_environment_variable_switches_the_kernels_off(monkeypatch, kernel_calls):
    monkeypatch.setenv(compiled.ENV, "0")
    importlib.reload(compiled)
    try:
        assert not compiled.compiled_enabled()
        conv_similarity(rand((6, 3, 3, 3), seed=10).requires_grad_()).backward()
        assert kernel_calls == {"value": 0, "gradient": 0}
    finally:
        monkeypatch.delenv(compiled.ENV)
        importlib.reload(compiled)
    assert compiled.compiled_enabled()


def test_without_numba_the_torch_path_runs(monkeypatch, kernel_calls):
    monkeypatch.setattr(similarity, "_compiled_module", lambda: None)  # what a failed `import numba` leaves
    w = rand((6, 3, 3, 3), seed=11)
    got = conv_similarity(w)
    assert kernel_calls["value"] == 0
    assert got.item() == pytest.approx(oracles.cs_loss(w.numpy(), "all", "per_channel"), rel=1e-10)


def test_other_dtypes_run_the_torch_path(kernel_calls):
    w = rand((6, 3, 3, 3), seed=12, dtype=torch.bfloat16)
    got = conv_similarity(w)
    assert kernel_calls["value"] == 0
    assert got.dtype == torch.bfloat16
