"""Temporarily switching a model's train/eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the ``with`` block and restore every submodule's previous mode after it.

    Each module gets back its own ``training`` flag (a model in train mode with one BatchNorm
    frozen in eval mode stays so), also when the block raises. Yields ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> net[1].eval()  # doctest: +ELLIPSIS
        BatchNorm1d(...)
        >>> with eval_mode(net):
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
