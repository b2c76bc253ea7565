r"""Comparisons of groups of runs and the rules that turn them into verdicts.

A :class:`Comparison` is a contrast :math:`d = \sum_i c_i\,\bar x_i` of group means of one
metric (paired by seed where the groups share their seeds, see
:func:`convsim.reporting.intervals.contrast`), oriented so that a positive :math:`d` means *holds*:
for a claim's primary comparison that supports the claim, and a secondary comparison's label says
what it tests. Its verdict follows one of two rules, with the metric's equivalence margin
:math:`m` (:data:`MARGINS`) and the level :data:`ALPHA`. Both test a null value :math:`d_0` with a
two-sided t test, whose p-value is the comparison's ``p``:

* **superiority** (does the method change the metric?), :math:`d_0 = 0`: *no meaningful effect*
  when the 95% interval lies inside :math:`(-m, m)` (an effect, if any, too small to matter);
  otherwise *holds* when the test rejects with :math:`\bar d > 0`, *does not hold* when it rejects
  with :math:`\bar d < 0`, else *inconclusive*;
* **non-inferiority** (does the method match a reference?), :math:`d_0 = -m`: *holds* when the
  test rejects with :math:`\bar d > -m` (unadjusted: the 95% interval lies above :math:`-m`),
  *does not hold* when it rejects with :math:`\bar d < -m` (the interval lies below :math:`-m`),
  else *inconclusive*.

Each claim has one **primary** comparison, declared with its suite, tested at :data:`ALPHA`; its
verdict is the claim's. The claim's other comparisons are **secondary**: their p-values are
Holm-adjusted within the claim (:func:`holm`), and their verdicts use the adjusted p-values (the
"no meaningful effect" rule uses the unadjusted interval). Every comparison is also recomputed
with each seed left out in turn, the secondary ones as a family with their Holm adjustment
recomputed: it is ``loo_stable`` when no such omission changes its verdict.

Example:
    >>> c = Comparison("B − A", "test_acc", ((1.0, {0: 0.90, 1: 0.91, 2: 0.92}), (-1.0, {0: 0.80, 1: 0.80, 2: 0.81})))
    >>> r = c.evaluate()
    >>> r["verdict"], r["loo_stable"]
    ('holds', True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convsim.reporting.intervals import CONFIDENCE, Estimate, contrast

ALPHA = 1.0 - CONFIDENCE
# Equivalence margins: the smallest difference that matters, per metric (in the metric's units).
MARGINS: dict[str, float] = {
    "test_acc": 0.005,  # half a percentage point of test accuracy
    "train_loss": 0.01,  # nats of mean training cross-entropy
    "fm_similarity": 0.02,  # mean |cos| between feature maps, uncentred
    "fm_similarity_centered": 0.02,  # the same, centred
    "kernel_cosine": 0.01,  # mean |cos| between flattened kernels
    "fd": 0.5,  # Fréchet distance in the FD classifier's features: about 5% of a trained baseline's
    "test_nelbo": 1.0,  # nats per image of the VAE's negative ELBO
}
ACCURACY = "test_acc"  # the metric reported in percentage points when accuracies are fractions
SUPERIORITY, NON_INFERIORITY = "superiority", "non-inferiority"
HOLDS, FAILS, NO_EFFECT, INCONCLUSIVE = "holds", "does not hold", "no meaningful effect", "inconclusive"
TOO_FEW = "inconclusive (too few seeds)"
NOT_TESTED = "not tested"
VERDICTS = (HOLDS, FAILS, NO_EFFECT, INCONCLUSIVE, TOO_FEW, NOT_TESTED)

Terms = Sequence[tuple[float, Mapping[Any, float]]]


def margin(metric: str) -> float:
    """The equivalence margin of ``metric`` (:data:`MARGINS`); a ``KeyError`` names the known metrics."""
    if metric not in MARGINS:
        raise KeyError(f"no equivalence margin for metric {metric!r}; known: {sorted(MARGINS)}")
    return MARGINS[metric]


def null_value(kind: str, m: float) -> float:
    """The value a rule tests the contrast against: 0 (superiority) or :math:`-m` (non-inferiority)."""
    if kind not in (SUPERIORITY, NON_INFERIORITY):
        raise ValueError(f"kind must be {SUPERIORITY!r} or {NON_INFERIORITY!r}, got {kind!r}")
    return 0.0 if kind == SUPERIORITY else -m


def p_value(est: Estimate, kind: str, m: float) -> float | None:
    """The p-value a verdict is decided on: two-sided, against the rule's :func:`null_value`."""
    return est.p_value(null_value(kind, m))


def decide(est: Estimate | None, kind: str, m: float, p_adjusted: float | None = None) -> str:
    """The verdict of one comparison (the rules of the module docstring).

    ``p_adjusted`` replaces the comparison's own p-value (Holm for secondary comparisons).

    Example:
        >>> decide(Estimate(0.001, -0.002, 0.004, 5, "paired", 0.001, 4.0), SUPERIORITY, 0.005)
        'no meaningful effect'
    """
    null = null_value(kind, m)
    if est is None:
        return NOT_TESTED
    if est.low is None or est.high is None or est.se is None:
        return TOO_FEW
    if kind == SUPERIORITY and -m < est.low and est.high < m:
        return NO_EFFECT
    p = p_value(est, kind, m) if p_adjusted is None else p_adjusted
    assert p is not None
    if p < ALPHA:
        return HOLDS if est.mean > null else FAILS
    return INCONCLUSIVE


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    :math:`\\max_{j \\le i} \\min(1, (m - j + 1)\\,p_{(j)})`. ``None`` entries are skipped.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = round(running, 15)
    return out


def _without_seed(terms: Terms, seed: Any) -> list[tuple[float, dict]]:
    return [(c, {s: v for s, v in vals.items() if s != seed}) for c, vals in terms]


def estimate(terms: Terms) -> Estimate | None:
    """:func:`~convsim.reporting.intervals.contrast` of ``terms``; ``None`` when a group lacks values."""
    return contrast(terms) if terms and all(vals for _, vals in terms) else None


@dataclass(frozen=True)
class Comparison:
    """One contrast of group means of ``metric`` (positive supports the claim), with its rule.

    ``terms`` are ``(coefficient, {seed: value})``; ``scale`` and ``unit`` only format the text
    (100 and "pts" show accuracies in percentage points); ``note`` is appended to the text.
    """

    label: str
    metric: str
    terms: tuple[tuple[float, Mapping[Any, float]], ...]
    kind: str = SUPERIORITY
    scale: float = 1.0
    unit: str = ""
    note: str = ""

    @property
    def margin(self) -> float:
        return margin(self.metric)

    def evaluate(self) -> dict:
        """The comparison alone, at :data:`ALPHA` without adjustment, as a JSON-ready dict: label,
        metric, kind, margin, estimate, p, ``p_holm`` (``None``), verdict, loo_stable and a one-line text."""
        return _evaluate([self], adjust=False)[0]

    def seeds(self) -> set:
        """The seeds every group of the contrast has."""
        return set.intersection(*(set(vals) for _, vals in self.terms)) if self.terms else set()

    def record(
        self, est: Estimate | None, p: float | None, p_holm: float | None, verdict: str, stable: bool | None
    ) -> dict:
        return {
            "label": self.label,
            "metric": self.metric,
            "kind": self.kind,
            "margin": self.margin,
            "estimate": est.as_dict() if est else None,
            "p": p,
            "p_holm": p_holm,
            "verdict": verdict,
            "loo_stable": stable,
            "text": self.text(est, verdict, p_holm if p_holm is not None else p),
        }

    def text(self, est: Estimate | None, verdict: str, p: float | None) -> str:
        if est is None:
            return f"{self.label}: no data → {verdict}"
        digits = 2 if self.scale == 100 else 3
        unit = f" {self.unit}" if self.unit else ""
        p_text = "" if p is None else f", p={p:.2g}"
        line = (
            f"{self.label}: {est.fmt_interval(self.scale, digits)}{unit} ({est.method}, n={est.n}{p_text}) → {verdict}"
        )
        return line + (f"; {self.note}" if self.note else "")


def _decisions(
    comparisons: Sequence[Comparison], adjust: bool, drop: Any = None
) -> tuple[list[Estimate | None], list[float | None], list[float | None], list[str]]:
    """Estimates, raw p, Holm p (when ``adjust``) and verdicts of a family, without seed ``drop``."""
    ests = [estimate(c.terms if drop is None else _without_seed(c.terms, drop)) for c in comparisons]
    raw = [p_value(e, c.kind, c.margin) if e is not None else None for e, c in zip(ests, comparisons, strict=True)]
    adjusted: list[float | None] = holm(raw) if adjust else [None] * len(raw)
    verdicts = [decide(e, c.kind, c.margin, pa) for e, c, pa in zip(ests, comparisons, adjusted, strict=True)]
    return ests, raw, adjusted, verdicts


def _evaluate(comparisons: Sequence[Comparison], adjust: bool) -> list[dict]:
    """Each comparison's record; leave-one-seed-out reruns the whole family (and its Holm adjustment)."""
    ests, raw, adjusted, full = _decisions(comparisons, adjust)
    seeds = [c.seeds() for c in comparisons]
    stable: list[bool | None] = [True if len(s) >= 3 else None for s in seeds]
    for seed in sorted(set().union(*seeds), key=str):
        again = _decisions(comparisons, adjust, drop=seed)[3]
        for i, s in enumerate(seeds):
            if stable[i] and seed in s and again[i] != full[i]:
                stable[i] = False
    return [
        c.record(*row) for c, row in zip(comparisons, zip(ests, raw, adjusted, full, stable, strict=True), strict=True)
    ]


def evaluate_family(primary: Comparison | None, secondary: Sequence[Comparison]) -> tuple[dict | None, list[dict]]:
    """The primary comparison at :data:`ALPHA` and the secondary ones with Holm-adjusted p-values."""
    first = primary.evaluate() if primary is not None else None
    return first, _evaluate(secondary, adjust=True)


def _margin_text(metric: str, m: float) -> str:
    points = f" ({100 * m:g} percentage points)" if metric == ACCURACY else ""
    return f"`{metric}` ±{m:g}{points}"


def rules_text() -> str:
    """The verdict rules in words, generated from :data:`ALPHA`, :data:`MARGINS` and the rule names."""
    level = f"{100 * (1 - ALPHA):g}%"
    margins = "; ".join(_margin_text(k, v) for k, v in MARGINS.items())
    return (
        f"- **Comparisons** are contrasts of group means over seeds, paired by seed where the groups share "
        f"their seeds (Welch otherwise), with {level} Student-t intervals. A positive value means *{HOLDS}*: "
        f"for a claim's primary comparison that supports the claim; a secondary comparison's label says what "
        f"it tests.\n"
        f"- **Equivalence margins** (the smallest difference that matters): {margins}.\n"
        f"- **{SUPERIORITY}** comparisons: *{NO_EFFECT}* when the {level} interval lies inside ±margin (an "
        f"effect, if any, too small to matter); otherwise *{HOLDS}* when the two-sided t test of 0 gives "
        f"p < {ALPHA:g} with a positive estimate, *{FAILS}* when p < {ALPHA:g} with a negative one, else "
        f"*{INCONCLUSIVE}*.\n"
        f"- **{NON_INFERIORITY}** comparisons (does a method match a reference?): the two-sided t test of "
        f"−margin; *{HOLDS}* when p < {ALPHA:g} with an estimate above −margin (the {level} interval lies above "
        f"it), *{FAILS}* when p < {ALPHA:g} with an estimate below (the interval lies below −margin), else "
        f"*{INCONCLUSIVE}*.\n"
        f"- **Each claim's verdict is that of its primary comparison**, declared with the suite and tested at "
        f"{ALPHA:g}. Its secondary comparisons are reported with Holm-adjusted p-values (`p_holm`, adjusted "
        f"within the claim), and their verdicts use those (*{NO_EFFECT}* uses the unadjusted interval).\n"
        f"- **loo_stable**: the verdict is recomputed with each seed left out in turn (for secondary "
        f"comparisons, of every comparison of the claim, with Holm's adjustment recomputed); ✓ when no "
        f"omission changes it.\n"
    )
