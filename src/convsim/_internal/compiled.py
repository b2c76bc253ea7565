"""The switch for convsim's optional compiled (numba) CPU kernels.

On by default; the environment variable ``CONVSIM_NUMBA=0`` (the one :mod:`convsim.nnk` reads)
switches them off for the process and :func:`compiled_kernels` for a block. Off, every caller runs
its torch path. :func:`compiled_module` imports a kernel module once, or says numba cannot.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

ENV = "CONVSIM_NUMBA"
_ON = [os.environ.get(ENV, "1") != "0"]  # a stack: compiled_kernels() nests


def compiled_enabled() -> bool:
    """Whether the compiled kernels are switched on (``CONVSIM_NUMBA``, then the innermost :func:`compiled_kernels`).

    Example:
        >>> with compiled_kernels(False):
        ...     compiled_enabled()
        False
    """
    return _ON[-1]


@contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Switch the compiled (numba) kernels on or off inside the block (off: the torch paths only).

    Results agree either way to rounding (the tests hold both paths to the same oracles); off is
    what a user without numba gets, and what runs on GPUs anyway.
    """
    _ON.append(bool(enabled))
    try:
        yield
    finally:
        _ON.pop()


@functools.cache
def compiled_module(name: str) -> ModuleType | None:
    """The numba kernel module ``name``, imported once; None when it cannot be (numba missing, or
    too old or new for this numpy).

    Example:
        >>> compiled_module("convsim._internal.no_such_kernels") is None
        True
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
