"""The switch for convsim's optional compiled (numba) CPU kernels.

On by default; the environment variable ``CONVSIM_NUMBA=0`` (the one :mod:`convsim.nnk` reads)
switches them off for the process and :func:`compiled_kernels` for a block. Off, every caller runs
its torch path. Whether numba imports is each caller's own look-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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
