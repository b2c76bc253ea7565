r"""Within-layer channel redundancy: a streaming feature-map similarity metric.

For a conv layer with M output channels the measured activation is the layer's **output** (the
pre-activation map, bias included), or ``activation(output)`` when an activation is given. Each
sample's map of channel i is flattened over its positions; over everything seen by ``update`` the
metric accumulates, in float64,

.. math::
    G=\sum_{n}\sum_{p}f_{n,p}f_{n,p}^\top\in\mathbb R^{M\times M},\qquad
    s=\sum_n\sum_p f_{n,p},\qquad P=\#\text{(samples}\times\text{positions)},

never the activations themselves. Feature-map cosines are taken from the **pooled** Gram,
:math:`\cos_{ij}=G_{ij}/\sqrt{G_{ii}G_{jj}}`, i.e. the cosine of channel i's and channel j's maps
concatenated over all samples (the quantity the kernel identity of :mod:`convsim.theory` predicts,
summed over inputs). With ``centered=True`` they are correlation coefficients from the covariance
:math:`\Sigma=G/P-\mu\mu^\top`, :math:`\mu=s/P` (per-channel mean over samples × positions). A
channel whose maps are all zero (or constant, when centred) has cosine 0 with every other channel.

Per layer, ``compute()`` returns Python floats:

* ``fm_abs_cos`` — mean of :math:`|\cos_{ij}|` over the M(M-1)/2 pairs i < j;
* ``fm_frac_above`` — fraction of those pairs with :math:`|\cos_{ij}|>` ``threshold`` (0.5);
* ``fm_effective_rank`` — participation ratio :math:`(\sum\lambda)^2/\sum\lambda^2=
  (\mathrm{tr}\,A)^2/\|A\|_F^2` of A = G (uncentred) or :math:`\Sigma` (centred), between 1 and M;
* ``kernel_abs_cos`` — mean :math:`|\cos|` over pairs of the flattened kernels (layer weight);
* ``cs`` — the layer's all-pairs per-channel Convolutional Similarity
  (:func:`~convsim.similarity.conv_similarity`, within groups).

A layer with fewer than two channels has no pairs: its pair statistics are 0.

Under ``torch.distributed`` the state of every rank is summed before ``compute()`` (torchmetrics'
``sync_on_compute``): each rank updates on its own shard and all get the statistics of the union.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from convsim._internal.hooks import capture, resolve_modules
from convsim._internal.layers import ALL_CONV_TYPES, AnyConvLayer, filters, select_conv_layers
from convsim._internal.modes import eval_mode
from convsim.similarity import conv_similarity

_CHUNK = 1 << 22  # float64 elements converted at once in _gram_stats
KEYS = ("fm_abs_cos", "fm_frac_above", "fm_effective_rank", "kernel_abs_cos", "cs")


def _gram_stats(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(G, s, P) of activations (N, M, \\*spatial) or (N, M) in float64."""
    if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
        raise TypeError("activations must be a floating-point torch.Tensor")
    if activations.dim() < 2:
        raise ValueError(f"expected activations of shape (N, M, *spatial), got shape {tuple(activations.shape)}")
    a = activations.detach()
    m = a.shape[1]
    gram = torch.zeros(m, m, dtype=torch.float64, device=a.device)
    sums = torch.zeros(m, dtype=torch.float64, device=a.device)
    # float64 copies of a few samples at a time (~32 MB), not of the whole batch
    per_sample = max(a[:1].numel(), 1)
    for chunk in a.split(max(1, _CHUNK // per_sample)):
        f = chunk.transpose(0, 1).reshape(m, -1).double()
        gram += f @ f.T
        sums += f.sum(dim=1)
    return gram, sums, a.numel() // max(m, 1)


def _second_moment(gram: torch.Tensor, sums: torch.Tensor, count: int, centered: bool) -> torch.Tensor:
    """G itself, or the covariance G/P - mu mu^T (clamped diagonal) when centred."""
    if not centered:
        return gram
    if count == 0:
        return torch.zeros_like(gram)
    mu = sums / count
    cov = gram / count - torch.outer(mu, mu)
    # rounding can make a constant channel's variance slightly negative
    return cov - torch.diag(cov.diagonal().clamp_max(0))


def _cosine_from_moment(a: torch.Tensor) -> torch.Tensor:
    """Normalise a Gram/covariance to cosines; zero-variance channels give 0 (no NaN)."""
    norms = a.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    return torch.where(denom > 0, a / denom.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(a))


def _offdiag(mat: torch.Tensor) -> torch.Tensor:
    """Upper off-diagonal entries (i < j) as a 1-D tensor."""
    i, j = torch.triu_indices(mat.shape[0], mat.shape[0], 1, device=mat.device)
    return mat[i, j]


def _mean_or_zero(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0


def kernel_cosine_matrix(weight: torch.Tensor) -> torch.Tensor:
    r"""(M, M) cosine similarities of the flattened kernels of a conv weight (M, C, \*kernel).

    Zero kernels give 0 (also on the diagonal).

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 1, 2)
        >>> round(kernel_cosine_matrix(w)[0, 1].item(), 4)
        0.7071
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or not weight.is_floating_point():
        raise ValueError("weight must be a floating-point tensor of shape (M, C, *kernel)")
    w = weight.detach().reshape(weight.shape[0], -1)
    return _cosine_from_moment(w @ w.T)


def feature_map_cosine(activations: torch.Tensor, centered: bool = False) -> torch.Tensor:
    r"""(M, M) pooled cosine (or, centred, correlation) of the channels of (N, M, \*spatial).

    :math:`\cos_{ij}=G_{ij}/\sqrt{G_{ii}G_{jj}}` with :math:`G` summed over samples and positions;
    float64; the same definition :class:`FeatureMapSimilarity` streams.

    Example:
        >>> h = torch.randn(8, 3, 5, 5)
        >>> round(feature_map_cosine(torch.cat([h, h[:, :1]], 1))[0, 3].item(), 12)   # a copied channel
        1.0
    """
    gram, sums, count = _gram_stats(activations)
    return _cosine_from_moment(_second_moment(gram, sums, count, centered))


def effective_rank(gram: torch.Tensor) -> torch.Tensor:
    r"""Participation ratio :math:`(\sum_k\lambda_k)^2/\sum_k\lambda_k^2` of a symmetric PSD matrix.

    Computed as :math:`(\mathrm{tr}\,A)^2/\|A\|_F^2` (no eigendecomposition); 1 for rank one, M for
    a multiple of the identity, 0 for the zero matrix. Returns a 0-dim tensor.

    Example:
        >>> effective_rank(torch.eye(4)).item()
        4.0
    """
    if not isinstance(gram, torch.Tensor) or gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError("gram must be a square (M, M) tensor")
    fro2 = gram.square().sum()
    ratio = gram.diagonal().sum().square() / fro2.clamp_min(torch.finfo(gram.dtype).tiny)
    return torch.where(fro2 > 0, ratio, fro2 * 0)


def _layer_summary(moment: torch.Tensor, weight: torch.Tensor, groups: int, threshold: float) -> dict[str, float]:
    """One layer's numbers from its feature-map second moment and its filters (C_out, C_in/groups, *k)."""
    cos = _offdiag(_cosine_from_moment(moment)).abs()
    kcos = _offdiag(kernel_cosine_matrix(weight)).abs()
    with torch.no_grad():
        cs = conv_similarity(weight.detach(), groups=groups) if weight.shape[0] // groups >= 2 else weight.new_zeros(())
    return {
        "fm_abs_cos": _mean_or_zero(cos),
        "fm_frac_above": _mean_or_zero((cos > threshold).double()),
        "fm_effective_rank": float(effective_rank(moment)),
        "kernel_abs_cos": _mean_or_zero(kcos),
        "cs": float(cs),
    }


def summarize(result: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average every key of a ``compute()`` result over its layers: key -> float.

    Example:
        >>> summarize({"a": {"cs": 1.0, "fm_abs_cos": 0.25}, "b": {"cs": 3.0, "fm_abs_cos": 0.75}})
        {'cs': 2.0, 'fm_abs_cos': 0.5}
    """
    if not isinstance(result, dict) or not result:
        raise ValueError("result must be a non-empty dict layer name -> dict of floats")
    keys = list(next(iter(result.values())))
    return {k: sum(float(v[k]) for v in result.values()) / len(result) for k in keys}


class FeatureMapSimilarity:
    r"""Streaming within-layer feature-map similarity of a model (torchmetrics style).

    ``update(x)`` runs ``model(x)`` under ``torch.no_grad`` with forward hooks on the layers and
    adds each layer's float64 Gram, channel sums and position count to the state (see the module
    docstring for the definitions); ``compute()`` returns ``{layer: {key: float}}`` with the keys
    in :data:`KEYS`; ``reset()`` clears the state. Memory is O(M²) per layer, independent of the
    amount of data.

    The model runs in eval mode during ``update`` (BatchNorm uses running statistics, dropout is
    off, running statistics are not updated) and every module's mode is restored afterwards.

    Args:
        model: the network (a DistributedDataParallel wrapper is looked through).
        layers: names of conv layers to measure; default: those
            :func:`~convsim._internal.layers.select_conv_layers` picks.
        centered: correlation coefficients instead of cosines (per-channel mean removed).
        activation: applied to each layer output before measuring (e.g. ``torch.relu`` for
            post-activation maps of conv → ReLU nets); default None: the conv output itself.
        threshold: |cos| level for ``fm_frac_above``.
        sync_on_compute: when ``torch.distributed`` is initialised with more than one rank,
            ``compute()`` first sums the states of all ranks (one all-reduce per layer), so every
            rank must call it, and must have updated every layer; the local state is kept, so
            updates may continue. False: each rank reports its own data.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> fms = FeatureMapSimilarity(net)
        >>> for _ in range(3):
        ...     _ = fms.update(torch.randn(2, 1, 8, 8))
        >>> sorted(fms.compute()["2"])
        ['cs', 'fm_abs_cos', 'fm_effective_rank', 'fm_frac_above', 'kernel_abs_cos']
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        centered: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        threshold: float = 0.5,
        sync_on_compute: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if activation is not None and not callable(activation):
            raise TypeError("activation must be a callable tensor -> tensor or None")
        modules: dict[str, AnyConvLayer]
        if layers is None:
            modules = dict(select_conv_layers(model))
            if not modules:
                raise ValueError("no conv layer with at least 2 output channels per group was found in the model")
        else:
            if isinstance(layers, str) or not layers:
                raise ValueError("layers must be a non-empty sequence of layer names")
            named = resolve_modules(model, list(layers))
            bad = [n for n, m in named.items() if not isinstance(m, ALL_CONV_TYPES)]
            if bad:
                raise ValueError(f"layers must be Conv1d/2d/3d or ConvTranspose1d/2d/3d modules; not convs: {bad}")
            modules = {n: m for n, m in named.items() if isinstance(m, ALL_CONV_TYPES)}
        self.model = model
        self._modules = modules
        self.centered = bool(centered)
        self.activation = activation
        self.threshold = float(threshold)
        self.sync_on_compute = bool(sync_on_compute)
        self.reset()

    @property
    def layers(self) -> list[str]:
        return list(self._modules)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._gram: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._count: dict[str, int] = {}

    def _accumulate(self, name: str, output: torch.Tensor) -> None:
        if self.activation is not None:
            output = self.activation(output)
        gram, sums, count = _gram_stats(output)
        if name in self._gram:
            self._gram[name] += gram
            self._sums[name] += sums
            self._count[name] += count
        else:
            self._gram[name], self._sums[name], self._count[name] = gram, sums, count

    @torch.no_grad()
    def update(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run ``model(x, *args, **kwargs)`` and accumulate every measured layer; returns the output."""
        with eval_mode(self.model), capture(self.model, self.layers, fn=self._accumulate):
            out = self.model(x, *args, **kwargs)
        return out

    def compute(self) -> dict[str, dict[str, float]]:
        """Per layer: ``{fm_abs_cos, fm_frac_above, fm_effective_rank, kernel_abs_cos, cs}`` (floats)."""
        if not self._gram:
            raise RuntimeError("compute() called before update(): no feature maps were seen")
        out = {}
        for name, module in self._modules.items():
            if name not in self._gram:
                raise RuntimeError(f"layer {name!r} was never called during update()")
            gram, sums, count = self._synced(name)
            moment = _second_moment(gram, sums, count, self.centered)
            out[name] = _layer_summary(moment, filters(module), module.groups, self.threshold)
        return out

    def _synced(self, name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This layer's (Gram, sums, count), summed over ranks when syncing applies."""
        gram, sums, count = self._gram[name], self._sums[name], self._count[name]
        if not (self.sync_on_compute and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return gram, sums, count
        m = sums.numel()
        flat = torch.cat([gram.flatten(), sums.flatten(), gram.new_tensor([float(count)])])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # float64: counts stay exact below 2**53
        return flat[: m * m].view_as(gram), flat[m * m : m * m + m].view_as(sums), int(flat[-1].item())
