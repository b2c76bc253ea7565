"""Verdict rules of the report: p-values, Holm's adjustment, decide(), leave-one-seed-out stability.

Oracles: scipy's t tests for the p-values, a slow Holm written here, the 95% interval for the
verdicts (each rule is equivalent to where the interval lies), hand-built estimates for each branch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from convsim.reporting import verdicts
from convsim.reporting.intervals import Estimate, contrast, mean_ci
from convsim.reporting.verdicts import (
    ALPHA,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MARGINS,
    NO_EFFECT,
    NON_INFERIORITY,
    NOT_TESTED,
    SUPERIORITY,
    TOO_FEW,
    VERDICTS,
    Comparison,
    decide,
    evaluate_family,
    holm,
    rules_text,
)

ALTERNATIVES = ("two-sided", "greater", "less")


def _seeds(x, start=0):
    return {start + i: float(v) for i, v in enumerate(x)}


# ---------------------------------------------------------------- Estimate.p_value against scipy


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("seed", range(4))
def test_paired_p_value_equals_scipy_ttest_rel(seed, alternative):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    a = rng.normal(0.80, 0.02, n)
    b = a + rng.normal(0.01, 0.01, n)
    e = contrast([(1.0, _seeds(b)), (-1.0, _seeds(a))])
    assert e.method == "paired"
    assert e.p_value(0.0, alternative) == pytest.approx(stats.ttest_rel(b, a, alternative=alternative).pvalue, rel=1e-9)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("null", [0.0, -0.005, 0.3])
def test_one_sample_p_value_against_a_null_equals_scipy_ttest_1samp(null, alternative):
    x = np.random.default_rng(7).normal(0.2, 0.3, 6)
    ref = stats.ttest_1samp(x, popmean=null, alternative=alternative).pvalue
    assert mean_ci(x).p_value(null, alternative) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("seed", range(3))
def test_welch_p_value_equals_scipy_ttest_ind_unequal_variances(seed, alternative):
    rng = np.random.default_rng(100 + seed)
    a, b = rng.normal(0.80, 0.01, 4), rng.normal(0.82, 0.03, 7)
    e = contrast([(1.0, _seeds(b)), (-1.0, _seeds(a, start=10))])  # no shared seeds: Welch
    assert e.method == "welch"
    ref = stats.ttest_ind(b, a, equal_var=False, alternative=alternative).pvalue
    assert e.p_value(0.0, alternative) == pytest.approx(ref, rel=1e-9)


def test_welch_p_value_against_a_null_shifts_one_group():
    """Testing b − a against −m is testing (b + m) − a against 0."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.80, 0.01, 5), rng.normal(0.797, 0.02, 6)
    m = 0.005
    e = contrast([(1.0, _seeds(b)), (-1.0, _seeds(a, start=10))])
    ref = stats.ttest_ind(b + m, a, equal_var=False, alternative="greater").pvalue
    assert e.p_value(-m, "greater") == pytest.approx(ref, rel=1e-9)


def test_p_value_without_an_interval_is_none():
    assert mean_ci([0.5]).p_value() is None
    assert contrast([(1.0, {0: 0.9}), (-1.0, {0: 0.8})]).p_value(0.0, "less") is None


def test_p_value_with_zero_standard_error_is_zero_or_one_by_direction():
    e = mean_ci([0.01, 0.01, 0.01])
    assert e.se == 0.0
    assert (e.p_value(0.0), e.p_value(0.0, "greater"), e.p_value(0.0, "less")) == (0.0, 0.0, 1.0)
    assert e.p_value(0.01) == 1.0


def test_p_value_rejects_unknown_alternative():
    with pytest.raises(ValueError, match="alternative"):
        mean_ci([1.0, 2.0, 4.0]).p_value(0.0, "two_sided")


# ---------------------------------------------------------------- Holm


def _holm_reference(p):
    """Holm step-down, slowly: sort, multiply the k-th smallest by (m - k), keep the running max."""
    present = [i for i, v in enumerate(p) if v is not None]
    m = len(present)
    out = [None] * len(p)
    running = 0.0
    for k, i in enumerate(sorted(present, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def test_holm_docstring_example_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.parametrize("seed", range(25))
def test_holm_equals_slow_reference_on_random_vectors(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    p = [float(v) for v in rng.uniform(0, 0.3, n) ** 2]
    if n > 2:  # ties
        p[1] = p[0]
    for i in rng.choice(n, size=int(rng.integers(0, n)), replace=False):  # missing comparisons
        p[int(i)] = None
    got, ref = holm(p), _holm_reference(p)
    assert [g is None for g in got] == [v is None for v in p]
    assert [g for g in got if g is not None] == pytest.approx([r for r in ref if r is not None], abs=1e-14)


def test_holm_counts_only_present_p_values():
    assert holm([None, 0.02, None]) == [None, 0.02, None]
    assert holm([]) == []


def test_holm_ties_get_equal_adjusted_values():
    out = holm([0.01, 0.01, 0.2])
    assert out[0] == out[1] == pytest.approx(0.03)


# ---------------------------------------------------------------- decide(): every branch


def _est(mean, se, dof=4.0):
    """An estimate with the 95% t interval of ``mean`` ± t(0.975, dof)·se."""
    h = stats.t.ppf(0.975, dof) * se
    return Estimate(mean, mean - h, mean + h, int(dof) + 1, "paired", se, dof)


M = 0.005


@pytest.mark.parametrize(
    "est,expected",
    [
        (_est(0.02, 0.002), HOLDS),  # t = 10
        (_est(-0.02, 0.002), FAILS),
        (_est(0.001, 0.001), NO_EFFECT),  # p = 0.37, interval [-0.0018, 0.0038] inside ±0.005
        (_est(0.003, 0.0005), NO_EFFECT),  # p < 0.01, yet the interval [0.0016, 0.0044] is inside ±0.005
        (_est(0.004, 0.003), INCONCLUSIVE),  # p = 0.25, interval reaches past +0.005
        (Estimate(0.01, None, None, 1, "single"), TOO_FEW),
        (None, NOT_TESTED),
    ],
)
def test_decide_superiority(est, expected):
    assert decide(est, SUPERIORITY, M) == expected


@pytest.mark.parametrize(
    "est,expected",
    [
        (_est(0.0, 0.001), HOLDS),  # interval [-0.0028, 0.0028] above -0.005
        (_est(0.02, 0.002), HOLDS),
        (_est(-0.02, 0.002), FAILS),  # interval below -0.005
        (_est(-0.007, 0.0005), FAILS),  # interval [-0.0084, -0.0056]: below -0.005 though inside ±0.01
        (_est(-0.005, 0.002), INCONCLUSIVE),  # interval straddles -0.005
        (_est(0.001, 0.001), HOLDS),  # a superiority "no meaningful effect" matches the reference
        (Estimate(0.01, None, None, 1, "single"), TOO_FEW),
        (None, NOT_TESTED),
    ],
)
def test_decide_non_inferiority(est, expected):
    assert decide(est, NON_INFERIORITY, M) == expected


def test_decide_uses_the_adjusted_p_value_when_given():
    est = _est(0.02, 0.002)
    assert decide(est, SUPERIORITY, M) == HOLDS
    assert decide(est, SUPERIORITY, M, p_adjusted=0.2) == INCONCLUSIVE
    assert decide(_est(0.0, 0.001), NON_INFERIORITY, M, p_adjusted=0.5) == INCONCLUSIVE
    assert decide(_est(-0.02, 0.002), NON_INFERIORITY, M, p_adjusted=0.5) == INCONCLUSIVE  # both directions


def test_adjustment_does_not_touch_no_meaningful_effect():
    assert decide(_est(0.003, 0.0005), SUPERIORITY, M, p_adjusted=1.0) == NO_EFFECT


def test_decide_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        decide(_est(0.0, 0.001), "equivalence", M)


@pytest.mark.parametrize("seed", range(30))
def test_verdicts_follow_where_the_interval_lies(seed):
    """Without adjustment each rule is a statement about the 95% interval and the margin."""
    rng = np.random.default_rng(seed)
    e = mean_ci(rng.normal(rng.uniform(-0.02, 0.02), rng.uniform(0.001, 0.02), int(rng.integers(2, 7))))
    sup, ni = decide(e, SUPERIORITY, M), decide(e, NON_INFERIORITY, M)
    assert sup in VERDICTS and ni in VERDICTS
    inside = e.low > -M and e.high < M
    assert (sup == NO_EFFECT) == inside
    assert (sup == HOLDS) == (e.low > 0 and not inside)
    assert (sup == FAILS) == (e.high < 0 and not inside)
    assert (ni == HOLDS) == (e.low > -M)
    assert (ni == FAILS) == (e.high < -M)
    assert ni != NO_EFFECT


# ---------------------------------------------------------------- Comparison and leave-one-seed-out


def _diff(b, a, label="B − A", metric="test_acc", kind=SUPERIORITY):
    return Comparison(label, metric, ((1.0, _seeds(b)), (-1.0, _seeds(a))), kind)


def test_clear_effect_is_loo_stable():
    rng = np.random.default_rng(0)
    a = rng.normal(0.80, 0.01, 5)
    r = _diff(a + 0.05 + rng.normal(0, 0.002, 5), a).evaluate()
    assert (r["verdict"], r["loo_stable"]) == (HOLDS, True)


def test_one_seed_driving_significance_is_not_loo_stable():
    a = np.array([0.80, 0.81, 0.79, 0.80])
    d = np.array([0.010, 0.012, 0.011, 0.030])  # without the first seed the test no longer rejects
    b = a + d
    assert stats.ttest_1samp(d, 0.0).pvalue < ALPHA
    assert stats.ttest_1samp(d[1:], 0.0).pvalue > ALPHA
    r = _diff(b, a).evaluate()
    assert r["verdict"] == HOLDS
    assert r["loo_stable"] is False


def test_loo_stable_is_none_below_three_common_seeds():
    assert _diff([0.9, 0.91], [0.8, 0.8]).evaluate()["loo_stable"] is None
    welch = Comparison("B − A", "test_acc", ((1.0, _seeds([0.9, 0.91, 0.92])), (-1.0, _seeds([0.8, 0.81, 0.8], 10))))
    assert welch.evaluate()["loo_stable"] is None


def test_evaluate_reports_scipy_p_and_the_metric_margin():
    a, b = np.array([0.80, 0.81, 0.79, 0.805]), np.array([0.83, 0.845, 0.80, 0.83])
    r = _diff(b, a).evaluate()
    assert r["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)
    assert r["margin"] == MARGINS["test_acc"] and r["p_holm"] is None
    assert r["estimate"]["mean"] == pytest.approx(float(np.mean(b - a)))


@pytest.mark.parametrize("shift", [0.0, -0.012])
def test_non_inferiority_p_is_two_sided_against_minus_margin(shift):
    """Above −margin it is the doubled one-sided p of the "holds" test; below, that of "does not hold"."""
    a = np.array([0.80, 0.81, 0.79, 0.805])
    b = np.array([0.799, 0.812, 0.788, 0.806]) + shift
    r = _diff(b, a, kind=NON_INFERIORITY).evaluate()
    ref = stats.ttest_1samp(b - a, -MARGINS["test_acc"]).pvalue
    assert r["p"] == pytest.approx(ref, rel=1e-9) and r["p"] < ALPHA
    assert r["verdict"] == (HOLDS if shift == 0 else FAILS)


def test_comparison_without_data_is_not_tested():
    r = Comparison("B − A", "test_acc", ((1.0, {}), (-1.0, {0: 0.8}))).evaluate()
    assert (r["verdict"], r["estimate"], r["p"]) == (NOT_TESTED, None, None)


# ---------------------------------------------------------------- evaluate_family


def _family():
    rng = np.random.default_rng(3)
    a = rng.normal(0.80, 0.01, 5)
    primary = _diff(a + 0.02 + rng.normal(0, 0.01, 5), a, "primary")
    # Three secondaries around p = 0.03 each: significant alone, not after Holm.
    secondary = []
    for k in range(3):
        d = np.array([0.004, 0.012, 0.001, 0.010, 0.008]) + 0.0003 * k
        secondary.append(_diff(a + d, a, f"secondary {k}"))
    secondary.append(Comparison("no data", "test_acc", ((1.0, {}), (-1.0, _seeds(a)))))
    return primary, secondary


def test_family_primary_is_not_holm_adjusted():
    primary, secondary = _family()
    first, _ = evaluate_family(primary, secondary)
    alone = primary.evaluate()
    assert first["p_holm"] is None
    assert first["p"] == pytest.approx(stats.ttest_rel(*[np.array(list(v.values())) for _, v in primary.terms]).pvalue)
    assert (first["verdict"], first["p"]) == (alone["verdict"], alone["p"])


def test_family_secondaries_get_holm_of_their_raw_p_values():
    primary, secondary = _family()
    _, rest = evaluate_family(primary, secondary)
    raw = [
        stats.ttest_rel(*[np.array(list(v.values())) for _, v in c.terms]).pvalue if c.terms[0][1] else None
        for c in secondary
    ]
    assert [r["p"] for r in rest[:3]] == pytest.approx(raw[:3], rel=1e-9)
    expected = _holm_reference(raw)
    assert rest[3]["p_holm"] is None and rest[3]["verdict"] == NOT_TESTED
    assert [r["p_holm"] for r in rest[:3]] == pytest.approx(expected[:3], rel=1e-9)


def test_family_secondary_verdicts_use_the_adjusted_p():
    primary, secondary = _family()
    _, rest = evaluate_family(primary, secondary)
    for c, r in zip(secondary[:3], rest[:3], strict=True):
        assert r["p"] < ALPHA <= r["p_holm"]  # the construction: significant alone, not after Holm
        assert c.evaluate()["verdict"] == HOLDS
        assert r["verdict"] != HOLDS


def _family_without(secondary, seed):
    return [Comparison(c.label, c.metric, tuple(verdicts._without_seed(c.terms, seed)), c.kind) for c in secondary]


@pytest.mark.parametrize("seed", range(6))
def test_family_loo_stable_reruns_the_whole_family_with_holm(seed):
    """Oracle: evaluate the family again with each seed left out of every comparison."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.80, 0.01, 5)
    secondary = [_diff(a + rng.normal(0.008, 0.006, 5), a, f"s{k}") for k in range(4)]
    _, rest = evaluate_family(None, secondary)
    dropped = [[r["verdict"] for r in evaluate_family(None, _family_without(secondary, s))[1]] for s in range(5)]
    for i, r in enumerate(rest):
        assert r["loo_stable"] == all(v[i] == r["verdict"] for v in dropped)


def test_family_without_primary():
    first, rest = evaluate_family(None, _family()[1])
    assert first is None and len(rest) == 4


# ---------------------------------------------------------------- the printed rules


def test_rules_text_states_every_margin_and_the_level():
    text = rules_text()
    for metric, m in MARGINS.items():
        assert f"`{metric}` ±{m:g}" in text
    assert f"`test_acc` ±{MARGINS['test_acc']:g} ({100 * MARGINS['test_acc']:g} percentage points)" in text
    assert f"p < {ALPHA:g}" in text and f"{100 * (1 - ALPHA):g}%" in text
    for v in (HOLDS, FAILS, NO_EFFECT, INCONCLUSIVE):
        assert v in text


def test_rules_text_is_generated_from_the_constants(monkeypatch):
    before = rules_text()
    monkeypatch.setitem(verdicts.MARGINS, "test_acc", 0.0123)
    monkeypatch.setattr(verdicts, "ALPHA", 0.01)
    after = rules_text()
    assert after != before
    assert "`test_acc` ±0.0123" in after and "`test_acc` ±0.005" not in after
    assert "p < 0.01" in after and "99%" in after and "p < 0.05" not in after


def test_margin_of_unknown_metric_names_the_known_ones():
    with pytest.raises(KeyError, match="test_acc"):
        verdicts.margin("no_such_metric")


def test_alpha_is_the_complement_of_the_interval_level():
    assert math.isclose(ALPHA, 0.05)
