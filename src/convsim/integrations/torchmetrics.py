r"""Feature-map similarity as a ``torchmetrics.Metric``: :class:`FeatureMapSimilarityMetric`.

The same statistics as :class:`convsim.measure.FeatureMapSimilarity` (see :mod:`convsim.measure`
for the definitions): per measured conv layer with M output channels, the float64 Gram
:math:`G=\sum_n\sum_p f_{n,p}f_{n,p}^\top` (M × M), the channel sums :math:`s=\sum_n\sum_p f_{n,p}`
and the count P of samples × positions, each a metric state registered with
``add_state(..., dist_reduce_fx="sum")``. All three are sums over samples, so torchmetrics' own
synchronisation (``compute()`` under DDP, ``merge_state``, ``forward``) gives the statistics of
the union of every rank's data, and ``compute()`` turns them into the same numbers with the same
functions.

Needs ``torchmetrics`` (``pip install convsim[torchmetrics]``); without it, the module imports
but building the metric raises an ``ImportError`` saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convsim._internal.hooks import capture, resolve_modules
from convsim._internal.layers import ALL_CONV_TYPES, AnyConvLayer, filters
from convsim._internal.modes import eval_mode
from convsim.measure import FeatureMapSimilarity, _gram_stats, _layer_summary, _second_moment

INSTALL_HINT = "pip install convsim[torchmetrics]"

if TYPE_CHECKING:
    from torchmetrics import Metric
else:
    try:
        from torchmetrics import Metric
    except ImportError as _error:  # an optional extra: the class below fails when built, not when imported
        _reason = str(_error)

        class Metric:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise ImportError(
                    f"FeatureMapSimilarityMetric needs the torchmetrics package ({_reason}); install it with "
                    f"`{INSTALL_HINT}`, or use convsim.measure.FeatureMapSimilarity"
                )


class FeatureMapSimilarityMetric(Metric):
    r"""Streaming within-layer feature-map similarity of ``model``, as a ``torchmetrics.Metric``.

    ``update(x)`` runs ``model(x)`` under ``torch.no_grad``, in eval mode (every module's mode is
    restored afterwards), with forward hooks that add each layer's float64 Gram, channel sums and
    position count to the states ``gram_<i>``, ``sums_<i>``, ``count_<i>`` (i: the layer's index
    in :attr:`layers`). ``compute()`` returns ``{layer: {key: float}}`` with the keys of
    :data:`convsim.measure.KEYS`, equal to :meth:`convsim.measure.FeatureMapSimilarity.compute` on
    the same data; ``reset()`` clears the states. Memory is O(M²) per layer.

    The model is not a submodule of the metric: its weights stay out of the metric's
    ``state_dict`` and ``.to()``. Keep the metric on the model's device (the states are added to
    there).

    Args:
        model: the network (a DistributedDataParallel or ``torch.compile`` wrapper is looked through).
        layers: names of conv layers to measure; default: those
            :func:`~convsim._internal.layers.select_conv_layers` picks.
        centered: correlation coefficients instead of cosines (per-channel mean removed).
        activation: applied to each layer output before measuring (e.g. ``torch.relu``).
        threshold: |cos| level for ``fm_frac_above``.
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Raises:
        ImportError: torchmetrics is not installed.
        ValueError, TypeError, KeyError: as :class:`convsim.measure.FeatureMapSimilarity` (bad
            layers, no conv layer with two channels per group, ...).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> metric = FeatureMapSimilarityMetric(net)
        >>> for _ in range(3):
        ...     metric.update(torch.randn(2, 1, 8, 8))
        >>> sorted(metric.compute()["2"])
        ['cs', 'fm_abs_cos', 'fm_effective_rank', 'fm_frac_above', 'kernel_abs_cos']
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    model: nn.Module  # set with object.__setattr__ (see __init__)

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        centered: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # the plain metric checks the arguments and picks the layers: one rule for both
        plain = FeatureMapSimilarity(
            model, layers=layers, centered=centered, activation=activation, threshold=threshold
        )
        object.__setattr__(self, "model", model)  # not nn.Module.__setattr__: no submodule
        self.layers: list[str] = plain.layers
        self.centered, self.activation, self.threshold = plain.centered, plain.activation, plain.threshold
        self._convs: dict[str, AnyConvLayer] = {
            name: m
            for name, m in resolve_modules(model, self.layers).items()
            if isinstance(m, ALL_CONV_TYPES)  # all of them: the plain metric checked
        }
        self._index = {name: i for i, name in enumerate(self.layers)}
        for i, module in enumerate(self._convs.values()):
            m = int(module.out_channels)
            self.add_state(f"gram_{i}", default=torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"sums_{i}", default=torch.zeros(m, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"count_{i}", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _accumulate(self, name: str, output: torch.Tensor) -> None:
        if self.activation is not None:
            output = self.activation(output)
        gram, sums, count = _gram_stats(output)
        i = self._index[name]
        for key, value in ((f"gram_{i}", gram), (f"sums_{i}", sums), (f"count_{i}", count)):
            state = getattr(self, key)
            setattr(self, key, state + torch.as_tensor(value, device=state.device))

    @torch.no_grad()
    def update(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Run ``model(x, *args, **kwargs)`` and add every measured layer's statistics to the states."""
        with eval_mode(self.model), capture(self.model, self.layers, fn=self._accumulate):
            self.model(x, *args, **kwargs)

    def compute(self) -> dict[str, dict[str, float]]:
        """Per layer: ``{fm_abs_cos, fm_frac_above, fm_effective_rank, kernel_abs_cos, cs}`` (floats)."""
        out = {}
        for i, (name, module) in enumerate(self._convs.items()):
            count = int(getattr(self, f"count_{i}"))
            if count == 0:
                raise RuntimeError(f"layer {name!r} was never called during update(): no feature maps were seen")
            moment = _second_moment(getattr(self, f"gram_{i}"), getattr(self, f"sums_{i}"), count, self.centered)
            out[name] = _layer_summary(moment, filters(module), module.groups, self.threshold)
        return out
