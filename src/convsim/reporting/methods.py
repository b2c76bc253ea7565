"""The methods an experiment compares, by name, and the rule for a run whose network never trained.

One home for these names: the suites build runs from them, the report groups, orders and
compares runs by them. A penalty's method name is its name in :data:`convsim.penalties.PENALTIES`.

Example:
    >>> METHODS[:3], "so" in ORTHO_METHODS, "decov" in ORTHO_METHODS
    (('baseline', 'cs-init', 'cs-reg'), True, False)
    >>> is_collapsed(0.12, num_classes=10), is_collapsed(0.2, num_classes=10)
    (True, False)
"""

from __future__ import annotations

from convsim.penalties import PENALTIES

BASELINE = "baseline"
# Convolutional Similarity: initialisation, regulariser in the loss, both, and decoupled steps.
CS_METHODS = ("cs-init", "cs-reg", "cs-init+reg", "cs-decoupled")
CS_REG_METHODS = ("cs-reg", "cs-init+reg", "cs-decoupled")  # CS acting during training (take beta)
CS_INIT_METHODS = ("cs-init", "cs-init+reg")  # CS before training (take init_iters)
PENALTY_METHODS = PENALTIES
ORTHO_METHODS = tuple(p for p in PENALTIES if p != "decov")  # kernel orthogonality; DeCov decorrelates activations
METHODS = (BASELINE, *CS_METHODS, *PENALTY_METHODS)  # also the order of tables and legends

COLLAPSE_FACTOR = 1.5  # accuracy below this multiple of chance: the network did not train


def is_collapsed(accuracy: float, num_classes: int) -> bool:
    """True when ``accuracy`` (a fraction) is below 1.5x chance (``1 / num_classes``).

    Such a network did not train (e.g. kernels shrunk to ~0 by the raw CS initialisation on a
    model without BatchNorm), so its feature-map statistics describe a degenerate network.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return accuracy < COLLAPSE_FACTOR / num_classes


def method_rank(method: str) -> int:
    """Position of a method in :data:`METHODS` (unknown methods last)."""
    return METHODS.index(method) if method in METHODS else len(METHODS)
