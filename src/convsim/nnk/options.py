r"""The settings of an NNK computation, validated once: :class:`NNKOptions`.

:func:`~convsim.nnk.nnk_neighbors`, :func:`~convsim.nnk.nnk_graph`,
:func:`~convsim.nnk.channel_overlap`, :func:`~convsim.nnk.channel_loo_error` and
:func:`~convsim.nnk.layer_overlap` all take the same settings, either as keywords
(``nnk_neighbors(X, k=30)``) or as one object (``nnk_neighbors(X, options=NNKOptions(k=30))``);
keywords given next to ``options`` override its fields. Three names select three different things:

* ``search``: the k-nearest-neighbour search that finds the candidates (``"auto"``, ``"torch"``,
  ``"faiss"``, ``"kdtree"``; :data:`~convsim.nnk.search.SEARCHES`).
* ``solver``: the algorithm for the non-negative quadratic program, ``"exact"`` (Lawson--Hanson
  active set), ``"pgd"`` (projected gradient descent) or ``"pruning"`` (the authors' released
  one-way pruning solver, tolerance ``pruning_tol``; :data:`~convsim.nnk.solvers.SOLVERS`).
* ``solver_options["engine"]``: how the exact and pruning solvers run, ``"auto"``, ``"torch"``
  (batched tensor operations) or ``"numba"`` (the compiled solvers of the ``fast`` extra;
  :data:`~convsim.nnk.solvers.ENGINES`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, TypeGuard

import torch

from convsim.nnk.search import SEARCHES, faiss_available
from convsim.nnk.solvers import ENGINES, SOLVERS, active_set, projected_gradient, pruning

__all__ = ["NNKOptions", "resolve_options", "KERNELS", "DUPLICATES"]

KERNELS = ("cosine", "gaussian")
DUPLICATES = ("keep", "drop")
_SOLVER_FUNCTIONS: dict[str, Callable[..., Any]] = {"exact": active_set, "pgd": projected_gradient, "pruning": pruning}
# solver keywords that NNKOptions sets from its own fields: name -> field
_OWN_SOLVER_OPTIONS = {"pruning": {"tol": "pruning_tol"}}
# names of earlier versions, for the error message of a stale call
_RENAMED = {"backend": "search"}
_RENAMED_SOLVERS = {"fast": "pgd"}
_RENAMED_SOLVER_OPTIONS = {"backend": "engine"}


@dataclass(frozen=True)
class NNKOptions:
    r"""Settings of an NNK computation (frozen; every field is checked when it is created).

    Attributes:
        k: candidates per query (an int >= 1); needs ``k < n`` points (``k <= n`` with queries).
        kernel: ``"cosine"`` (:math:`\tfrac12+\tfrac12\cos`) or ``"gaussian"``.
        sigma: Gaussian bandwidth (a number > 0); ``None`` = per query, the distance to its k-th
            candidate / 3. Only for ``kernel="gaussian"``.
        solver: ``"exact"`` (batched Lawson--Hanson active set,
            :func:`~convsim.nnk.solvers.active_set`; the true optimum), ``"pgd"`` (batched
            projected gradient descent, :func:`~convsim.nnk.solvers.projected_gradient`, weights
            below 1e-6 zeroed) or ``"pruning"`` (the one-way pruning solver of the authors'
            released code, :func:`~convsim.nnk.solvers.pruning`: reproduces published numbers,
            can miss the optimum).
        pruning_tol: the pruning solver's tolerance (a number in [0, 1); default 1e-6, PyNNK's;
            the weight threshold of DeepNNK and CW-DeepNNK is 1e-10): its weight floor, stop rule
            and near-duplicate collapse (:math:`K_{ij} > 1-` ``pruning_tol``).
            Only used by ``solver="pruning"`` (and recorded by :meth:`summary` only then).
        threshold: weights at or below it (a number >= 0) are set to 0 and not counted.
        jitter: :math:`\delta` >= 0, added to the diagonal of :math:`K_{S,S}` for the solve.
        duplicates: ``"keep"`` or ``"drop"`` candidates with :math:`K_{ij}\ge1-` ``dup_tol``
            (see :mod:`convsim.nnk.neighbors`).
        dup_tol: duplicate tolerance, a number in [0, 1).
        search: the k-NN candidate search: ``"auto"`` (FAISS when importable and on CPU, else
            torch), ``"torch"`` (blockwise matmul + top-k), ``"faiss"`` (flat L2 index; needs
            ``faiss``) or ``"kdtree"`` (exact ``scipy.spatial.cKDTree``, CPU; pays off for large n
            in few dimensions).
        max_elements: bound on the floats held per search/solve block (an int >= 1).
        dtype: floating dtype of the kernels and the solver (the search uses the input's dtype).
        threads: CPU threads for the many small torch operations (kernels, masks and the torch
            solver), which run fastest single-threaded; ``None`` keeps torch's setting. The
            search's large products and the compiled (numba) kernels use
            ``torch.get_num_threads()``; the compiled solver's can be set in ``solver_options``.
        solver_options: extra keywords of the solver function (``"exact"``:
            :func:`~convsim.nnk.solvers.active_set`, e.g. ``{"engine": "torch", "kkt_tol": 1e-9}``;
            ``"pgd"``: :func:`~convsim.nnk.solvers.projected_gradient`, e.g.
            ``{"max_iter": 20000}``; ``"pruning"``: :func:`~convsim.nnk.solvers.pruning`, e.g.
            ``{"engine": "torch"}``, its ``tol`` being ``pruning_tol``). A copy of the mapping is
            kept (``{}`` for ``None``).

    Example:
        >>> NNKOptions(k=10, kernel="gaussian").sigma is None
        True
        >>> NNKOptions(k=0)
        Traceback (most recent call last):
        ...
        ValueError: k must be an int >= 1, got 0
    """

    k: int = 25
    kernel: str = "cosine"
    sigma: float | None = None
    solver: str = "exact"
    pruning_tol: float = 1e-6
    threshold: float = 1e-10
    jitter: float = 1e-8
    duplicates: str = "keep"
    dup_tol: float = 1e-9
    search: str = "auto"
    max_elements: int = 2**24
    dtype: torch.dtype = torch.float64
    threads: int | None = 1
    solver_options: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _check_int("k", self.k, 1)
        _check_choice("kernel", self.kernel, KERNELS)
        if self.sigma is not None:
            if self.kernel != "gaussian":
                raise ValueError(
                    f"sigma is only used by the gaussian kernel (kernel={self.kernel!r}); "
                    f"expected sigma=None, got {self.sigma!r}"
                )
            if not _is_number(self.sigma) or not float(self.sigma) > 0:
                raise ValueError(f"sigma must be a positive number or None (per-query rule), got {self.sigma!r}")
        _check_choice("solver", self.solver, SOLVERS, _RENAMED_SOLVERS)
        _check_number("pruning_tol", self.pruning_tol, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check_number("threshold", self.threshold, "a number >= 0", lambda v: v >= 0)
        _check_number("jitter", self.jitter, "a number >= 0", lambda v: v >= 0)
        _check_choice("duplicates", self.duplicates, DUPLICATES)
        _check_number("dup_tol", self.dup_tol, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check_choice("search", self.search, SEARCHES)
        if self.search == "faiss" and not faiss_available():
            raise ValueError("search='faiss' needs the optional faiss package (pip install faiss-cpu)")
        _check_int("max_elements", self.max_elements, 1)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float64), got {self.dtype!r}")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, "an int >= 1 or None")
        object.__setattr__(self, "solver_options", _checked_solver_options(self.solver, self.solver_options))

    def summary(self) -> dict[str, Any]:
        """JSON-ready settings that determine the results (not ``threads`` or ``solver_options``;
        ``pruning_tol`` only with ``solver="pruning"``, the one solver that uses it).

        Example:
            >>> NNKOptions(k=5).summary()["dtype"]
            'torch.float64'
            >>> s = NNKOptions(solver="pruning").summary()
            >>> s["solver"], s["pruning_tol"]
            ('pruning', 1e-06)
        """
        skip = {"threads", "solver_options"} | ({"pruning_tol"} if self.solver != "pruning" else set())
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["dtype"] = str(self.dtype)
        return out


def _is_number(value: object) -> TypeGuard[Real]:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int, expected: str = "") -> None:
    expected = expected or f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")


def _check_number(name: str, value: object, expected: str, ok: Callable[[float], bool]) -> None:
    if not _is_number(value):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not ok(float(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...], renamed: Mapping[str, str] | None = None) -> None:
    if value not in choices:
        new = renamed.get(value) if renamed and isinstance(value, str) else None
        hint = f" ({name}={value!r} is now {name}={new!r})" if new else ""
        raise ValueError(f"{name} must be one of {choices}, got {value!r}{hint}")


def _checked_solver_options(solver: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``options``, checked against the keywords of the chosen solver function."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"solver_options must be a mapping of keyword arguments or None, got {type(options).__name__}")
    fn = _SOLVER_FUNCTIONS[solver]
    own = _OWN_SOLVER_OPTIONS.get(solver, {})
    allowed = tuple(
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in own
    )
    for key in options:
        if key in own:
            raise ValueError(
                f"solver_options[{key!r}] of solver={solver!r} is the option {own[key]}=; set that instead"
            )
        if key not in allowed:
            new = _RENAMED_SOLVER_OPTIONS.get(key)
            hint = f" (solver_options[{key!r}] is now solver_options[{new!r}])" if new in allowed else ""
            raise ValueError(
                f"solver_options for solver={solver!r} must be keywords of {fn.__name__}, "
                f"one of {allowed}; got {key!r}{hint}"
            )
    engine = options.get("engine", "auto")
    if engine not in ENGINES:
        raise ValueError(f"solver_options['engine'] must be one of {ENGINES}, got {engine!r}")
    return dict(options)


FIELDS = tuple(f.name for f in dataclasses.fields(NNKOptions))


def resolve_options(
    options: NNKOptions | None, overrides: Mapping[str, Any], caller: str, **defaults: Any
) -> NNKOptions:
    """The options of a call: ``options`` (or ``NNKOptions(**defaults)``) with ``overrides`` applied.

    ``overrides`` are the NNK keywords of the call (``k=30``); an unknown name raises a
    ``TypeError`` that lists the valid ones. ``defaults`` are the caller's own defaults (e.g.
    ``duplicates="drop"`` for the channel analysis), used only when ``options`` is ``None``.

    Example:
        >>> resolve_options(NNKOptions(k=10), {"kernel": "gaussian"}, "f")
        NNKOptions(k=10, kernel='gaussian', sigma=None, solver='exact', pruning_tol=1e-06, threshold=1e-10, \
jitter=1e-08, duplicates='keep', dup_tol=1e-09, search='auto', max_elements=16777216, dtype=torch.float64, \
threads=1, solver_options={})
    """
    for name in overrides:
        if name not in FIELDS:
            new = _RENAMED.get(name)
            hint = f" ({name}= is now {new}=)" if new else ""
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {name!r}{hint}; the NNK options are {FIELDS}"
            )
    if options is None:
        return NNKOptions(**{**defaults, **overrides})
    if not isinstance(options, NNKOptions):
        raise TypeError(f"options must be an NNKOptions or None, got {type(options).__name__}")
    return dataclasses.replace(options, **overrides) if overrides else options
