"""Finding the conv layers of a model: the one layer-selection rule every regulariser shares."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ConvLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d
Predicate = Callable[[str, nn.Module], bool]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def select_conv_layers(
    model: nn.Module,
    include: Predicate | None = None,
    exclude: Predicate | None = None,
    min_out_per_group: int = 2,
) -> list[tuple[str, ConvLayer]]:
    """Named Conv1d/2d/3d layers of ``model`` that a weight regulariser acts on.

    A layer is selected when it has at least ``min_out_per_group`` output channels per group
    (a layer with fewer has no filter pairs), ``include(name, module)`` is true (default: always)
    and ``exclude(name, module)`` is false (default: never). Transposed convs are not selected.
    Names are those of ``model.named_modules()`` on the unwrapped model (no ``module.`` prefix
    under DistributedDataParallel).
    """
    for fn, label in ((include, "include"), (exclude, "exclude")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{label} must be a callable (name, module) -> bool, got {type(fn).__name__}")
    chosen: list[tuple[str, ConvLayer]] = []
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, CONV_TYPES):
            continue
        if module.out_channels // module.groups < min_out_per_group:
            continue
        if include is not None and not include(name, module):
            continue
        if exclude is not None and exclude(name, module):
            continue
        chosen.append((name, module))
    return chosen
