"""Finding the conv layers of a model: the one layer-selection rule every regulariser shares."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONV_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
ALL_CONV_TYPES = CONV_TYPES + TRANSPOSED_CONV_TYPES
ConvLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d
AnyConvLayer = ConvLayer | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d
Predicate = Callable[[str, nn.Module], bool]


def is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is a ConvTranspose1d/2d/3d (weight laid out (C_in, C_out/groups, *k))."""
    return isinstance(module, TRANSPOSED_CONV_TYPES)


def filters(module: AnyConvLayer) -> torch.Tensor:
    """The layer's weight as its output filters, shape (C_out, C_in/groups, *k), differentiable.

    A forward conv's weight already is. A transposed conv's weight (C_in, C_out/groups, *k) is
    regrouped so that row ``i`` holds the kernels output channel ``i`` applies to its group's inputs.
    A transposed conv convolves where a forward conv correlates, so these filters are the
    transposed layer's up to a spatial flip, which no pairwise correlation or cosine measure sees.
    """
    return output_filters(module.weight, module.groups) if is_transposed(module) else module.weight


def output_filters(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed conv's weight (C_in, C_out/groups, *k) as its output filters (C_out, C_in/groups, *k).

    Row ``i`` holds ``weight[c, i mod (C_out/groups)]`` for the inputs ``c`` of ``i``'s group.
    """
    c_in, m_per_group, *k = weight.shape
    grouped = weight.reshape(groups, c_in // groups, m_per_group, *k).transpose(1, 2)
    return grouped.reshape(groups * m_per_group, c_in // groups, *k)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any DistributedDataParallel, DataParallel or ``torch.compile`` wrappers.

    Layer names are then the same however the model is wrapped: no ``module.`` (DDP) and no
    ``_orig_mod.`` (``torch.compile``) prefix, in any nesting order.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def select_conv_layers(
    model: nn.Module,
    include: Predicate | None = None,
    exclude: Predicate | None = None,
    min_out_per_group: int = 2,
) -> list[tuple[str, AnyConvLayer]]:
    """Named Conv1d/2d/3d and ConvTranspose1d/2d/3d layers of ``model`` that a weight regulariser acts on.

    A layer is selected when it has at least ``min_out_per_group`` output channels per group
    (a layer with fewer has no filter pairs), ``include(name, module)`` is true (default: always)
    and ``exclude(name, module)`` is false (default: never). A transposed conv's output channels
    are its filters (:func:`filters`).
    Names are those of ``model.named_modules()`` on the unwrapped model (no ``module.`` prefix
    under DistributedDataParallel, no ``_orig_mod.`` prefix after ``torch.compile``).
    """
    for fn, label in ((include, "include"), (exclude, "exclude")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{label} must be a callable (name, module) -> bool, got {type(fn).__name__}")
    chosen: list[tuple[str, AnyConvLayer]] = []
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, ALL_CONV_TYPES):
            continue
        if module.out_channels // module.groups < min_out_per_group:
            continue
        if include is not None and not include(name, module):
            continue
        if exclude is not None and exclude(name, module):
            continue
        chosen.append((name, module))
    return chosen
