"""Means over seeds with 95% Student-t confidence intervals, and contrasts between groups.

All in float64, returned as plain Python floats since they go straight into JSON and markdown:

* :func:`mean_ci`: mean ± t_{0.975, n-1} · s / sqrt(n), with s the sample standard deviation (n-1
  in the denominator). One value has no interval.
* :func:`contrast`: a linear combination sum_i c_i · mean_i of group means (a difference of two
  methods, or a difference of differences). When every group has the same seeds (runs with the
  same seed share the initial weights and the minibatch order) the contrast is formed per seed
  and ``mean_ci`` is applied to those per-seed values (*paired*); otherwise the Welch
  interval: variance V = sum_i c_i^2 s_i^2 / n_i with Welch-Satterthwaite degrees of freedom
  V^2 / sum_i (c_i^2 s_i^2 / n_i)^2 / (n_i - 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval ``[low, high]`` (``None`` when n = 1).

    ``se`` and ``dof`` are the standard error and the t distribution's degrees of freedom behind
    the interval (``None`` without one); :meth:`p_value` tests the mean against a null value.
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str = "t"
    se: float | None = None
    dof: float | None = None

    def p_value(self, null: float = 0.0, alternative: str = "two-sided") -> float | None:
        r"""p of the t test of ``mean`` against ``null``: two-sided, ``"greater"`` or ``"less"``.

        :math:`t = (\bar d - \text{null}) / \mathrm{se}` on ``dof`` degrees of freedom; ``None``
        without an interval. A zero standard error gives p = 0 when the mean differs from the null
        in the tested direction, else 1.

        Example:
            >>> round(mean_ci([1.0, 2.0, 3.0]).p_value(), 4)  # t = 2 / (1 / sqrt 3) = 3.46 on 2 dof
            0.0742
        """
        if alternative not in ("two-sided", "greater", "less"):
            raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
        if self.se is None or self.dof is None:
            return None
        diff = self.mean - null
        if self.se == 0.0:
            hit = {"two-sided": diff != 0, "greater": diff > 0, "less": diff < 0}[alternative]
            return 0.0 if hit else 1.0
        t = diff / self.se
        if alternative == "greater":
            return float(stats.t.sf(t, self.dof))
        if alternative == "less":
            return float(stats.t.cdf(t, self.dof))
        return float(2 * stats.t.sf(abs(t), self.dof))

    @property
    def half_width(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "method": self.method,
            "se": self.se,
            "dof": self.dof,
        }

    def fmt(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        """``"81.23 ± 0.45"``; ``"81.23 (n=1, no CI)"`` for one seed."""
        sign = "+" if signed else ""
        m = f"{self.mean * scale:{sign}.{digits}f}"
        h = self.half_width
        if h is None:
            return f"{m} (n={self.n}, no CI)"
        return f"{m} ± {h * scale:.{digits}f}"

    def fmt_interval(self, scale: float = 1.0, digits: int = 2) -> str:
        """``"+1.20 [0.30, 2.10]"``: a difference with its interval."""
        if self.low is None or self.high is None:
            return f"{self.mean * scale:+.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def _t_quantile(confidence: float, dof: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t confidence interval of independent values (one per seed).

    ``mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``). For n = 1 the interval is ``None``.

    Example:
        >>> e = mean_ci([1.0, 2.0, 3.0])
        >>> round(e.mean, 6), round(e.half_width, 4)
        (2.0, 2.4841)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_ci needs a non-empty 1-D sequence of numbers, got shape {x.shape}")
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, None, None, 1, "single")
    se = float(x.std(ddof=1)) / math.sqrt(x.size)
    h = _t_quantile(confidence, x.size - 1) * se
    return Estimate(mean, mean - h, mean + h, int(x.size), "t", se, float(x.size - 1))


def contrast(
    terms: Sequence[tuple[float, Mapping[Any, float]]], confidence: float = CONFIDENCE, paired: bool | None = None
) -> Estimate:
    """Confidence interval of ``sum_i c_i * mean(group_i)`` for ``terms = [(c_i, {seed: value})]``.

    ``paired=None`` pairs by seed when every group has the same (at least two) seeds, and uses
    the Welch-Satterthwaite interval otherwise; ``True``/``False`` force a choice. The estimate's
    ``method`` says which was used. Too few values for an interval give ``low = high = None``.

    Example (B - A with seeds 0, 1, 2):
        >>> a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.5, 2: 4.0}
        >>> contrast([(1.0, b), (-1.0, a)]).method
        'paired'
    """
    if not terms:
        raise ValueError("contrast needs at least one (coefficient, {seed: value}) term")
    for _, vals in terms:
        if not isinstance(vals, Mapping) or not vals:
            raise ValueError("each term must be (coefficient, non-empty {seed: value} mapping)")
    seed_sets = [set(v) for _, v in terms]
    same = all(s == seed_sets[0] for s in seed_sets)
    if paired is None:
        paired = same and len(seed_sets[0]) >= 2
    if paired:
        if not same:
            raise ValueError("paired contrast needs the same seeds in every group")
        seeds = sorted(seed_sets[0], key=str)
        per_seed = [sum(c * float(v[s]) for c, v in terms) for s in seeds]
        e = mean_ci(per_seed, confidence)
        return Estimate(e.mean, e.low, e.high, e.n, "paired" if e.low is not None else "single", e.se, e.dof)
    means, var_terms, ns = [], [], []
    for c, v in terms:
        x = np.asarray([float(y) for y in v.values()], dtype=np.float64)
        means.append(c * float(x.mean()))
        ns.append(x.size)
        var_terms.append(c * c * float(x.var(ddof=1)) / x.size if x.size > 1 else math.nan)
    mean = float(sum(means))
    n = int(min(ns))
    if any(k < 2 for k in ns):
        return Estimate(mean, None, None, n, "welch")
    var = sum(var_terms)
    if var == 0.0:
        return Estimate(mean, mean, mean, n, "welch", 0.0, float(sum(ns) - len(ns)))
    dof = var**2 / sum(vt**2 / (k - 1) for vt, k in zip(var_terms, ns, strict=False) if vt > 0)
    h = _t_quantile(confidence, dof) * math.sqrt(var)
    return Estimate(mean, mean - h, mean + h, n, "welch", math.sqrt(var), float(dof))


def safe_contrast(terms: Sequence[tuple[float, Mapping[Any, float]]]) -> Estimate | None:
    """:func:`contrast`, or ``None`` when some group has no value for the metric."""
    return contrast(terms) if all(v for _, v in terms) else None
