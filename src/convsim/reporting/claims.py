"""Verdicts on the paper's claims (a)-(e), computed from groups of runs.

Each claim is tested by one or more comparisons: a :func:`convsim.reporting.intervals.contrast` of group
means, oriented so that a positive value supports the claim. :func:`verdict` says "holds" when
its interval lies above 0, "does not hold" when it lies below 0, "inconclusive (CI overlaps)"
otherwise; :func:`combine` merges the comparisons of one claim.

Example::

    for c in claims(group_runs(load_runs("runs/quick/runs"))):
        print(c["id"], c["verdict"])
"""
from __future__ import annotations

from typing import Mapping, Sequence

from convsim.reporting.intervals import Estimate, safe_contrast
from convsim.reporting.runs import (CS_FIELDS, CS_METHODS, ORTHO_METHODS, Group, accuracy_scale, baseline_for, collapsed, in_study,
                   method_label, width_sweep)

HOLDS, FAILS, OVERLAPS = "holds", "does not hold", "inconclusive (CI overlaps)"
TOO_FEW = "inconclusive (too few seeds for a CI)"
NOT_TESTED = "not tested"


def verdict(est: Estimate | None) -> str:
    """"holds" if the interval lies above 0, "does not hold" if below, else inconclusive.

    The contrast must be oriented so that a positive value supports the claim.

    Example:
        >>> verdict(Estimate(1.0, 0.5, 1.5, 3))
        'holds'
    """
    if est is None:
        return NOT_TESTED
    if est.low is None:
        return TOO_FEW
    if est.low > 0:
        return HOLDS
    if est.high < 0:
        return FAILS
    return OVERLAPS


def combine(verdicts: Sequence[str]) -> str:
    """Overall verdict of a claim tested by several comparisons.

    "holds" when at least one comparison holds and none fails; "does not hold" when at least one
    fails and none holds; mixed results and all-overlapping intervals are inconclusive.
    """
    tested = [v for v in verdicts if v != NOT_TESTED]
    if not tested:
        return NOT_TESTED
    h, f = HOLDS in tested, FAILS in tested
    if h and not f:
        return HOLDS
    if f and not h:
        return FAILS
    if h and f:
        return "inconclusive (mixed: some comparisons hold, some do not)"
    if all(v == TOO_FEW for v in tested):
        return TOO_FEW
    return OVERLAPS


def _comparison(label: str, est: Estimate | None, unit: str, scale: float = 1.0, note: str = "",
                verdict_override: str | None = None) -> dict:
    v = verdict_override or verdict(est)
    return {"label": label, "estimate": est.as_dict() if est else None, "verdict": v,
            "text": (f"{label}: {est.fmt_interval(scale, 2 if scale == 100 else 3)} {unit} ({est.method}, n={est.n}) → {v}"
                     if est else f"{label}: no data → {v}") + (f"; {note}" if note else "")}


def _points(scale: float) -> str:
    """Unit of an accuracy difference: percentage points when accuracies are shown in percent."""
    return "pts" if scale == 100 else ""


def _pairs_vs_baseline(groups: Sequence[Group], methods: Sequence[str]):
    for g in groups:
        if g.method in methods:
            b = baseline_for(g, groups)
            if b is not None:
                yield g, b


def claim_accuracy(groups: Mapping[str, Group], scale: float) -> dict:
    """(a) CS improves test accuracy: CS − baseline test accuracy per model and CS variant."""
    main = in_study(groups, "main")
    comps = []
    for g, b in _pairs_vs_baseline(main, CS_METHODS):
        est = safe_contrast([(1.0, g.values("test_acc")), (-1.0, b.values("test_acc"))])
        comps.append(_comparison(f"{g.get('model')} {method_label(g)} − baseline", est, _points(scale), scale))
    return _claim("a", "CS improves test accuracy", comps)


def claim_convergence(groups: Mapping[str, Group], scale: float) -> dict:
    """(b) faster convergence: baseline − CS training loss after the first epoch (> 0 supports)."""
    main = in_study(groups, "main")
    comps = []
    for g, b in _pairs_vs_baseline(main, CS_METHODS):
        est = safe_contrast([(1.0, b.values("train_loss", "first")), (-1.0, g.values("train_loss", "first"))])
        comps.append(_comparison(f"{g.get('model')} baseline − {method_label(g)}, train loss after epoch 1", est, "", 1.0))
    return _claim("b", "CS converges faster (lower training loss after the first epoch)", comps)


def claim_smaller(groups: Mapping[str, Group], scale: float) -> dict:
    """(c) smaller models match larger ones: CS at width w vs baseline at the next width up.

    A width pair is evidence only if the baseline gets significantly better with width. It
    *holds* when CS significantly beats the baseline at the small width and CS-small is not
    below baseline-large (mean >= 0, interval not below 0); it *does not hold* when CS-small is
    significantly below baseline-large.
    """
    sweep = width_sweep(groups)
    comps = []
    for (model, method), by_w in sweep.items():
        if method not in CS_METHODS or (model, "baseline") not in sweep:
            continue
        base = sweep[(model, "baseline")]
        widths = sorted(base)
        for small, large in zip(widths, widths[1:]):
            if small not in by_w:
                continue
            gap = safe_contrast([(1.0, base[large].values("test_acc")), (-1.0, base[small].values("test_acc"))])
            d = safe_contrast([(1.0, by_w[small].values("test_acc")), (-1.0, base[large].values("test_acc"))])
            gain = safe_contrast([(1.0, by_w[small].values("test_acc")), (-1.0, base[small].values("test_acc"))])
            label = f"{model} {method_label(by_w[small])} at width {small:g} − baseline at width {large:g}"
            if verdict(gap) != HOLDS:
                v = OVERLAPS if gap.low is not None else TOO_FEW
                note = f"baseline width gap {gap.fmt_interval(scale)} is not significant, so there is nothing to match"
            elif verdict(d) == FAILS:
                v, note = FAILS, ""
            elif verdict(gain) == HOLDS and d.mean >= 0:
                v, note = HOLDS, f"CS gain at width {small:g}: {gain.fmt_interval(scale)}"
            else:
                v = OVERLAPS if d.low is not None else TOO_FEW
                note = f"CS gain at width {small:g}: {gain.fmt_interval(scale)}"
            comps.append(_comparison(label, d, _points(scale), scale, note, v))
    return _claim("c", "CS lets smaller models match larger ones", comps)


def claim_orthogonality(groups: Mapping[str, Group], scale: float) -> dict:
    """(d) kernel orthogonality does not lower feature-map similarity as CS does.

    For each orthogonality penalty P that significantly lowers the mean |kernel cosine| against
    the baseline, and each CS regulariser V (cs-reg, cs-init+reg: like P, a training-time
    penalty) of the same model whose network trained (not :func:`collapsed`): fm(P) − fm(V) > 0
    supports the claim (CS leaves less feature-map similarity than orthogonality), for the
    uncentred and the centred feature-map cosine.
    """
    main = in_study(groups, "main")
    comps = []
    for p, b in _pairs_vs_baseline(main, ORTHO_METHODS):
        k = safe_contrast([(1.0, b.values("kernel_cosine")), (-1.0, p.values("kernel_cosine"))])
        if verdict(k) != HOLDS:
            comps.append(_comparison(f"{p.get('model')} baseline − {p.method}, |kernel cos|", k, "", 1.0,
                                     "the penalty did not lower kernel cosine, so it does not test the claim",
                                     NOT_TESTED))
            continue
        for v in main:
            if v.method not in ("cs-reg", "cs-init+reg") or v.context() != p.context() or collapsed(v):
                continue
            for key in ("fm_similarity", "fm_similarity_centered"):
                d = safe_contrast([(1.0, p.values(key)), (-1.0, v.values(key))])
                if d is None:
                    continue
                comps.append(_comparison(f"{p.get('model')} {p.method} − {method_label(v)}, {key}", d, "", 1.0,
                                         f"{p.method} lowers |kernel cos| by {k.fmt_interval()}"))
    return _claim("d", "Kernel orthogonality lowers kernel cosine but not feature-map similarity as CS does", comps)


def claim_momentum(groups: Mapping[str, Group], scale: float) -> dict:
    """(e) CS is harder to use with momentum: its accuracy gain shrinks under SGD momentum.

    (CS_0 − base_0) − (CS_m − base_m) > 0 supports the claim (0: no momentum, m: momentum);
    without no-momentum counterparts, base_m − CS_m > 0.
    """
    mom = [g for g in in_study(groups, "momentum") if float(g.get("momentum") or 0) > 0
           and g.get("optimizer", "sgd") == "sgd"]
    allg = list(groups.values())
    comps = []
    for g in mom:
        if g.method not in CS_METHODS:
            continue
        bm = baseline_for(g, allg)
        if bm is None:
            continue
        # The no-momentum counterparts may use another lr (the suites keep lr / (1 - momentum) equal).
        same = [h for h in allg if float(h.get("momentum") or 0) == 0 and h.get("optimizer", "sgd") == "sgd"
                and h.context(momentum=None, lr=None) == g.context(momentum=None, lr=None)]
        ref = [h for h in same if h.method == g.method and all(h.get(k) == g.get(k) for k in CS_FIELDS)]
        b0 = next((h for h in same if h.method == "baseline"), None)
        if ref and b0 is not None:
            est = safe_contrast([(1.0, ref[0].values("test_acc")), (-1.0, b0.values("test_acc")),
                                 (-1.0, g.values("test_acc")), (1.0, bm.values("test_acc"))])
            label = f"{g.get('model')} {method_label(g)}: gain without momentum − gain with momentum {g.get('momentum')}"
        else:
            est = safe_contrast([(1.0, bm.values("test_acc")), (-1.0, g.values("test_acc"))])
            label = f"{g.get('model')} baseline − {method_label(g)} with momentum {g.get('momentum')}"
        comps.append(_comparison(label, est, _points(scale), scale))
    c = _claim("e", "CS is harder to use with momentum (its gain shrinks under SGD momentum)", comps)
    if not comps:
        c["evidence"] = ["the suite has no `momentum` study (SGD-momentum runs with a matching baseline)"]
    return c


def _claim(cid: str, text: str, comps: list[dict]) -> dict:
    v = combine([c["verdict"] for c in comps]) if comps else NOT_TESTED
    return {"id": cid, "claim": text, "verdict": v, "comparisons": comps,
            "evidence": [c["text"] for c in comps] or ["no runs in this suite test it"]}


def claims(groups: Mapping[str, Group]) -> list[dict]:
    """The paper's claims (a)-(e), each with a verdict computed from the groups."""
    scale = accuracy_scale(groups)
    return [f(groups, scale) for f in (claim_accuracy, claim_convergence, claim_smaller,
                                      claim_orthogonality, claim_momentum)]
