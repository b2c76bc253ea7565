"""Verdicts on the CS paper's claims (a)-(e), computed from groups of runs.

Each claim has one primary comparison, declared with its suite in a :class:`ClaimDesign` (group
names), and secondary comparisons found by rules over the suite's groups; the verdict rules, the
margins and the Holm adjustment are in :mod:`convsim.reporting.verdicts`. A claim's verdict is its
primary comparison's.

Example::

    for c in claims(group_runs(load_runs("docs/fmnist/runs")), ClaimDesign()):
        print(c["id"], c["verdict"], c["primary"]["text"])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise

from convsim.reporting.methods import BASELINE, CS_METHODS, ORTHO_METHODS
from convsim.reporting.runs import (
    CS_FIELDS,
    Group,
    accuracy_scale,
    baseline_for,
    collapsed,
    method_label,
    strength,
    width_sweep,
)
from convsim.reporting.verdicts import (
    ACCURACY,
    HOLDS,
    NON_INFERIORITY,
    NOT_TESTED,
    SUPERIORITY,
    Comparison,
    estimate,
    evaluate_family,
    margin,
)


@dataclass(frozen=True)
class ClaimDesign:
    """The primary comparison of each claim, declared with a suite as group names.

    * (a) ``cs`` − ``baseline``, test accuracy; (b) ``baseline`` − ``cs``, training loss after
      epoch 1;
    * (c) ``cs`` − ``larger_baseline`` (a model of twice the width), test accuracy,
      non-inferiority; tested only where ``larger_baseline`` beats ``baseline``;
    * (d) mean |feature-map cos| of ``orthogonality`` − that of raw CS-reg, each at its strongest
      setting whose test accuracy stays within the margin of ``baseline`` (non-inferior);
    * (e) (``cs`` − ``baseline``) − (``cs_momentum`` − ``baseline_momentum``), test accuracy: the
      CS gain lost under SGD momentum.
    """

    cs: str = "cnn1-w1-cs-reg-b0.01"
    baseline: str = "cnn1-w1-baseline"
    larger_baseline: str = "cnn1-w2-baseline"
    orthogonality: str = "so"
    cs_momentum: str = "cnn1-w1-cs-reg-b0.01-m0.9"
    baseline_momentum: str = "cnn1-w1-baseline-m0.9"

    def as_dict(self) -> dict:
        return asdict(self)


NOT_RUN = "not in this suite's runs"  # why a primary comparison is missing, unless a claim says more

TEXTS = {
    "a": "CS improves test accuracy",
    "b": "CS converges faster (lower training loss after the first epoch)",
    "c": "CS lets smaller models match larger ones",
    "d": "Kernel orthogonality lowers kernel cosine but not feature-map similarity as CS does",
    "e": "CS is harder to use with momentum (its gain shrinks under SGD momentum)",
}


class _Builder:
    """Comparisons of one claim, formatted alike (accuracies in percentage points when ``scale`` is 100)."""

    def __init__(self, scale: float):
        self.scale = scale

    def diff(
        self,
        label: str,
        metric: str,
        plus: Sequence[Group],
        minus: Sequence[Group],
        which: str = "final",
        kind: str = SUPERIORITY,
        note: str = "",
    ) -> Comparison:
        terms = tuple([(1.0, g.values(metric, which)) for g in plus] + [(-1.0, g.values(metric, which)) for g in minus])
        acc = metric == ACCURACY
        return Comparison(
            label, metric, terms, kind, self.scale if acc else 1.0, "pts" if acc and self.scale == 100 else "", note
        )


def _vs_baseline(groups: Iterable[Group], methods: Sequence[str]) -> list[tuple[Group, Group]]:
    allg = list(groups)
    pairs = [(g, baseline_for(g, allg)) for g in allg if g.method in methods]
    return [(g, b) for g, b in pairs if b is not None]


def _claim(
    cid: str,
    design: ClaimDesign,
    primary: Comparison | None,
    secondary: Sequence[Comparison],
    note: str = "",
    override: str | None = None,
    missing: str = NOT_RUN,
) -> dict:
    first, rest = evaluate_family(primary, secondary)
    if first is not None and override is not None:
        text = first["text"].rsplit(" → ", 1)[0] + f" → {override}"
        first = {**first, "verdict": override, "loo_stable": None, "text": text}
    if first is None:
        first = _untested(planned_primaries(design)[cid], missing)
    verdict = first["verdict"]
    evidence = [f"primary: {first['text']}"]
    if note:
        evidence.append(note)
    evidence += [f"{c['text']} (p_holm {c['p_holm']:.2g})" if c["p_holm"] is not None else c["text"] for c in rest]
    return {
        "id": cid,
        "claim": TEXTS[cid],
        "verdict": verdict,
        "primary": first,
        "comparisons": rest,
        "evidence": evidence,
    }


def _untested(label: str, why: str) -> dict:
    """The record of a primary comparison that could not be made (same keys as a made one)."""
    keys = ("metric", "kind", "margin", "estimate", "p", "p_holm", "loo_stable")
    return {"label": label, **dict.fromkeys(keys), "verdict": NOT_TESTED, "text": f"{label}: {why} → {NOT_TESTED}"}


def claim_accuracy(groups: Mapping[str, Group], design: ClaimDesign, b: _Builder) -> dict:
    """(a) CS − baseline test accuracy; secondary: every other CS configuration against its baseline."""
    cs, base = groups.get(design.cs), groups.get(design.baseline)
    primary = b.diff(f"{method_label(cs, True)} − baseline", "test_acc", [cs], [base]) if cs and base else None
    rest = [
        b.diff(f"{method_label(g, True)} − baseline", "test_acc", [g], [h])
        for g, h in _vs_baseline(groups.values(), CS_METHODS)
        if g.name != design.cs
    ]
    return _claim("a", design, primary, rest)


def claim_convergence(groups: Mapping[str, Group], design: ClaimDesign, b: _Builder) -> dict:
    """(b) baseline − CS training loss after the first epoch (> 0: CS converges faster)."""
    cs, base = groups.get(design.cs), groups.get(design.baseline)
    label = "baseline − {}, train loss after epoch 1"
    primary = b.diff(label.format(method_label(cs, True)), "train_loss", [base], [cs], "first") if cs and base else None
    rest = [
        b.diff(label.format(method_label(g, True)), "train_loss", [h], [g], "first")
        for g, h in _vs_baseline(groups.values(), CS_METHODS)
        if g.name != design.cs
    ]
    return _claim("b", design, primary, rest)


def claim_smaller(groups: Mapping[str, Group], design: ClaimDesign, b: _Builder) -> dict:
    """(c) CS at width w − baseline at the next width up, non-inferiority within the accuracy margin.

    Only meaningful where the larger baseline beats the smaller one (the width gap holds); the
    primary's verdict is otherwise "not tested" and the gap is stated.
    """
    cs, base, large = (groups.get(n) for n in (design.cs, design.baseline, design.larger_baseline))
    primary, note, override = None, "", None
    if cs and base and large:
        label = f"{method_label(cs, True)} at width {cs.get('width'):g} − baseline at width {large.get('width'):g}"
        primary = b.diff(label, "test_acc", [cs], [large], kind=NON_INFERIORITY)
        gap = b.diff("width gap", "test_acc", [large], [base]).evaluate()
        note = f"baseline width gap (larger − smaller): {gap['text'].split(': ', 1)[1]}"
        override = None if gap["verdict"] == HOLDS else NOT_TESTED
    rest = []
    sweep = width_sweep(groups)
    for (model, method), by_w in sweep.items():
        base_w = sweep.get((model, BASELINE), {})
        for small, larger in pairwise(sorted(base_w)):
            g = by_w.get(small)
            if method in CS_METHODS and g is not None and g.name != design.cs:
                label = f"{method_label(g, True)} at width {small:g} − baseline at width {larger:g}"
                rest.append(b.diff(label, "test_acc", [g], [base_w[larger]], kind=NON_INFERIORITY))
    return _claim("c", design, primary, rest, note, override)


def strongest_within_margin(family: Sequence[Group], base: Group) -> Group | None:
    """The group of ``family`` with the largest :func:`~convsim.reporting.runs.strength` whose test
    accuracy is non-inferior to ``base`` (95% interval of the difference above −margin)."""
    ok = []
    for g in family:
        est = estimate(((1.0, g.values("test_acc")), (-1.0, base.values("test_acc"))))
        if est is not None and est.low is not None and est.low > -margin("test_acc") and not collapsed(g):
            ok.append(g)
    return max(ok, key=lambda g: strength(g) or 0.0, default=None)


def _families(groups: Mapping[str, Group], base: Group) -> dict[str, list[Group]]:
    """Same-context groups of raw CS-reg, normalised CS-reg and each orthogonality penalty."""
    same = [g for g in groups.values() if g.context() == base.context()]
    fam: dict[str, list[Group]] = {
        "cs-reg": [g for g in same if g.method == "cs-reg" and not g.get("cs_normalize")],
        "cs-reg (normalised)": [g for g in same if g.method == "cs-reg" and g.get("cs_normalize")],
    }
    for m in ORTHO_METHODS:
        fam[m] = [g for g in same if g.method == m]
    return {k: v for k, v in fam.items() if v}


def matched_settings(groups: Mapping[str, Group], design: ClaimDesign) -> dict[str, str | None]:
    """{family: group name of its strongest setting within the accuracy margin of the baseline}."""
    base = groups.get(design.baseline)
    if base is None:
        return {}
    return {
        k: (g.name if g else None)
        for k, v in _families(groups, base).items()
        for g in [strongest_within_margin(v, base)]
    }


def claim_orthogonality(groups: Mapping[str, Group], design: ClaimDesign, b: _Builder) -> dict:
    """(d) at matched strength: fm(orthogonality) − fm(CS) > 0 supports the claim (uncentred, centred).

    Secondary comparisons also say, against the baseline, whether each orthogonality method at its
    matched setting lowers kernel cosine and whether it lowers feature-map similarity.
    """
    matched = {k: groups.get(v) if v else None for k, v in matched_settings(groups, design).items()}
    base = groups.get(design.baseline)
    primary, rest = None, []
    for cs_key in ("cs-reg", "cs-reg (normalised)"):
        cs = matched.get(cs_key)
        for m in ORTHO_METHODS:
            p = matched.get(m)
            if cs is None or p is None:
                continue
            for metric in ("fm_similarity", "fm_similarity_centered"):
                c = b.diff(f"{method_label(p, True)} − {method_label(cs)}, {metric}", metric, [p], [cs])
                is_primary = cs_key == "cs-reg" and m == design.orthogonality and metric == "fm_similarity"
                primary = c if is_primary else primary
                rest += [] if is_primary else [c]
    for m in ORTHO_METHODS:
        p = matched.get(m)
        if p is not None and base is not None:
            for metric in ("kernel_cosine", "fm_similarity"):
                label = f"{method_label(p, True)} lowers {metric} (baseline − {method_label(p, True)})"
                rest.append(b.diff(label, metric, [base], [p]))
    note = "matched settings (strongest within the accuracy margin): " + (
        ", ".join(f"{k}: {v.name if v else 'none'}" for k, v in matched.items()) or "none"
    )
    return _claim("d", design, primary, rest, note, missing=_unmatched(matched, design))


def _unmatched(matched: Mapping[str, Group | None], design: ClaimDesign) -> str:
    """Why (d)'s primary comparison is missing: a family not run, or run with no setting inside the margin."""
    lost = [k for k in ("cs-reg", design.orthogonality) if k in matched and matched[k] is None]
    if lost:
        return f"no setting of {' or '.join(lost)} keeps test accuracy within the margin of the baseline"
    return NOT_RUN


def _interaction(g: Group, groups: Sequence[Group]) -> tuple[Group, Group, Group] | None:
    """For a momentum group ``g``: (its no-momentum twin, that twin's baseline, ``g``'s baseline)."""
    bm = baseline_for(g, groups)
    # The no-momentum counterparts may use another lr (the suites keep lr / (1 - momentum) equal).
    same = [
        h
        for h in groups
        if float(h.get("momentum") or 0) == 0 and h.context(momentum=None, lr=None) == g.context(momentum=None, lr=None)
    ]
    twin = next((h for h in same if h.method == g.method and all(h.get(k) == g.get(k) for k in CS_FIELDS)), None)
    b0 = next((h for h in same if h.method == BASELINE), None)
    return (twin, b0, bm) if twin and b0 and bm else None


def claim_momentum(groups: Mapping[str, Group], design: ClaimDesign, b: _Builder) -> dict:
    """(e) (CS_0 − base_0) − (CS_m − base_m) > 0 supports the claim (0: no momentum, m: momentum 0.9).

    Secondary: the same for every other CS method run with momentum, and under momentum each
    decoupled CS against CS in the loss at the same beta (does decoupling recover the gain?).
    """
    allg = list(groups.values())
    names = (design.cs, design.baseline, design.cs_momentum, design.baseline_momentum)
    cs0, b0, csm, bm = (groups.get(n) for n in names)
    label = "{}: gain without momentum − gain with momentum"
    primary = (
        b.diff(label.format(method_label(cs0, True)), "test_acc", [cs0, bm], [b0, csm])
        if cs0 and b0 and csm and bm
        else None
    )
    rest = []
    mom = [
        g for g in allg if float(g.get("momentum") or 0) > 0 and g.method in CS_METHODS and g.name != design.cs_momentum
    ]
    for g in mom:
        found = _interaction(g, allg)
        if found:
            twin, base0, basem = found
            rest.append(
                b.diff(
                    label.format(method_label(g, True)) + f" {g.get('momentum')}", "test_acc", [twin, basem], [base0, g]
                )
            )
        if g.method == "cs-decoupled":
            loss = [
                h
                for h in allg
                if h.method == "cs-reg"
                and h.get("beta") == g.get("beta")
                and h.context() == g.context()
                and h.get("cs_normalize") == g.get("cs_normalize")
            ]
            rest += [
                b.diff(
                    f"decoupling recovers accuracy under momentum {g.get('momentum')}: "
                    f"{method_label(g, True)} − {method_label(h)}",
                    "test_acc",
                    [g],
                    [h],
                )
                for h in loss
            ]
    return _claim("e", design, primary, rest)


CLAIMS: tuple[Callable[[Mapping[str, Group], ClaimDesign, _Builder], dict], ...] = (
    claim_accuracy,
    claim_convergence,
    claim_smaller,
    claim_orthogonality,
    claim_momentum,
)


def claims(groups: Mapping[str, Group], design: ClaimDesign | None = None) -> list[dict]:
    """The paper's claims (a)-(e), each with its verdict, primary and secondary comparisons."""
    builder = _Builder(accuracy_scale(groups))
    return [f(groups, design or ClaimDesign(), builder) for f in CLAIMS]


def planned_primaries(design: ClaimDesign) -> dict[str, str]:
    """Each claim's primary comparison in words, from the group names of ``design``."""
    return {
        "a": f"`{design.cs}` − `{design.baseline}`, test accuracy",
        "b": f"`{design.baseline}` − `{design.cs}`, training loss after epoch 1",
        "c": f"`{design.cs}` − `{design.larger_baseline}`, test accuracy, {NON_INFERIORITY}, counted only where "
        f"`{design.larger_baseline}` beats `{design.baseline}`",
        "d": f"mean |feature-map cos| (uncentred) of `{design.orthogonality}` − raw `cs-reg`, each at its strongest "
        f"setting whose test accuracy is non-inferior to `{design.baseline}`",
        "e": f"(`{design.cs}` − `{design.baseline}`) − (`{design.cs_momentum}` − `{design.baseline_momentum}`), "
        "test accuracy",
    }


def design_text(design: ClaimDesign) -> str:
    """The primary comparisons of ``design`` in words (for the report's methods section)."""
    words = "; ".join(f"({k}) {v}" for k, v in planned_primaries(design).items())
    return f"- Primary comparisons: {words}.\n"
