"""Capturing layer outputs with forward hooks (no torchvision, no FX)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from convsim._internal.layers import unwrap


def resolve_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map each name to its submodule of ``model``; unknown names raise ``KeyError`` listing the valid ones."""
    modules = dict(unwrap(model).named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        convs = [n for n, m in modules.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        raise KeyError(f"no module named {missing} in the model; its conv layers are {convs}")
    return {n: modules[n] for n in names}


@contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    fn: Callable[[str, torch.Tensor], None] | None = None,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules while the context is open.

    Without ``fn`` the latest output of each layer is stored in the yielded dict (name -> tensor).
    With ``fn``, ``fn(name, output)`` is called on every forward instead (for streaming
    statistics) and the dict stays empty. Hooks are always removed on exit, also on error.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> with capture(net, ["0"]) as out:
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        >>> tuple(out["0"].shape)
        (1, 2, 3, 3)
    """
    modules = resolve_modules(model, names)
    store: dict[str, torch.Tensor] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            out = output.detach() if detach else output
            if fn is None:
                store[name] = out
            else:
                fn(name, out)

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()
