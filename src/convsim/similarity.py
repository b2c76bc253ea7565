r"""Convolutional Similarity (CS): the squared full cross-correlation of conv-kernel pairs.

For output kernels :math:`K_i = W[i]` of a conv weight
:math:`W \in \mathbb{R}^{M\times C\times k_1\times\dots\times k_d}` and the full cross-correlation
:math:`(a \star b)[\ell] = \sum_n a[n]\, b[n+\ell]` over all :math:`\prod_a (2k_a-1)` lags, the pair terms are

.. math::
    T^{pc}_{ij} = \sum_c \|K_{ic} \star K_{jc}\|^2,\quad
    T^{sum}_{ij} = \Big\|\sum_c K_{ic} \star K_{jc}\Big\|^2,\quad
    T^{x}_{ij} = \sum_{c,d} \|K_{ic} \star K_{jd}\|^2

and the loss sums them over unordered pairs :math:`i<j` (``pairs="all"``) or :math:`(i, i+1)`
(``pairs="adjacent"``, with ``channels="per_channel"`` the authors' released definition).

How it is computed (spec §6). With a DFT size :math:`P_a = 2k_a-1` per axis (no wrap-around),
:math:`Q=\prod_a P_a` and the power spectra :math:`S_{ic}(\omega) = |\hat K_{ic}(\omega)|^2`, Parseval gives

.. math::
    \sum_{i<j} T^{pc}_{ij} = \frac{1}{2Q}\sum_\omega\sum_c\Big[\Big(\sum_i S_{ic}\Big)^2 - \sum_i S_{ic}^2\Big],

linear in :math:`M` (``cross`` is the same with :math:`a_i=\sum_c S_{ic}` in place of :math:`S_{ic}`).
Every spectral quantity here is even in :math:`\omega`, so only one frequency of each pair
:math:`\pm\omega` is computed (weight 2; the DC term weight 1): :math:`(Q+1)/2` frequencies, found
with one real matmul of the flattened weight by a cosine/sine basis whose columns carry the fourth
root of those weights (so the losses below need no weights at all). Per-channel and cross losses use
a hand-written backward (:math:`\partial L/\partial S` is closed-form), so no complex tensors and
no autograd graph over the spectra. ``summed`` couples all filters at every frequency; it uses the
per-frequency Gram matrix of the same half spectrum (quadratic in :math:`M`).

Speed (issue 13). For stride-1 per-channel and cross CS only :math:`\sum_i S_{ic}` per group is kept
between forward and backward; the backward recomputes the spectrum. On CPU, with ``numba`` installed
(the ``fast`` extra) and not switched off (``CONVSIM_NUMBA=0``), value and gradient run as blocked
compiled passes that keep every spectrum in cache (:mod:`convsim._internal.cs_numba`); without numba
and on other devices the same math runs as torch operations. Under ``torch.compile`` both are the
operators ``convsim::parseval_cs`` and ``convsim::parseval_cs_grad`` (``torch.library``, with fake
implementations), so a step that adds ``ConvSimilarity`` to its loss compiles with ``fullgraph=True``.

Stride-aware CS (issue 10, ``stride=``, ``transposed=``): a transposed conv keeps only the lags on
the lattice :math:`s\mathbb Z`, a strided forward conv sums the squared polyphase correlations
(:func:`conv_similarity`). Both are computed from the spectra of the phase sub-kernels
:math:`K^\varphi[u]=K[\varphi+su]`: the folded power spectrum :math:`\sum_\varphi|\hat K^\varphi|^2`
(forward) and the per-frequency phase Gram :math:`vv^H`, :math:`v=(\hat K^\varphi)_\varphi`
(transposed), so per-channel and cross stay linear in :math:`M`, with the same closed-form backward.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from convsim._internal.compiled import compiled_enabled, compiled_module
from convsim._internal.layers import AnyConvLayer, Predicate, is_transposed, output_filters, select_conv_layers

PAIRS = ("all", "adjacent")
CHANNELS = ("per_channel", "summed", "cross")
REDUCTIONS = ("sum", "mean")


# --------------------------------------------------------------------------- argument checks


def _check_options(pairs: str, channels: str, reduction: str, normalize: bool = False) -> None:
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")


def _check_weight(weight: torch.Tensor, groups: int = 1, transposed: bool = False) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 3:
        raise ValueError(
            f"expected a conv weight of shape (M, C, *kernel) with at least 3 dims, got shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed must be a bool, got {type(transposed).__name__}")
    which = "input channels of the transposed weight (C_in, C_out/groups, *k)" if transposed else "output channels"
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {weight.shape[0]} {which}")


def per_axis_stride(stride: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """``stride`` (an int for every axis, or one positive int per spatial axis) as a ``dims``-tuple.

    Example:
        >>> per_axis_stride(2, 3), per_axis_stride((1, 2), 2)
        ((2, 2, 2), (1, 2))
    """
    values = (stride,) * dims if isinstance(stride, int) else tuple(stride) if isinstance(stride, Sequence) else None
    if values is None or isinstance(stride, str):
        raise TypeError(f"stride must be an int or a sequence of ints, got {type(stride).__name__}")
    if len(values) != dims or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"stride must be a positive int or {dims} of them (one per spatial axis), got {stride!r}")
    return values


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """CS is a sum of fourth powers: keep it in the weight's own dtype even under autocast."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.autocast(device.type, enabled=False)
    except (RuntimeError, TypeError, ValueError):  # device types autocast does not know
        pass
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- public helpers


def num_pairs(out_channels: int, pairs: str = "all", groups: int = 1) -> int:
    r"""Number of filter pairs a CS loss sums over, pairing only within each group.

    With :math:`m = M/\text{groups}` filters per group: ``"all"`` gives
    :math:`\text{groups}\cdot\binom m2`, ``"adjacent"`` gives :math:`\text{groups}\cdot(m-1)`.
    This is the divisor of ``reduction="mean"``.

    Example:
        >>> num_pairs(6), num_pairs(6, "adjacent"), num_pairs(6, groups=2)
        (15, 5, 6)
    """
    for value, label in ((out_channels, "out_channels"), (groups, "groups")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{label} must be an int, got {type(value).__name__}")
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if out_channels < 0 or groups < 1 or out_channels % groups:
        raise ValueError(f"need out_channels >= 0 and groups >= 1 dividing it, got {out_channels} and {groups}")
    m = out_channels // groups
    return groups * (m * (m - 1) // 2 if pairs == "all" else max(m - 1, 0))


def normalize_kernels(weight: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    r"""Every output kernel divided by its Frobenius norm: :math:`\tilde K_i = K_i / \max(\|K_i\|_F, \varepsilon)`.

    The norm is clamped from below (default :math:`\varepsilon` = the dtype's smallest normal
    number), so a zero kernel stays zero with a zero gradient and no NaN, while the value of
    every other kernel is not shifted. Shape (M, ...) in, same shape out; differentiable.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
        >>> normalize_kernels(w)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 1:
        raise ValueError("expected a tensor with a leading output-channel dim, got a 0-dim tensor")
    tiny = torch.finfo(weight.dtype).tiny if eps is None else float(eps)
    if not tiny > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    norms = weight.reshape(weight.shape[0], -1).norm(dim=1)
    return weight / norms.clamp_min(tiny).view(-1, *([1] * (weight.dim() - 1)))


# --------------------------------------------------------------------------- half spectrum


@functools.cache
def _dft_basis(kernel: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r"""Weighted real DFT basis of the half spectrum at size :math:`P_a = 2k_a-1` per axis, (K, 2H).

    K = prod(kernel), H = (Q+1)/2 frequencies :math:`\omega_h`, one of each pair :math:`\pm\omega`
    (every P is odd, so no Nyquist term). Columns :math:`[c_h\cos\phi_h \mid c_h\sin\phi_h]` with
    :math:`\phi_h(x) = 2\pi\sum_a \omega_{h,a} x_a / P_a` and :math:`c_h = w_h^{1/4}`,
    :math:`w_h = 1/Q` for DC and :math:`2/Q` otherwise. So ``W.reshape(M*C, K) @ basis`` holds the real
    part and minus the imaginary part of :math:`c_h\hat K_{ic}(\omega_h)`, and any product of two
    spectral quantities quadratic in K (power spectra, Gram entries) carries exactly the Parseval
    weight: :math:`\frac1Q\sum_\omega f(\omega) = \sum_h w_h f(\omega_h)` for every even f.
    """
    sizes = tuple(2 * k - 1 for k in kernel)
    freqs = np.indices(sizes).reshape(len(sizes), -1)  # (d, Q), row-major
    negs = (-freqs) % np.array(sizes)[:, None]
    keep = np.ravel_multi_index(freqs, sizes) <= np.ravel_multi_index(negs, sizes)  # one of each ±ω
    half = freqs[:, keep]  # (d, H), DC first
    taps = np.indices(kernel).reshape(len(kernel), -1)  # (d, K), matches the weight's flatten order
    phase = 2 * np.pi * ((taps.T[:, None, :] * half.T[None, :, :]) / np.array(sizes)).sum(-1)  # (K, H)
    scale = (np.where(half.any(0), 2.0, 1.0) / np.prod(sizes)) ** 0.25
    basis = np.concatenate([np.cos(phase) * scale, np.sin(phase) * scale], 1)
    # Never build it under inference mode: autograd saves it for backward.
    with torch.inference_mode(False):
        return torch.from_numpy(basis).to(device=device, dtype=dtype).contiguous()


def _half_spectrum(weight: torch.Tensor) -> torch.Tensor:
    """(M, C, 2, H): weighted real and (minus) imaginary half spectrum of every slice (autograd)."""
    basis = _dft_basis(tuple(weight.shape[2:]), weight.dtype, weight.device)
    m, c = weight.shape[:2]
    return (weight.reshape(m * c, -1) @ basis).view(m, c, 2, -1)


def _power(spec: torch.Tensor) -> torch.Tensor:
    r"""Weighted power spectrum :math:`\sqrt{w_h}\,|\hat K(\omega_h)|^2`, (..., 2, H) -> (..., H)."""
    imag = spec.select(-2, 1)
    return spec.select(-2, 0).square().addcmul_(imag, imag)  # in place: one large allocation fewer


# --------------------------------------------------------------------------- linear-time losses


def _sq_norm(x: torch.Tensor) -> torch.Tensor:
    # One fused, multithreaded reduction; torch.dot goes through BLAS and is far slower on CPU here.
    return torch.linalg.vector_norm(x).square()


def _pair_sum(t: torch.Tensor, pairs: str) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`L=\sum_{(i,j)}\langle T_i, T_j\rangle` over the pairs of each group, T (G, m, ...).

    Also returns what the gradient needs (:func:`_pair_grad`): the sum over the group's filters
    (all pairs) or :math:`dL/dT` itself (adjacent pairs).
    """
    if pairs == "all":
        total = t.sum(1, keepdim=True)
        return 0.5 * (_sq_norm(total) - _sq_norm(t)), total
    dt = torch.zeros_like(t)
    dt[:, 1:] += t[:, :-1]
    dt[:, :-1] += t[:, 1:]
    return 0.5 * torch.linalg.vecdot(t.reshape(-1), dt.reshape(-1)), dt


def _pair_grad(t: torch.Tensor | None, kept: torch.Tensor, pairs: str) -> torch.Tensor:
    r""":math:`dL/dT_i`: :math:`\sum_j T_j - T_i` (all pairs) or :math:`T_{i-1}+T_{i+1}` (adjacent)."""
    return kept - t if pairs == "all" and t is not None else kept


# --------------------------------------------------------------------------- per-channel and cross, stride 1
#
# The value (with a small state: the per-group sum of the features, all pairs) is _parseval and the
# gradient _parseval_grad, from the weight and the state alone: nothing the size of the weight is
# saved for backward, the gradient pass recomputes the spectrum. On CPU with numba (switched on:
# CONVSIM_NUMBA, convsim._internal.compiled) both run as blocked compiled passes
# (convsim._internal.cs_numba) that never write a spectrum to memory; otherwise the torch path, on
# any device. Eagerly they are the autograd node _ParsevalCS; under torch.compile the operators
# convsim::parseval_cs and convsim::parseval_cs_grad (torch.library), so fullgraph=True traces
# through them (fake implementations give the shapes; the DFT basis is built inside them).


def _compiled_module() -> ModuleType | None:
    """convsim._internal.cs_numba if numba imports (looked up once)."""
    return compiled_module("convsim._internal.cs_numba")


def _kernels_for(weight: torch.Tensor) -> ModuleType | None:
    """The compiled kernels if they apply to ``weight`` (float32/float64 on CPU) and are switched on."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.float64) or not compiled_enabled():
        return None
    return _compiled_module()


def _parseval_features(
    weight: torch.Tensor, channels: str, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half spectrum (M·C, 2H), the features T (G, m, C', H) (C' = C per channel, 1 cross) and the basis."""
    basis = _dft_basis(tuple(weight.shape[2:]), weight.dtype, weight.device)
    m, c = weight.shape[:2]
    h = basis.shape[1] // 2
    spec = weight.reshape(m * c, -1) @ basis
    power = _power(spec.view(m, c, 2, h))  # (M, C, H)
    t = power if channels == "per_channel" else power.sum(1, keepdim=True)
    return spec, t.view(groups, m // groups, -1, h), basis


def _state_shape(shape: Sequence[int], pairs: str, channels: str, groups: int) -> tuple[int, ...]:
    """Shape of the op's state: the per-group feature sums (G, C', H) for all pairs, (0,) for adjacent ones."""
    if pairs != "all":
        return (0,)
    sizes = [2 * k - 1 for k in shape[2:]]
    return (groups, shape[1] if channels == "per_channel" else 1, (functools.reduce(operator.mul, sizes, 1) + 1) // 2)


def _parseval_torch(weight: torch.Tensor, pairs: str, channels: str, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`L=\sum_{(i,j)}\langle T_i,T_j\rangle` (:func:`_pair_sum`) and the state, any device."""
    value, kept = _pair_sum(_parseval_features(weight, channels, groups)[1], pairs)
    return value, kept.squeeze(1) if pairs == "all" else weight.new_zeros(0)


def _parseval_grad_torch(
    grad: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, pairs: str, channels: str, groups: int
) -> torch.Tensor:
    r"""grad · dL/dW: :math:`dL/dT_i` is ``state - T_i`` (all pairs) or :math:`T_{i-1}+T_{i+1}` (adjacent);
    :math:`dS_{ic}` is :math:`dT_i(c)` (broadcast over c for cross); d spec = 2 spec dS; back through the matmul."""
    spec, t, basis = _parseval_features(weight, channels, groups)
    dt = state.unsqueeze(1) - t if pairs == "all" else _pair_sum(t, pairs)[1]
    m, c = weight.shape[:2]
    h = t.shape[-1]
    dspec = spec.view(m, c, 2, h) * dt.view(m, -1, 1, h)
    dw = (dspec.view(m * c, 2 * h) @ (basis.T * (2 * grad))).view(weight.shape)
    out = torch.empty_like(weight)  # the layout the fake implementation promises
    return dw if dw.stride() == out.stride() else out.copy_(dw)


def _rows(weight: torch.Tensor) -> tuple[np.ndarray, bool] | None:
    """A (detached) weight as numpy rows without a copy: (M, C, K) if contiguous, (M, K, C) if channels-last."""
    m, c = weight.shape[:2]
    if weight.is_contiguous():
        return weight.view(m, c, -1).numpy(), False
    last = weight.movedim(1, -1)
    if last.is_contiguous():
        return last.view(m, -1, c).numpy(), True
    return None


def _parseval_numba(
    kernels: ModuleType, weight: torch.Tensor, pairs: str, channels: str, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_parseval_torch` by the compiled kernels (CPU, float32/float64); the value summed in float64."""
    w = weight.detach()
    rows, kc = _rows(w) or _rows(w.contiguous())  # type: ignore[misc]  # a contiguous tensor always has rows
    basis = _dft_basis(tuple(w.shape[2:]), w.dtype, w.device).numpy()
    value, total = kernels.value(
        rows, kc, basis, groups, channels == "cross", pairs == "adjacent", torch.get_num_threads()
    )
    state = torch.from_numpy(total).to(w.dtype) if pairs == "all" else w.new_zeros(0)
    return w.new_tensor(value), state


def _parseval_grad_numba(
    kernels: ModuleType,
    grad: torch.Tensor,
    weight: torch.Tensor,
    state: torch.Tensor,
    pairs: str,
    channels: str,
    groups: int,
) -> torch.Tensor:
    """:func:`_parseval_grad_torch` by the compiled kernels, written straight into the weight's layout."""
    w = weight.detach()
    rows, kc = _rows(w) or _rows(w.contiguous())  # type: ignore[misc]  # a contiguous tensor always has rows
    out = torch.empty_like(w)
    target = _rows(out)
    scratch = target is None or target[1] != kc  # an unusual stride order: write contiguous rows, then copy
    dest = torch.empty(w.shape, dtype=w.dtype) if scratch else out
    total = state.contiguous().numpy() if pairs == "all" else np.zeros((0, 0, 0), rows.dtype)
    basis = _dft_basis(tuple(w.shape[2:]), w.dtype, w.device).numpy()
    kernels.gradient(
        rows,
        kc,
        basis,
        groups,
        channels == "cross",
        pairs == "adjacent",
        total,
        float(grad),
        torch.get_num_threads(),
        _rows(dest)[0],  # type: ignore[index]  # dest has rows in the layout kc
    )
    return out.copy_(dest) if scratch else out


def _parseval(weight: torch.Tensor, pairs: str, channels: str, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-channel or cross CS over all or adjacent pairs within groups, linear in M: (value, state).

    With T (G, m, C', H) the weighted power spectra (summed over channels for ``cross``), the loss
    is :math:`L = \sum_{(i,j)}\langle T_i, T_j\rangle` and its gradient is closed-form:
    all pairs, :math:`L = \tfrac12(\|\sum_i T_i\|^2 - \sum_i\|T_i\|^2)`, :math:`dL/dT_i = \sum_j T_j - T_i`;
    adjacent, :math:`dL/dT_i = T_{i-1} + T_{i+1}`. The state (:func:`_state_shape`) is
    :math:`\sum_i T_i` per group for all pairs.
    """
    kernels = _kernels_for(weight)
    if kernels is None:
        return _parseval_torch(weight, pairs, channels, groups)
    return _parseval_numba(kernels, weight, pairs, channels, groups)


def _parseval_grad(
    grad: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, pairs: str, channels: str, groups: int
) -> torch.Tensor:
    """grad · dL/dW of :func:`_parseval` from the weight and the state, in the weight's layout."""
    kernels = _kernels_for(weight)
    if kernels is None:
        return _parseval_grad_torch(grad, weight, state, pairs, channels, groups)
    return _parseval_grad_numba(kernels, grad, weight, state, pairs, channels, groups)


class _ParsevalCS(torch.autograd.Function):
    """Eager autograd node of :func:`_parseval` and :func:`_parseval_grad` (the operators' work, without the
    dispatcher's overhead or the import of torch._dynamo that a custom operator's first call costs)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, pairs: str, channels: str, groups: int) -> torch.Tensor:
        value, state = _parseval(weight, pairs, channels, groups)
        ctx.save_for_backward(weight, state)
        ctx.options = (pairs, channels, groups)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, state = ctx.saved_tensors
        return _parseval_grad(grad, weight, state, *ctx.options), None, None, None


# The same two functions as operators for torch.compile: fake implementations give the shapes, and
# the DFT basis is built inside them, so no numpy runs in a traced region.
_parseval_cs = torch.library.custom_op("convsim::parseval_cs", _parseval, mutates_args=())
_parseval_cs_grad = torch.library.custom_op("convsim::parseval_cs_grad", _parseval_grad, mutates_args=())


@_parseval_cs.register_fake
def _parseval_cs_fake(
    weight: torch.Tensor, pairs: str, channels: str, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return weight.new_empty(()), weight.new_empty(_state_shape(weight.shape, pairs, channels, groups))


@_parseval_cs_grad.register_fake
def _parseval_cs_grad_fake(
    grad: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, pairs: str, channels: str, groups: int
) -> torch.Tensor:
    return torch.empty_like(weight)


def _parseval_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    weight, pairs, channels, groups = inputs
    ctx.save_for_backward(weight, output[1])
    ctx.options = (pairs, channels, groups)
    ctx.mark_non_differentiable(output[1])


def _parseval_backward(ctx: Any, grad: torch.Tensor, _state: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    weight, state = ctx.saved_tensors
    return _parseval_cs_grad(grad, weight, state, *ctx.options), None, None, None


_parseval_cs.register_autograd(_parseval_backward, setup_context=_parseval_setup)


def _parseval_loss(weight: torch.Tensor, pairs: str, channels: str, groups: int) -> torch.Tensor:
    """The CS value: through the registered operator when traced by torch.compile, else the eager node."""
    if torch.compiler.is_compiling():
        return _parseval_cs(weight, pairs, channels, groups)[0]
    return _ParsevalCS.apply(weight, pairs, channels, groups)


# --------------------------------------------------------------------------- channel-summed


def _filter_gram(spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Real and imaginary parts of the per-frequency filter Gram :math:`G(\omega) = \hat W^H\hat W`.

    ``spec`` (G, m, C, 2, H) -> two (G*H, m, m) tensors with entry (i, j) of
    :math:`\sum_c \overline{\hat K_{ic}(\omega_h)}\hat K_{jc}(\omega_h)` (weighted by :math:`\sqrt{w_h}`).
    """
    g, m, c, _, h = spec.shape
    x = spec.permute(0, 4, 3, 1, 2).reshape(g * h, 2, m, c)
    z = x.transpose(1, 2).reshape(g * h, m, 2 * c)  # [re | im] side by side along the contraction
    cross = x[:, 0] @ x[:, 1].transpose(1, 2)
    return z @ z.transpose(1, 2), cross - cross.transpose(1, 2)


def _summed_loss(weight: torch.Tensor, pairs: str, groups: int) -> torch.Tensor:
    return _summed_spectrum_loss(_half_spectrum(weight), pairs, groups)


def _summed_spectrum_loss(spec: torch.Tensor, pairs: str, groups: int) -> torch.Tensor:
    """Channel-summed CS from the half spectrum (M, C, 2, H) of the weight's slices (autograd)."""
    m, c = spec.shape[:2]
    spec = spec.view(groups, m // groups, c, 2, -1)
    if pairs == "adjacent":
        re, im = spec[:, :, :, 0], spec[:, :, :, 1]  # (G, m, C, H)
        real = (re[:, :-1] * re[:, 1:] + im[:, :-1] * im[:, 1:]).sum(2)
        imag = (re[:, :-1] * im[:, 1:] - im[:, :-1] * re[:, 1:]).sum(2)
        return (real.square() + imag.square()).sum()
    # Off-diagonal entries only, taken directly: subtracting the (large) diagonal from ||G||_F^2 would
    # lose the value in float32 exactly where this variant gets small (near-orthogonal convolutions).
    real, imag = _filter_gram(spec)
    return real.triu(1).square().sum() + imag.triu(1).square().sum()


# --------------------------------------------------------------------------- stride-aware (issue 10)


def phase_masks(
    shape: Sequence[int], stride: Sequence[int], *, dtype: torch.dtype = torch.float32, device: Any = None
) -> torch.Tensor:
    r"""(P, \*shape) 0/1 masks of the :math:`P=\prod_a s_a` phases :math:`\varphi`, in row-major order.

    ``mask[p][t] = 1`` iff :math:`t_a\equiv\varphi_a \pmod{s_a}` on every axis, :math:`\varphi` the
    p-th element of ``itertools.product(*map(range, stride))``: the one phase convention of the
    stride-aware CS and of :mod:`convsim.theory`.

    Example:
        >>> phase_masks([5], [2])
        tensor([[1., 0., 1., 0., 1.],
                [0., 1., 0., 1., 0.]])
    """
    grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    masks = []
    for phase in itertools.product(*map(range, stride)):
        mask = torch.ones(tuple(shape), dtype=torch.bool)
        for grid, p, s in zip(grids, phase, stride, strict=True):
            mask &= grid % s == p
        masks.append(mask)
    return torch.stack(masks).to(dtype=dtype, device=device)


def _effective_stride(kernel: Sequence[int], stride: int | Sequence[int]) -> tuple[int, ...]:
    """The stride per axis, capped at the kernel size: phases beyond the kernel are empty, lags >= k absent."""
    return tuple(min(s, k) for s, k in zip(per_axis_stride(stride, len(kernel)), kernel, strict=True))


@functools.cache
def _phase_basis(kernel: tuple, stride: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r"""(K, H'·2·P) basis of the phase sub-kernels' half spectra, straight from the kernel's K taps.

    Tap n of phase :math:`\varphi` is tap :math:`u=(n-\varphi)/s` of the sub-kernel
    :math:`K^\varphi[u]=K[\varphi+su]` (size :math:`k'=\lceil k/s\rceil` per axis), so its row holds
    the :func:`_dft_basis` row of u (size :math:`2k'-1`, same weights) in phase :math:`\varphi`'s
    column and zeros in the others. ``W.reshape(M*C, K) @ basis`` is (M·C, H', 2, P): real part and
    minus imaginary part of every :math:`\hat K^\varphi(\omega_h)`, phases in the order of
    :func:`phase_masks`; no copy of the weight is made.
    """
    sub = tuple(-(-k // s) for k, s in zip(kernel, stride, strict=True))
    small = _dft_basis(sub, torch.float64, torch.device("cpu")).numpy()  # (K', 2H')
    taps = np.indices(kernel).reshape(len(kernel), -1)
    s = np.array(stride)[:, None]
    out = np.zeros((taps.shape[1], int(np.prod(stride)), small.shape[1]))  # (K, P, 2H')
    out[np.arange(taps.shape[1]), np.ravel_multi_index(taps % s, stride)] = small[np.ravel_multi_index(taps // s, sub)]
    out = out.reshape(taps.shape[1], -1, 2, small.shape[1] // 2).transpose(0, 3, 2, 1)  # (K, H', 2, P)
    with torch.inference_mode(False):  # autograd saves it for backward
        return torch.from_numpy(out.reshape(taps.shape[1], -1)).to(device=device, dtype=dtype).contiguous()


def _phase_spectra(weight: torch.Tensor, stride: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Weighted half spectra :math:`\hat K^\varphi` (M, C, H', 2, P) of the slices' phase sub-kernels; the basis."""
    m, c = weight.shape[:2]
    basis = _phase_basis(tuple(weight.shape[2:]), stride, weight.dtype, weight.device)
    return (weight.reshape(m * c, -1) @ basis).view(m, c, -1, 2, int(np.prod(stride))), basis


class _FoldedCS(torch.autograd.Function):
    r"""Strided forward per-channel or cross CS of a weight (M, C, \*k), linear in M.

    The pair term is :math:`\sum_{\delta\equiv0}R_{ic}[\delta]R_{jd}[\delta]=\langle F_{ic},F_{jd}\rangle`
    with the folded power spectrum :math:`F=\sum_\varphi|\hat K^\varphi|^2` (weighted half
    spectrum): :func:`_parseval` with F in place of the power spectrum, and
    :math:`d\,\mathrm{spec}=2\,\mathrm{spec}\,dT` for every phase.
    """

    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, stride: tuple[int, ...], pairs: str, channels: str, groups: int
    ) -> torch.Tensor:
        spec, basis = _phase_spectra(weight, stride)
        m, c, h = spec.shape[:3]
        folded = spec.square().sum((3, 4))  # (M, C, H')
        if channels == "per_channel":
            t = folded.view(groups, m // groups, c, h)
        else:
            t = folded.sum(1).view(groups, m // groups, h)
        value, kept = _pair_sum(t, pairs)
        ctx.basis, ctx.shape, ctx.pairs = basis, weight.shape, pairs
        ctx.save_for_backward(spec, t if pairs == "all" else None, kept)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        spec, t, kept = ctx.saved_tensors
        m, c, h = spec.shape[:3]
        dt = _pair_grad(t, kept, ctx.pairs)  # (G, m/G, [C,] H'); "cross" broadcasts over C
        dspec = 2 * spec * dt.reshape(m, -1, h, 1, 1)
        return (dspec.view(m * c, -1) @ (ctx.basis.T * grad)).view(ctx.shape), None, None, None, None


def _gram_parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Real and imaginary parts :math:`(A, B)` of :math:`\sum_n v_nv_n^H` for rows ``z`` = [re | im] (..., n, 2P).

    :math:`A_{pq}=\sum_n(\mathrm{re}_{np}\mathrm{re}_{nq}+\mathrm{im}_{np}\mathrm{im}_{nq})` (symmetric),
    :math:`B_{pq}=\sum_n(\mathrm{im}_{np}\mathrm{re}_{nq}-\mathrm{re}_{np}\mathrm{im}_{nq})` (antisymmetric):
    blocks of the one real Gram :math:`z^Tz`.
    """
    p = z.shape[-1] // 2
    full = z.mT @ z
    return full[..., :p, :p] + full[..., p:, p:], full[..., p:, :p] - full[..., :p, p:]


def _hermitian_apply(z: torch.Tensor, sym: torch.Tensor, anti: torch.Tensor) -> torch.Tensor:
    r""":math:`(S+iN)v_n` for rows ``z`` = [re | im] (..., n, 2P), S symmetric, N antisymmetric (..., P, P).

    Row form of :math:`(S\,\mathrm{re}-N\,\mathrm{im},\ S\,\mathrm{im}+N\,\mathrm{re})`, one product
    with the real form :math:`\begin{pmatrix}S&-N\\N&S\end{pmatrix}` (:math:`x^TS=(Sx)^T`,
    :math:`x^TN=-(Nx)^T`); returns [re | im] rows.
    """
    return z @ torch.cat([torch.cat([sym, -anti], -1), torch.cat([anti, sym], -1)], -2)


def _phase_rows(weight: torch.Tensor, basis: torch.Tensor, phases: int, groups: int, per_channel: bool) -> torch.Tensor:
    """Phase spectra as [re | im] rows, frequency first: (H', C, G, m, 2P) per channel, (H', G, m, C, 2P) cross.

    One broadcast matmul per frequency of the (reordered) slices with that frequency's basis block,
    so the P×P sums over filters (per channel) or channels (cross) are batched matrix products.
    """
    m, c = weight.shape[:2]
    k = basis.shape[0]
    slices = weight.reshape(groups, m // groups, c, k)
    if per_channel:
        slices = slices.permute(2, 0, 1, 3)
    blocks = basis.view(k, -1, 2 * phases).transpose(0, 1)  # (H', K, 2P)
    z = torch.matmul(slices.reshape(-1, k), blocks)  # (H', rows, 2P)
    return z.view(z.shape[0], *slices.shape[:3], z.shape[-1])


def _phase_rows_grad(dz: torch.Tensor, basis: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Back through :func:`_phase_rows`: d rows (H', *rows, 2P) -> d slices (*rows, K), in the rows' order."""
    k = basis.shape[0]
    blocks = basis.view(k, -1, dz.shape[-1]).transpose(0, 1)  # (H', K, 2P)
    return (dz.view(dz.shape[0], -1, dz.shape[-1]) @ (blocks.mT * grad)).sum(0).view(*dz.shape[1:4], k)


class _PhaseGramCS(torch.autograd.Function):
    r"""Transposed per-channel or cross CS on the lattice, from a filters weight (M, C, \*k), linear in M.

    With :math:`v_{ic}(\omega)=(\hat K^\varphi_{ic}(\omega))_\varphi\in\mathbb C^P`, the lattice
    term of two slices is :math:`|v_{ic}^Hv_{jd}|^2=\langle v_{ic}v_{ic}^H, v_{jd}v_{jd}^H\rangle`
    (weighted half spectrum, so summed over :math:`\omega` it is the Parseval sum).

    * per-channel, all pairs: with :math:`\Sigma=\sum_i v_iv_i^H` per group, channel and frequency,
      :math:`L=\tfrac12\sum(\|\Sigma\|^2-\sum_i|v_i|^4)` and :math:`dL/dv_i=2(\Sigma v_i-|v_i|^2v_i)`;
    * per-channel, adjacent: :math:`L=\sum_i|w_i|^2`, :math:`w_i=v_i^Hv_{i+1}`,
      :math:`dL/dv_i=2(\bar w_iv_{i+1}+w_{i-1}v_{i-1})`;
    * cross: :math:`T_i=\sum_c v_{ic}v_{ic}^H` (P×P per frequency), :math:`L=\sum_{(i,j)}\langle T_i,T_j\rangle`
      (:func:`_pair_sum`) and :math:`dL/dv_{ic}=2D_iv_{ic}` with :math:`D_i=dL/dT_i`.

    Only P×P sums are formed (no M·C·P² tensor); the gradients are the real forms of :math:`2\,dL/d\bar v`.
    """

    @staticmethod
    def forward(
        ctx: Any, weight: torch.Tensor, stride: tuple[int, ...], pairs: str, channels: str, groups: int
    ) -> torch.Tensor:
        per_channel = channels == "per_channel"
        basis = _phase_basis(tuple(weight.shape[2:]), stride, weight.dtype, weight.device)
        z = _phase_rows(
            weight, basis, int(np.prod(stride)), groups, per_channel
        )  # (H', C, G, m, 2P) / (H', G, m, C, 2P)
        ctx.basis, ctx.shape, ctx.pairs, ctx.per_channel = basis, weight.shape, pairs, per_channel
        if not per_channel:
            a, b = _gram_parts(z)  # T_i: (H', G, m, P, P) each
            t = torch.stack([a, b]).permute(2, 3, 0, 1, 4, 5).reshape(groups, a.shape[2], -1)
            value, kept = _pair_sum(t, pairs)
            ctx.save_for_backward(z, t if pairs == "all" else None, kept)
            return value
        if pairs == "all":
            a, b = _gram_parts(z)  # Sigma: (H', C, G, P, P) each
            norms = z.square().sum(-1)  # |v_i|^2: (H', C, G, m)
            ctx.save_for_backward(z, a, b, norms)
            return 0.5 * (_sq_norm(a) + _sq_norm(b) - _sq_norm(norms))
        p = z.shape[-1] // 2
        re, im = z[..., :p], z[..., p:]
        wr = (z[..., :-1, :] * z[..., 1:, :]).sum(-1)  # w_i = v_i^H v_{i+1}: (H', C, G, m-1)
        wi = (re[..., :-1, :] * im[..., 1:, :] - im[..., :-1, :] * re[..., 1:, :]).sum(-1)
        ctx.save_for_backward(z, wr, wi)
        return _sq_norm(wr) + _sq_norm(wi)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None, None]:
        z, *saved = ctx.saved_tensors
        if not ctx.per_channel:
            t, kept = saved
            h, g, m, _, p2 = z.shape
            d = _pair_grad(t, kept, ctx.pairs).view(g, m, 2, h, p2 // 2, p2 // 2).permute(2, 3, 0, 1, 4, 5)
            dz = _hermitian_apply(z, d[0] + d[0].mT, d[1] - d[1].mT)
        elif ctx.pairs == "all":
            a, b, norms = saved
            dz = _hermitian_apply(z, 2 * a, 2 * b) - 2 * norms.unsqueeze(-1) * z
        else:
            dz = _adjacent_grad(z, *saved)
        dw = _phase_rows_grad(dz, ctx.basis, grad)  # (C, G, m, K) per channel, (G, m, C, K) cross
        return (dw.permute(1, 2, 0, 3) if ctx.per_channel else dw).reshape(ctx.shape), None, None, None, None, None


def _adjacent_grad(z: torch.Tensor, wr: torch.Tensor, wi: torch.Tensor) -> torch.Tensor:
    r""":math:`dL/dv_i=2(\bar w_iv_{i+1}+w_{i-1}v_{i-1})` as [re | im] rows; z (..., m, 2P), w (..., m-1)."""
    p = z.shape[-1] // 2
    re, im = z[..., :p], z[..., p:]
    wr, wi = wr.unsqueeze(-1), wi.unsqueeze(-1)
    dre, dim = torch.zeros_like(re), torch.zeros_like(im)
    dre[..., :-1, :] += 2 * (wr * re[..., 1:, :] + wi * im[..., 1:, :])
    dim[..., :-1, :] += 2 * (wr * im[..., 1:, :] - wi * re[..., 1:, :])
    dre[..., 1:, :] += 2 * (wr * re[..., :-1, :] - wi * im[..., :-1, :])
    dim[..., 1:, :] += 2 * (wr * im[..., :-1, :] + wi * re[..., :-1, :])
    return torch.cat([dre, dim], -1)


def _strided_summed(w: torch.Tensor, stride: tuple[int, ...], groups: int, adjacent: bool) -> torch.Tensor:
    r"""Forward stride-aware channel-summed pair terms, (G, m, m) per group or (G, m-1) adjacent.

    :math:`T_{ij}=\sum_\psi\sum_\ell\big(\sum_c P^\psi_{ic,jc}[\ell]\big)^2
    =\sum_\psi\frac1Q\sum_\omega\big|\sum_c\overline{\hat K^{(\psi)}_{ic}}\hat K_{jc}\big|^2(\omega)`,
    :math:`K^{(\psi)}` the kernel with the taps of other phases zeroed, DFT size :math:`2k-1`
    (quadratic in M, like the stride-1 ``summed``). Symmetric in (i, j) after the sum over phases.
    """
    m, c, *kernel = w.shape
    basis = _dft_basis(tuple(kernel), w.dtype, w.device)
    h = basis.shape[1] // 2
    masks = phase_masks(kernel, stride, dtype=w.dtype, device=w.device).reshape(-1, basis.shape[0])  # (P, K)
    flat = w.reshape(m, c, 1, -1)
    full = (flat @ basis).view(groups, m // groups, c, 2, h)
    masked = ((flat * masks) @ basis).view(groups, m // groups, c, -1, 2, h)
    re, im = full.select(3, 0).unsqueeze(3), full.select(3, 1).unsqueeze(3)  # (G, m, C, 1, H)
    mre, mim = masked.select(4, 0), masked.select(4, 1)  # (G, m, C, P, H)
    if adjacent:
        real = (mre[:, :-1] * re[:, 1:] + mim[:, :-1] * im[:, 1:]).sum(2)  # (G, m-1, P, H)
        imag = (mre[:, :-1] * im[:, 1:] - mim[:, :-1] * re[:, 1:]).sum(2)
        return (real.square() + imag.square()).flatten(2).sum(-1)
    re, im = re.squeeze(3), im.squeeze(3)
    real = torch.einsum("gicph,gjch->gphij", mre, re) + torch.einsum("gicph,gjch->gphij", mim, im)
    imag = torch.einsum("gicph,gjch->gphij", mre, im) - torch.einsum("gicph,gjch->gphij", mim, re)
    return (real.square() + imag.square()).sum((1, 2))


def _lattice_loss(
    w: torch.Tensor, stride: tuple[int, ...], transposed: bool, pairs: str, channels: str, groups: int
) -> torch.Tensor:
    """Stride-aware CS of the output filters w (M, C, *k), some stride > 1 (see conv_similarity)."""
    if channels != "summed":
        function = _PhaseGramCS if transposed else _FoldedCS
        return function.apply(w, stride, pairs, channels, groups)
    if transposed:  # lattice lags: the stride-1 summed CS with (channel, phase) as the channels
        return _summed_spectrum_loss(_phases_as_channels(w, stride), pairs, groups)
    terms = _strided_summed(w, stride, groups, adjacent=pairs == "adjacent")
    return terms.sum() if pairs == "adjacent" else terms.triu(1).sum()


def _phases_as_channels(w: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """Phase spectra (M, C, H', 2, P) as the half spectrum (M, C·P, 2, H') of C·P sub-kernel slices."""
    spec = _phase_spectra(w, stride)[0]
    return spec.permute(0, 1, 4, 3, 2).reshape(w.shape[0], -1, 2, spec.shape[2])


def _lattice_matrix(w: torch.Tensor, stride: tuple[int, ...], transposed: bool, channels: str) -> torch.Tensor:
    """(M, M) stride-aware pair terms of the output filters w (M, C, *k), diagonal not yet zeroed."""
    if channels == "summed" and not transposed:
        terms = _strided_summed(w, stride, 1, adjacent=False)[0]
        return (terms + terms.T) / 2
    if channels == "summed":
        real, imag = _filter_gram(_phases_as_channels(w, stride).unsqueeze(0))
        return (real.square() + imag.square()).sum(0)
    if not transposed:
        folded = _phase_spectra(w, stride)[0].square().sum((3, 4))  # (M, C, H'): folded power spectra
        feats = (folded.sum(1) if channels == "cross" else folded).reshape(w.shape[0], -1)
        return feats @ feats.T
    basis = _phase_basis(tuple(w.shape[2:]), stride, w.dtype, w.device)
    z = _phase_rows(
        w, basis, int(np.prod(stride)), 1, per_channel=channels == "per_channel"
    )  # (H', C, 1, M, 2P) / (H', 1, M, C, 2P)
    if channels == "cross":  # <T_i, T_j>, T_i = sum_c v_ic v_ic^H
        feats = torch.stack(_gram_parts(z)).squeeze(2).permute(2, 0, 1, 3, 4)
        feats = feats.reshape(w.shape[0], -1)
        return feats @ feats.T
    p = z.shape[-1] // 2
    re, im = z[..., :p], z[..., p:]
    real, imag = re @ re.mT + im @ im.mT, re @ im.mT - im @ re.mT  # v_ic^H v_jc: (H', C, 1, M, M)
    return (real.square() + imag.square()).sum((0, 1, 2))


# --------------------------------------------------------------------------- public API


def conv_similarity(
    weight: torch.Tensor,
    *,
    pairs: str = "all",
    channels: str = "per_channel",
    normalize: bool = False,
    reduction: str = "sum",
    groups: int = 1,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> torch.Tensor:
    r"""Convolutional Similarity of one conv weight (M, C, \*kernel): a differentiable 0-dim tensor.

    .. math::
        L(W) = \sum_{g}\sum_{(i,j)\in\mathcal P_g} T^{\text{channels}}_{ij}(\tilde W)

    with :math:`T` as in the module docstring, :math:`\tilde W` = ``normalize_kernels(W)`` if
    ``normalize`` else :math:`W`, and :math:`\mathcal P_g` the pairs inside group g.

    Stride-aware terms (issue 10), :math:`\equiv` modulo the stride s per axis. A **transposed** conv
    meets only the lags on the lattice :math:`s\mathbb Z` (:mod:`convsim.theory`), so with
    :math:`K_{ic}=W[c,i]` its output filters

    .. math::
        T^{pc}_{ij}=\sum_c\sum_{\ell\equiv0}\big((K_{ic}\star K_{jc})[\ell]\big)^2,\quad
        T^{sum}_{ij}=\sum_{\ell\equiv0}\Big(\sum_c(K_{ic}\star K_{jc})[\ell]\Big)^2,\quad
        T^{x}_{ij}=\sum_{c,d}\sum_{\ell\equiv0}\big((K_{ic}\star K_{jd})[\ell]\big)^2 .

    A strided **forward** conv meets the polyphase correlations
    :math:`P^\psi_{ic,jd}[\ell]=\sum_{n\equiv\psi}K_{ic}[n]\,K_{jd}[n+\ell]`:

    .. math::
        T^{pc}_{ij}=\sum_c\sum_\psi\sum_\ell\big(P^\psi_{ic,jc}[\ell]\big)^2,\quad
        T^{sum}_{ij}=\sum_\psi\sum_\ell\Big(\sum_c P^\psi_{ic,jc}[\ell]\Big)^2,\quad
        T^{x}_{ij}=\sum_{c,d}\sum_\psi\sum_\ell\big(P^\psi_{ic,jd}[\ell]\big)^2 .

    Each bounds :math:`|\langle F_i,F_j\rangle|^2` up to an input-only factor (Cauchy–Schwarz, under
    the input assumption of its channel mode) and is the stride-1 term at stride 1. How: with the
    phase sub-kernels :math:`K^\varphi[u]=K[\varphi+su]` of size :math:`k'=\lceil k/s\rceil` and
    their spectra :math:`\hat K^\varphi` at size :math:`2k'-1`,
    :math:`\sum_\psi\sum_\ell(P^\psi_{ic,jd}[\ell])^2=\sum_{\delta\equiv0}R_{ic}[\delta]R_{jd}[\delta]
    =\frac1{Q'}\sum_\omega F_{ic}F_{jd}` with the folded power spectrum
    :math:`F=\sum_\varphi|\hat K^\varphi|^2` (the DFT of the autocorrelation on the lattice), and
    :math:`\sum_{\ell\equiv0}((K_{ic}\star K_{jd})[\ell])^2=\frac1{Q'}\sum_\omega|v_{ic}^Hv_{jd}|^2
    =\frac1{Q'}\sum_\omega\langle v_{ic}v_{ic}^H, v_{jd}v_{jd}^H\rangle` with
    :math:`v=(\hat K^\varphi)_\varphi`. Both are inner products of per-filter features (one value
    per frequency forward, :math:`2s^{2d}` transposed), so per-channel and cross stay linear in M;
    ``summed`` stays quadratic. A stride of at least the kernel size k on an axis acts as stride k
    there (no lag but 0 lies on the lattice and every phase holds one tap).

    Args:
        weight: Conv1d/2d/3d weight (M, C, \*kernel), or with ``transposed=True`` a
            ConvTranspose1d/2d/3d weight (C, M/groups, \*kernel) whose output channels are paired
            (within their group); any floating dtype and device.
        pairs: ``"all"`` (every unordered pair i < j) or ``"adjacent"`` (j = i + 1; with
            ``"per_channel"`` this is the authors' released definition).
        channels: ``"per_channel"`` (released), ``"summed"`` (OCNN-like) or ``"cross"``.
        normalize: rescale every output kernel to unit norm first (scale invariant per filter).
        reduction: ``"sum"`` or ``"mean"`` (divided by ``num_pairs(M, pairs, groups)``).
        groups: filters are paired only within each of ``groups`` consecutive blocks of output channels.
        stride: the layer's stride, an int or one per spatial axis; 1 (default) is the paper's CS.
        transposed: the weight is a transposed conv's.

    Cost: per-channel and cross, O(M·C·K·Q) for both pair sets; summed all-pairs, O(M²·C·Q). With a
    stride, per-channel and cross stay linear in M: O(M·C·K·Q') forward and O(M·C·(K + s^{2d})·Q')
    transposed (:math:`Q'=\prod_a(2k'_a-1)\approx Q/s^d`); summed forward is O(M²·C·s^d·Q).
    Double backward (``create_graph=True``) is not supported for per-channel and cross.

    Example:
        >>> w = torch.randn(8, 3, 3, 3, dtype=torch.float64, requires_grad=True)
        >>> conv_similarity(w).backward()
        >>> w.grad.shape
        torch.Size([8, 3, 3, 3])
        >>> released = conv_similarity(w, pairs="adjacent", channels="per_channel")
        >>> bool(0 < released < conv_similarity(w))  # adjacent pairs: 7 of the 28 nonnegative terms
        True
        >>> torch.allclose(conv_similarity(2 * w), 16 * conv_similarity(w))  # fourth order in the weights
        True
        >>> up = torch.randn(8, 4, 4, 4, dtype=torch.float64)  # ConvTranspose2d(8, 4, 4, stride=2).weight
        >>> lattice = conv_similarity(up, stride=2, transposed=True)  # pairs of its 4 output channels
        >>> bool(lattice <= conv_similarity(up, transposed=True))  # only the lags on the lattice 2Z remain
        True
    """
    _check_weight(weight, groups, transposed)
    _check_options(pairs, channels, reduction, normalize)
    filters = output_filters(weight, groups) if transposed else weight
    stride = _effective_stride(filters.shape[2:], stride)
    n = num_pairs(filters.shape[0], pairs, groups)
    if n == 0:  # one filter per group: exactly 0, still differentiable
        return weight.sum() * 0
    with _no_autocast(weight.device):
        w = normalize_kernels(filters) if normalize else filters
        if stride != (1,) * len(stride):
            total = _lattice_loss(w, stride, transposed, pairs, channels, groups)
        elif channels == "summed":
            total = _summed_loss(w, pairs, groups)
        else:
            total = _parseval_loss(w, pairs, channels, groups)
    if reduction == "mean":
        total = total / max(n, 1)
    return total


def conv_similarity_matrix(
    weight: torch.Tensor,
    channels: str = "per_channel",
    *,
    normalize: bool = False,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
    groups: int = 1,
) -> torch.Tensor:
    r"""(M, M) symmetric tensor of the pair terms :math:`T_{ij}` with a zero diagonal, for heat maps.

    Its sum is twice ``conv_similarity(weight, pairs="all", channels=channels, normalize=normalize)``
    (with the same ``stride`` and ``transposed``) and its first off-diagonal sums to the adjacent
    loss. The table covers every pair of output filters, across groups too; ``groups`` only
    regroups a transposed weight (C, M/groups, \*k) into its M output filters. Cost O(M²·C·Q) (it
    is an M×M table).

    Example:
        >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> mat = conv_similarity_matrix(w)
        >>> torch.allclose(mat.sum() / 2, conv_similarity(w))
        True
        >>> torch.allclose(conv_similarity_matrix(w, stride=2).sum() / 2, conv_similarity(w, stride=2))
        True
    """
    _check_weight(weight, groups, transposed)
    _check_options("all", channels, "sum", normalize)
    filters = output_filters(weight, groups) if transposed else weight
    stride = _effective_stride(filters.shape[2:], stride)
    with _no_autocast(weight.device):
        w = normalize_kernels(filters) if normalize else filters
        m = w.shape[0]
        if stride != (1,) * len(stride):
            mat = _lattice_matrix(w, stride, transposed, channels)
        else:
            mat = _plain_matrix(w, channels)
    return mat * (1 - torch.eye(m, dtype=mat.dtype, device=mat.device))


def _plain_matrix(w: torch.Tensor, channels: str) -> torch.Tensor:
    """(M, M) stride-1 pair terms of the filters w (M, C, *k), diagonal not yet zeroed."""
    spec = _half_spectrum(w)  # (M, C, 2, H)
    if channels == "summed":
        real, imag = _filter_gram(spec.unsqueeze(0))  # (H, M, M)
        return (real.square() + imag.square()).sum(0)
    power = _power(spec)  # (M, C, H)
    if channels == "cross":
        power = power.sum(1)
    power = power.reshape(w.shape[0], -1)
    return power @ power.T


class ConvSimilarity(nn.Module):
    r"""CS regulariser of a model: ``reg()`` returns :math:`\beta\sum_l L(W_l)` over the selected conv layers.

    Every Conv1d/2d/3d with at least two output channels per group is selected (stem and 1×1
    shortcuts included) unless ``include``/``exclude`` predicates ``(name, module) -> bool`` say
    otherwise; grouped convs are paired within their groups. The module holds no parameters of its
    own and reads the weights on every call, so it works after ``model.to(...)`` and under
    DistributedDataParallel. Options are those of :func:`conv_similarity`. With
    ``stride_aware=True`` each layer's CS uses the layer's own ``stride`` (issue 10); the default
    ``False`` uses stride 1 for every layer, the paper's definition.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> reg = ConvSimilarity(net, beta=0.01)
        >>> reg.layers
        ['0', '2']
        >>> loss = reg()  # add to the task loss before backward()
        >>> values = reg.per_layer()  # unweighted values, for logging
        >>> torch.allclose(loss, 0.01 * (values["0"] + values["2"]))
        True
        >>> torch.allclose(values["2"], conv_similarity(net[2].weight))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        beta: float = 1.0,
        pairs: str = "all",
        channels: str = "per_channel",
        normalize: bool = False,
        reduction: str = "sum",
        include: Predicate | None = None,
        exclude: Predicate | None = None,
        stride_aware: bool = False,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"beta must be a number, got {type(beta).__name__}")
        _check_options(pairs, channels, reduction, normalize)
        if not isinstance(stride_aware, bool):
            raise TypeError(f"stride_aware must be a bool, got {type(stride_aware).__name__}")
        selected = select_conv_layers(model, include, exclude)
        if not selected:
            raise ValueError("no conv layer with at least 2 output channels per group was selected in the model")
        self.beta = float(beta)
        self.options: dict[str, Any] = dict(pairs=pairs, channels=channels, normalize=normalize, reduction=reduction)
        self.stride_aware = stride_aware
        # A plain list: the model's parameters must not become this module's parameters.
        self._selected = selected

    @property
    def layers(self) -> list[str]:
        """Names of the selected conv layers, in ``model.named_modules()`` order."""
        return [name for name, _ in self._selected]

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Unweighted CS of every selected layer: name -> differentiable 0-dim tensor."""
        return {name: conv_similarity(m.weight, **self._layer_options(m)) for name, m in self._selected}

    def _layer_options(self, module: AnyConvLayer) -> dict[str, Any]:
        """The conv_similarity arguments of one selected layer: its groups, whether it is transposed, and
        its stride if stride-aware (the weight goes in raw: conv_similarity regroups a transposed one)."""
        stride = module.stride if self.stride_aware else 1
        return dict(groups=module.groups, stride=stride, transposed=is_transposed(module), **self.options)

    def forward(self) -> torch.Tensor:
        return self.beta * torch.stack(list(self.per_layer().values())).sum()

    @torch.no_grad()
    def step(self, lr: float) -> torch.Tensor:
        r"""Decoupled CS: one step :math:`w \leftarrow w - \mathrm{lr}\,\nabla_w(\beta\,L_{CS}(w))`, in place.

        Applied to every selected conv weight that requires grad, outside any optimizer, the way
        AdamW decouples weight decay from Adam: call it after ``optimizer.step()`` with the current
        learning rate, and the CS gradient never enters the momentum buffers or moment estimates.
        ``.grad`` and every optimizer state are left untouched (the gradient is taken with
        ``torch.autograd.grad`` on detached copies). Under DistributedDataParallel no reduction is
        needed: after the optimizer step the weights are identical on every rank and the CS depends
        on the weights alone, so every rank takes the identical step.

        Returns :math:`\beta\,L_{CS}` before the step, detached.

        Example:
            >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
            >>> reg = ConvSimilarity(net, beta=0.1)
            >>> before = reg.step(lr=0.5)
            >>> bool(reg().detach() < before), net[0].weight.grad is None
            (True, True)
        """
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
            raise ValueError(f"lr must be a number >= 0, got {lr!r}")
        selected = [(name, m) for name, m in self._selected if m.weight.requires_grad]
        if not selected:
            return self().detach()
        leaves = [m.weight.detach().requires_grad_(True) for _, m in selected]
        with torch.enable_grad():
            values = [conv_similarity(w, **self._layer_options(m)) for w, (_, m) in zip(leaves, selected, strict=True)]
            value = self.beta * torch.stack(values).sum()
            grads = torch.autograd.grad(value, leaves)
        for (_, m), g in zip(selected, grads, strict=True):
            m.weight.sub_(g, alpha=float(lr))
        return value.detach()

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"beta={self.beta}, {opts}, stride_aware={self.stride_aware}, layers={len(self._selected)}"


def cs_initialize(
    model: nn.Module,
    iterations: int = 500,
    lr: float = 2e-3,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = False,
    **cs_options: Any,
) -> list[float]:
    r"""Iterative CS initialisation: minimise only :math:`L_{CS}` of the conv weights for ``iterations`` steps.

    No data is used. With ``optimizer=None`` a fresh ``Adam(lr)`` over the selected conv weights is
    used and thrown away afterwards (the released procedure, spec §9.2). Passing the *training*
    optimizer instead runs the steps through it, so its state (e.g. SGD momentum buffers) carries
    on into training: the coupling the paper names as future work. Only the selected conv weights
    receive gradients; other parameters and buffers (BatchNorm statistics) are left untouched.
    ``cs_options`` go to :class:`ConvSimilarity` (``pairs``, ``channels``, ``normalize``,
    ``reduction``, ``include``, ``exclude``, ``beta``, ``stride_aware``).

    Returns the CS loss before each step (``iterations`` floats; one host sync at the end).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> history = cs_initialize(net, iterations=20)
        >>> history[-1] < history[0]
        True
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise TypeError(f"iterations must be an int, got {type(iterations).__name__}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if optimizer is None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    reg = ConvSimilarity(model, **cs_options)
    weights = [m.weight for _, m in reg._selected if m.weight.requires_grad]
    if not weights:
        raise ValueError("none of the selected conv weights requires grad")
    opt = optimizer if optimizer is not None else torch.optim.Adam(weights, lr=lr)
    history: list[torch.Tensor] = []
    steps: Iterable[int] = range(iterations)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="CS init", leave=False)
    with torch.enable_grad():
        for _ in steps:
            opt.zero_grad(set_to_none=True)
            for w in weights:  # also those the passed optimizer does not hold
                w.grad = None
            loss = reg()
            loss.backward()
            opt.step()
            history.append(loss.detach())
    opt.zero_grad(set_to_none=True)
    for w in weights:
        w.grad = None
    return torch.stack(history).tolist() if history else []
