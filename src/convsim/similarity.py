r"""Convolutional Similarity (CS): the squared full cross-correlation of conv-kernel pairs.

For output kernels :math:`K_i, K_j` of a conv weight :math:`W \in \mathbb{R}^{M\times C\times k_1\times\dots}`

.. math::
    T^{pc}_{ij} = \sum_c \|K_{ic} \star K_{jc}\|^2,\quad
    T^{sum}_{ij} = \|\sum_c K_{ic} \star K_{jc}\|^2,\quad
    T^{x}_{ij} = \sum_{c,d} \|K_{ic} \star K_{jd}\|^2

with :math:`\star` the full cross-correlation (all :math:`\prod_a (2k_a-1)` lags).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import Predicate, select_conv_layers

PAIRS = ("all", "adjacent")
CHANNELS = ("per_channel", "summed", "cross")
REDUCTIONS = ("sum", "mean")


def _check(weight: torch.Tensor, pairs: str, channels: str, reduction: str, groups: int) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 3:
        raise ValueError(
            f"expected a conv weight of shape (M, C, *kernel) with at least 3 dims, got shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide the {weight.shape[0]} output channels")


def normalize_kernels(weight: torch.Tensor, eps: Optional[float] = None) -> torch.Tensor:
    """Each output kernel divided by its Frobenius norm; zero kernels stay zero (clamped norm)."""
    norms = weight.flatten(1).norm(dim=1)
    tiny = torch.finfo(weight.dtype).tiny if eps is None else eps
    return weight / norms.clamp_min(tiny).view(-1, *([1] * (weight.dim() - 1)))


def _spectra(weight: torch.Tensor) -> torch.Tensor:
    """Zero-padded DFT of every (i, c) slice at size 2k-1 per axis, flattened: (M, C, Q) complex."""
    dims = tuple(range(2, weight.dim()))
    sizes = [2 * weight.shape[d] - 1 for d in dims]
    return torch.fft.fftn(weight, s=sizes, dim=dims).flatten(2)


def _pair_matrix(spec: torch.Tensor, channels: str) -> torch.Tensor:
    """(M, M) pair terms from (M, C, Q) spectra (Parseval; diagonal included)."""
    q = spec.shape[-1]
    if channels == "summed":
        gram = torch.einsum("icw,jcw->wij", spec.conj(), spec)
        return gram.abs().square().sum(0) / q
    power = spec.real.square() + spec.imag.square()
    if channels == "per_channel":
        return torch.einsum("icw,jcw->ij", power, power) / q
    a = power.sum(1)
    return a @ a.T / q


def conv_similarity_matrix(weight: torch.Tensor, channels: str = "per_channel", *, normalize: bool = False) -> torch.Tensor:
    """(M, M) tensor of CS pair terms :math:`T_{ij}` (zero diagonal) for heat maps and reports.

    Example:
        >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> conv_similarity_matrix(w).shape
        torch.Size([4, 4])
    """
    _check(weight, "all", channels, "sum", 1)
    w = normalize_kernels(weight) if normalize else weight
    mat = _pair_matrix(_spectra(w), channels)
    return mat * (1 - torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device))


def _group_loss(spec: torch.Tensor, pairs: str, channels: str) -> torch.Tensor:
    q = spec.shape[-1]
    if pairs == "adjacent":
        if channels == "summed":
            return (spec[:-1].conj() * spec[1:]).sum(1).abs().square().sum() / q
        power = spec.real.square() + spec.imag.square()
        if channels == "cross":
            power = power.sum(1)
        return (power[:-1] * power[1:]).sum() / q
    if channels == "summed":
        return _pair_matrix(spec, channels).triu(1).sum()
    power = spec.real.square() + spec.imag.square()
    if channels == "cross":
        power = power.sum(1)
    return (power.sum(0).square().sum() - power.square().sum()) / (2 * q)


def num_pairs(out_channels: int, pairs: str = "all", groups: int = 1) -> int:
    """Number of filter pairs a CS loss sums over (within groups)."""
    m = out_channels // groups
    return groups * (m * (m - 1) // 2 if pairs == "all" else max(m - 1, 0))


def conv_similarity(
    weight: torch.Tensor,
    *,
    pairs: str = "all",
    channels: str = "per_channel",
    normalize: bool = False,
    reduction: str = "sum",
    groups: int = 1,
) -> torch.Tensor:
    r"""Convolutional Similarity of one conv weight (M, C, \*kernel), a differentiable 0-dim tensor.

    Args:
        pairs: ``"all"`` (every unordered pair i < j) or ``"adjacent"`` (j = i + 1, the released definition).
        channels: ``"per_channel"``, ``"summed"`` or ``"cross"`` (see the module docstring).
        normalize: rescale every output kernel to unit norm first (scale invariant).
        reduction: ``"sum"`` or ``"mean"`` (divided by the number of pairs).
        groups: filters are paired only within each of ``groups`` consecutive blocks of output channels.

    Example:
        >>> w = torch.randn(8, 3, 3, 3, requires_grad=True)
        >>> conv_similarity(w).backward()
    """
    _check(weight, pairs, channels, reduction, groups)
    w = normalize_kernels(weight) if normalize else weight
    spec = _spectra(w)
    m = weight.shape[0] // groups
    total = sum(_group_loss(spec[g * m : (g + 1) * m], pairs, channels) for g in range(groups))
    total = total * torch.ones((), dtype=weight.dtype, device=weight.device)
    if reduction == "mean":
        n = num_pairs(weight.shape[0], pairs, groups)
        total = total / max(n, 1)
    return total


class ConvSimilarity(nn.Module):
    """CS regulariser of a model: ``reg()`` returns beta times the sum over the selected conv layers.

    Every Conv1d/2d/3d with at least two output channels per group is selected unless
    ``include``/``exclude`` predicates ``(name, module) -> bool`` say otherwise; grouped convs are
    paired within their groups. It only reads weights, so it works under DistributedDataParallel.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> reg = ConvSimilarity(net, beta=0.01)
        >>> reg.layers
        ['0', '2']
        >>> loss = reg()
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
        include: Optional[Predicate] = None,
        exclude: Optional[Predicate] = None,
    ):
        super().__init__()
        _check(torch.zeros(1, 1, 1), pairs, channels, reduction, 1)
        selected = select_conv_layers(model, include, exclude)
        if not selected:
            raise ValueError("no conv layer with at least 2 output channels per group was selected in the model")
        self.beta = float(beta)
        self.options = dict(pairs=pairs, channels=channels, normalize=normalize, reduction=reduction)
        # A plain list: the model's parameters must not become this module's parameters.
        self._selected = selected

    @property
    def layers(self) -> list[str]:
        return [name for name, _ in self._selected]

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Unweighted CS of every selected layer, name -> 0-dim tensor."""
        return {name: conv_similarity(m.weight, groups=m.groups, **self.options) for name, m in self._selected}

    def forward(self) -> torch.Tensor:
        return self.beta * torch.stack(list(self.per_layer().values())).sum()


def cs_initialize(
    model: nn.Module,
    iterations: int = 500,
    lr: float = 2e-3,
    optimizer: Optional[torch.optim.Optimizer] = None,
    progress: bool = False,
    **cs_options,
) -> list[float]:
    """Iterative CS initialisation: minimise only the CS loss of the conv weights for ``iterations`` steps.

    With ``optimizer=None`` a fresh Adam(lr) over the selected conv weights is used and thrown away
    afterwards (the paper's procedure). Passing the *training* optimizer instead runs the steps
    through it, so its momentum state carries on into training: the coupling the paper names as
    future work. Only conv weights receive gradients; other parameters are left untouched.
    Returns the CS loss before each step.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    reg = ConvSimilarity(model, beta=1.0, **cs_options)
    weights = [m.weight for _, m in reg._selected]
    opt = optimizer if optimizer is not None else torch.optim.Adam(weights, lr=lr)
    history: list[float] = []
    steps = range(iterations)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="CS init", leave=False)
    for _ in steps:
        opt.zero_grad(set_to_none=True)
        loss = reg()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return history
