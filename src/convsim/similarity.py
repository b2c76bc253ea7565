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
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from convsim._internal.layers import Predicate, select_conv_layers

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


def _check_weight(weight: torch.Tensor, groups: int = 1) -> None:
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
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {weight.shape[0]} output channels")


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


class _ParsevalCS(torch.autograd.Function):
    r"""Per-channel or cross CS over all or adjacent pairs within groups, in time linear in M.

    With T (G, m, [C,] H) the weighted power spectra (summed over channels for ``cross``), the loss
    is :math:`L = \sum_{(i,j)}\langle T_i, T_j\rangle` and its gradient is closed-form:
    all pairs, :math:`L = \tfrac12(\|\sum_i T_i\|^2 - \sum_i\|T_i\|^2)`, :math:`dL/dT_i = \sum_j T_j - T_i`;
    adjacent, :math:`dL/dT_i = T_{i-1} + T_{i+1}` and :math:`L = \tfrac12\langle T, dL/dT\rangle`.
    Saves the half spectrum and T (about 4x the weight's size) instead of an autograd graph.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, pairs: str, channels: str, groups: int) -> torch.Tensor:
        basis = _dft_basis(tuple(weight.shape[2:]), weight.dtype, weight.device)
        m, c = weight.shape[:2]
        h = basis.shape[1] // 2
        spec = weight.reshape(m * c, -1) @ basis  # (M*C, 2H)
        power = _power(spec.view(m, c, 2, h))  # (M, C, H)
        if channels == "per_channel":
            t = power.view(groups, m // groups, c, h)
        else:
            t = power.sum(1).view(groups, m // groups, h)
        ctx.basis, ctx.shape, ctx.pairs = basis, weight.shape, pairs
        if pairs == "all":
            total = t.sum(1, keepdim=True)
            ctx.save_for_backward(spec, t, total)
            return 0.5 * (_sq_norm(total) - _sq_norm(t))
        dt = torch.zeros_like(t)
        dt[:, 1:] += t[:, :-1]
        dt[:, :-1] += t[:, 1:]
        ctx.save_for_backward(spec, dt)
        return 0.5 * torch.linalg.vecdot(t.reshape(-1), dt.reshape(-1))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        if ctx.pairs == "all":
            spec, t, total = ctx.saved_tensors
            dt = total - t
        else:
            spec, dt = ctx.saved_tensors
        m, c = ctx.shape[:2]
        h = dt.shape[-1]
        # dS_ic = dT_i(c) (broadcast over c for "cross"); d spec = 2 spec dS; then back through the matmul.
        dspec = spec.view(m, c, 2, h) * dt.view(m, -1, 1, h)
        return (dspec.view(m * c, 2 * h) @ (ctx.basis.T * (2 * grad))).view(ctx.shape), None, None, None


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
    m, c = weight.shape[:2]
    spec = _half_spectrum(weight).view(groups, m // groups, c, 2, -1)
    if pairs == "adjacent":
        re, im = spec[:, :, :, 0], spec[:, :, :, 1]  # (G, m, C, H)
        real = (re[:, :-1] * re[:, 1:] + im[:, :-1] * im[:, 1:]).sum(2)
        imag = (re[:, :-1] * im[:, 1:] - im[:, :-1] * re[:, 1:]).sum(2)
        return (real.square() + imag.square()).sum()
    # Off-diagonal entries only, taken directly: subtracting the (large) diagonal from ||G||_F^2 would
    # lose the value in float32 exactly where this variant gets small (near-orthogonal convolutions).
    real, imag = _filter_gram(spec)
    return real.triu(1).square().sum() + imag.triu(1).square().sum()


# --------------------------------------------------------------------------- public API


def conv_similarity(
    weight: torch.Tensor,
    *,
    pairs: str = "all",
    channels: str = "per_channel",
    normalize: bool = False,
    reduction: str = "sum",
    groups: int = 1,
) -> torch.Tensor:
    r"""Convolutional Similarity of one conv weight (M, C, \*kernel): a differentiable 0-dim tensor.

    .. math::
        L(W) = \sum_{g}\sum_{(i,j)\in\mathcal P_g} T^{\text{channels}}_{ij}(\tilde W)

    with :math:`T` as in the module docstring, :math:`\tilde W` = ``normalize_kernels(W)`` if
    ``normalize`` else :math:`W`, and :math:`\mathcal P_g` the pairs inside group g.

    Args:
        weight: Conv1d/2d/3d weight (M, C, \*kernel), any floating dtype and device.
        pairs: ``"all"`` (every unordered pair i < j) or ``"adjacent"`` (j = i + 1; with
            ``"per_channel"`` this is the authors' released definition).
        channels: ``"per_channel"`` (released), ``"summed"`` (OCNN-like) or ``"cross"``.
        normalize: rescale every output kernel to unit norm first (scale invariant per filter).
        reduction: ``"sum"`` or ``"mean"`` (divided by ``num_pairs(M, pairs, groups)``).
        groups: filters are paired only within each of ``groups`` consecutive blocks of output channels.

    Cost: per-channel and cross, O(M·C·K·Q) for both pair sets; summed all-pairs, O(M²·C·Q).
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
    """
    _check_weight(weight, groups)
    _check_options(pairs, channels, reduction, normalize)
    if num_pairs(weight.shape[0], pairs, groups) == 0:  # one filter per group: exactly 0, still differentiable
        return weight.sum() * 0
    with _no_autocast(weight.device):
        w = normalize_kernels(weight) if normalize else weight
        if channels == "summed":
            total = _summed_loss(w, pairs, groups)
        else:
            total = _ParsevalCS.apply(w, pairs, channels, groups)
    if reduction == "mean":
        total = total / max(num_pairs(weight.shape[0], pairs, groups), 1)
    return total


def conv_similarity_matrix(
    weight: torch.Tensor, channels: str = "per_channel", *, normalize: bool = False
) -> torch.Tensor:
    r"""(M, M) symmetric tensor of the pair terms :math:`T_{ij}` with a zero diagonal, for heat maps.

    Its sum is twice ``conv_similarity(weight, pairs="all", channels=channels, normalize=normalize)``
    and its first off-diagonal sums to the adjacent loss. Cost O(M²·C·Q) (it is an M×M table).

    Example:
        >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> mat = conv_similarity_matrix(w)
        >>> torch.allclose(mat.sum() / 2, conv_similarity(w))
        True
    """
    _check_weight(weight)
    _check_options("all", channels, "sum", normalize)
    with _no_autocast(weight.device):
        w = normalize_kernels(weight) if normalize else weight
        m = w.shape[0]
        spec = _half_spectrum(w)  # (M, C, 2, H)
        if channels == "summed":
            real, imag = _filter_gram(spec.unsqueeze(0))  # (H, M, M)
            mat = (real.square() + imag.square()).sum(0)
        else:
            power = _power(spec)  # (M, C, H)
            if channels == "cross":
                power = power.sum(1)
            power = power.reshape(m, -1)
            mat = power @ power.T
    return mat * (1 - torch.eye(m, dtype=mat.dtype, device=mat.device))


class ConvSimilarity(nn.Module):
    r"""CS regulariser of a model: ``reg()`` returns :math:`\beta\sum_l L(W_l)` over the selected conv layers.

    Every Conv1d/2d/3d with at least two output channels per group is selected (stem and 1×1
    shortcuts included) unless ``include``/``exclude`` predicates ``(name, module) -> bool`` say
    otherwise; grouped convs are paired within their groups. The module holds no parameters of its
    own and reads the weights on every call, so it works after ``model.to(...)`` and under
    DistributedDataParallel. Options are those of :func:`conv_similarity`.

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
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"beta must be a number, got {type(beta).__name__}")
        _check_options(pairs, channels, reduction, normalize)
        selected = select_conv_layers(model, include, exclude)
        if not selected:
            raise ValueError("no conv layer with at least 2 output channels per group was selected in the model")
        self.beta = float(beta)
        self.options: dict[str, Any] = dict(pairs=pairs, channels=channels, normalize=normalize, reduction=reduction)
        # A plain list: the model's parameters must not become this module's parameters.
        self._selected = selected

    @property
    def layers(self) -> list[str]:
        """Names of the selected conv layers, in ``model.named_modules()`` order."""
        return [name for name, _ in self._selected]

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Unweighted CS of every selected layer: name -> differentiable 0-dim tensor."""
        return {name: conv_similarity(m.weight, groups=m.groups, **self.options) for name, m in self._selected}

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
            values = [
                conv_similarity(w, groups=m.groups, **self.options) for w, (_, m) in zip(leaves, selected, strict=True)
            ]
            value = self.beta * torch.stack(values).sum()
            grads = torch.autograd.grad(value, leaves)
        for (_, m), g in zip(selected, grads, strict=True):
            m.weight.sub_(g, alpha=float(lr))
        return value.detach()

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"beta={self.beta}, {opts}, layers={len(self._selected)}"


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
    ``reduction``, ``include``, ``exclude``, ``beta``).

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
