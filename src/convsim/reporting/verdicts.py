r"""Comparisons of groups of runs and the rules that turn them into verdicts.

A :class:`Comparison` is a contrast :math:`d = \sum_i c_i\,\bar x_i` of group means of one
metric (paired by seed where the groups share their seeds, see
:func:`convsim.reporting.intervals.contrast`), oriented so that a positive :math:`d` supports the
claim. Its verdict follows one of two rules, with the metric's equivalence margin :math:`m`
(:data:`MARGINS`) and the level :data:`ALPHA`:

* **superiority** (does the method change the metric?): *holds* when the test of :math:`d = 0`
  rejects with :math:`\bar d > 0`, *does not hold* when it rejects with :math:`\bar d < 0`;
  otherwise *no meaningful effect* when the 95% interval lies inside :math:`(-m, m)`, else
  *inconclusive*;
* **non-inferiority** (does the method match a reference?): *holds* when the one-sided test of
  :math:`d \le -m` rejects at :data:`ALPHA` / 2 (the 95% interval lies above :math:`-m`), *does not
  hold* when the one-sided test of :math:`d \ge -m` rejects (the interval lies below :math:`-m`),
  else *inconclusive*.

Each claim has one **primary** comparison, declared with its suite, tested at :data:`ALPHA`; its
verdict is the claim's. The claim's other comparisons are **secondary**: their p-values are
Holm-adjusted within the claim (:func:`holm`). Every comparison is also recomputed with each seed
left out in turn: it is ``loo_stable`` when no such omission changes its verdict (secondary
comparisons keep their Holm multiplier).

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


def p_value(est: Estimate, kind: str, m: float) -> float | None:
    """The p-value a verdict is decided on: two-sided against 0 (superiority), one-sided
    against :math:`-m` (non-inferiority: "greater", doubled so that it compares with :data:`ALPHA`)."""
    if kind == SUPERIORITY:
        return est.p_value(0.0)
    p = est.p_value(-m, "greater")
    return None if p is None else min(1.0, 2.0 * p)


def decide(est: Estimate | None, kind: str, m: float, p_adjusted: float | None = None) -> str:
    """The verdict of one comparison (the rules of the module docstring).

    ``p_adjusted`` replaces the comparison's own p-value (Holm for secondary comparisons).

    Example:
        >>> decide(Estimate(0.001, -0.002, 0.004, 5, "paired", 0.001, 4.0), SUPERIORITY, 0.005)
        'no meaningful effect'
    """
    if kind not in (SUPERIORITY, NON_INFERIORITY):
        raise ValueError(f"kind must be {SUPERIORITY!r} or {NON_INFERIORITY!r}, got {kind!r}")
    if est is None:
        return NOT_TESTED
    if est.low is None or est.high is None or est.se is None:
        return TOO_FEW
    p = p_value(est, kind, m) if p_adjusted is None else p_adjusted
    assert p is not None
    if kind == SUPERIORITY:
        if p < ALPHA:
            return HOLDS if est.mean > 0 else FAILS
        return NO_EFFECT if -m < est.low and est.high < m else INCONCLUSIVE
    if p < ALPHA:
        return HOLDS
    below = est.p_value(-m, "less")
    return FAILS if below is not None and 2.0 * below < ALPHA else INCONCLUSIVE


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

    def evaluate(self, multiplier: float | None = None, p_adjusted: float | None = None) -> dict:
        """The comparison as a JSON-ready dict: label, metric, kind, margin, estimate, p,
        ``p_holm`` (``p_adjusted``), verdict, loo_stable and a one-line text.

        ``multiplier`` (``p_adjusted / p``) is applied to the leave-one-seed-out p-values."""
        est = estimate(self.terms)
        p = p_value(est, self.kind, self.margin) if est is not None else None
        v = decide(est, self.kind, self.margin, p_adjusted)
        return {
            "label": self.label,
            "metric": self.metric,
            "kind": self.kind,
            "margin": self.margin,
            "estimate": est.as_dict() if est else None,
            "p": p,
            "p_holm": p_adjusted,
            "verdict": v,
            "loo_stable": self.loo_stable(v, multiplier),
            "text": self.text(est, v, p_adjusted if p_adjusted is not None else p),
        }

    def loo_stable(self, full_verdict: str, multiplier: float | None = None) -> bool | None:
        """Whether leaving out any one seed keeps ``full_verdict``; ``None`` below three common seeds."""
        seeds = set.intersection(*(set(vals) for _, vals in self.terms)) if self.terms else set()
        if len(seeds) < 3:
            return None
        for s in sorted(seeds, key=str):
            est = estimate(_without_seed(self.terms, s))
            p = p_value(est, self.kind, self.margin) if est is not None else None
            adjusted = None if p is None or multiplier is None else min(1.0, p * multiplier)
            if decide(est, self.kind, self.margin, adjusted) != full_verdict:
                return False
        return True

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


def evaluate_family(primary: Comparison | None, secondary: Sequence[Comparison]) -> tuple[dict | None, list[dict]]:
    """The primary comparison at :data:`ALPHA` and the secondary ones with Holm-adjusted p-values."""
    first = primary.evaluate(multiplier=1.0) if primary is not None else None
    raw = []
    for c in secondary:
        est = estimate(c.terms)
        raw.append(p_value(est, c.kind, c.margin) if est is not None else None)
    adjusted = holm(raw)
    family = sum(p is not None for p in raw)
    rest = []
    for c, p, pa in zip(secondary, raw, adjusted, strict=True):
        # The leave-one-out checks keep this comparison's Holm multiplier; for p = 0 it is
        # unknowable, so the most conservative one (the family size) is used.
        mult = None if pa is None or p is None else (pa / p if p > 0 else float(family))
        rest.append(c.evaluate(multiplier=mult, p_adjusted=pa))
    return first, rest


def rules_text() -> str:
    """The verdict rules in words, generated from :data:`ALPHA`, :data:`MARGINS` and the rule names."""
    level = f"{100 * (1 - ALPHA):g}%"
    margins = "; ".join(f"`{k}` ±{v:g}" for k, v in MARGINS.items())
    return (
        f"- **Comparisons** are contrasts of group means over seeds, oriented so that a positive value supports "
        f"the claim, paired by seed where the groups share their seeds (Welch otherwise), with {level} "
        f"Student-t intervals.\n"
        f"- **Equivalence margins** (the smallest difference that matters): {margins}.\n"
        f"- **{SUPERIORITY}** comparisons: *{HOLDS}* when the two-sided t test of 0 gives p < {ALPHA:g} with a "
        f"positive estimate, *{FAILS}* when p < {ALPHA:g} with a negative one; otherwise *{NO_EFFECT}* when the "
        f"{level} interval lies inside ±margin, else *{INCONCLUSIVE}*.\n"
        f"- **{NON_INFERIORITY}** comparisons (does a method match a reference?): *{HOLDS}* when the {level} "
        f"interval lies above −margin (one-sided test at {ALPHA / 2:g}), *{FAILS}* when it lies below −margin, "
        f"else *{INCONCLUSIVE}*.\n"
        f"- **Each claim's verdict is that of its primary comparison**, declared with the suite and tested at "
        f"{ALPHA:g}. Its secondary comparisons are reported with Holm-adjusted p-values (`p_holm`, adjusted "
        f"within the claim), and their verdicts use those.\n"
        f"- **loo_stable**: the verdict is recomputed with each seed left out in turn (secondary comparisons "
        f"keep their Holm multiplier); ✓ when no omission changes it.\n"
    )
