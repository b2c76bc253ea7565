"""Markdown tables of the report: estimates formatted with their CIs, one row per configuration.

Example::

    print(table_groups(list(groups.values()), 100.0))   # | configuration | method | seeds | test acc (%) |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from convsim.reporting.intervals import Estimate
from convsim.reporting.methods import BASELINE, method_rank
from convsim.reporting.runs import Group, collapsed, in_study, method_label, percent_unit, width_sweep
from convsim.reporting.verdicts import ACCURACY


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (``|`` in cells escaped); a placeholder line when there are no rows."""
    if not rows:
        return "_no runs in this suite for this table_\n"
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt_estimate(e: Estimate | None, scale: float = 1.0, digits: int = 2) -> str:
    """:meth:`Estimate.fmt`, or ``"—"`` for no data."""
    return "—" if e is None else e.fmt(scale, digits)


def fmt_sci(e: Estimate | None) -> str:
    """``"1.23e+03 ± 45"`` (3 significant digits), for values spanning decades such as the CS loss."""
    if e is None:
        return "—"
    if e.low is None:
        return f"{e.mean:.3g} (n=1)"
    return f"{e.mean:.3g} ± {e.half_width:.2g}"


def table_kernel_fm(groups: Mapping[str, Group], scale: float) -> str:
    """Kernel orthogonality against feature-map similarity, one row per configuration of the main study."""
    rows = []
    for g in in_study(groups, "main"):
        rows.append(
            [
                g.get("model"),
                method_label(g) + (" (collapsed)" if collapsed(g) else ""),
                len(g.runs),
                fmt_estimate(g.estimate("kernel_cosine"), 1, 3),
                fmt_sci(g.estimate("cs")),
                fmt_estimate(g.estimate("fm_similarity"), 1, 3),
                fmt_estimate(g.estimate("fm_similarity_centered"), 1, 3),
                fmt_estimate(g.estimate("test_acc"), scale),
            ]
        )
    return markdown_table(
        [
            "model",
            "method",
            "seeds",
            "mean |kernel cos|",
            "CS",
            "mean |fm cos|",
            "mean |fm cos| centred",
            "test acc" + percent_unit(scale),
        ],
        rows,
    )


def smaller_models(groups: Mapping[str, Group], scale: float) -> tuple[str, list[dict]]:
    """The width-sweep table and, per CS method, the smallest width whose CS accuracy reaches
    (mean >= mean) the baseline of the next width up."""
    sweep = width_sweep(groups)
    rows, found = [], []
    for (model, method), by_w in sorted(sweep.items(), key=lambda kv: (str(kv[0][0]), method_rank(kv[0][1]))):
        if method == BASELINE or (model, BASELINE) not in sweep:
            continue
        base = sweep[(model, BASELINE)]
        widths = sorted(base)
        hit = None
        for i, w in enumerate(widths):
            if w not in by_w:
                continue
            cs_e, b_e = by_w[w].estimate("test_acc"), base[w].estimate("test_acc")
            nxt = base[widths[i + 1]].estimate("test_acc") if i + 1 < len(widths) else None
            reaches = nxt is not None and cs_e is not None and cs_e.mean >= nxt.mean
            if reaches and hit is None:
                hit = w
            rows.append(
                [
                    model,
                    f"{w:g}",
                    fmt_estimate(b_e, scale),
                    f"{method_label(by_w[w])}: {fmt_estimate(cs_e, scale)}",
                    fmt_estimate(nxt, scale) if nxt else "—",
                    "yes" if reaches else ("—" if nxt is None else "no"),
                ]
            )
        found.append({"model": model, "method": method, "smallest_width": hit, "widths": widths})
    u = percent_unit(scale)
    table = markdown_table(
        ["model", "width", f"baseline acc{u}", f"CS acc{u}", f"baseline acc at next width{u}", "CS reaches it"], rows
    )
    return table, found


def table_groups(
    groups: Sequence[Group], scale: float, extra: Sequence[tuple[str, Callable[[Group], str]]] = ()
) -> str:
    """Test accuracy per configuration, then one column per ``(header, fn(group) -> cell)`` of ``extra``."""
    rows = []
    for g in groups:
        rows.append(
            [g.name, method_label(g), len(g.runs), fmt_estimate(g.estimate("test_acc"), scale)]
            + [fn(g) for _, fn in extra]
        )
    return markdown_table(
        ["configuration", "method", "seeds", "test acc" + percent_unit(scale)] + [h for h, _ in extra], rows
    )


def settings_table(groups: Sequence[Group]) -> tuple[dict, dict[str, dict]]:
    """The most common value of every setting over the groups (ties: first seen), and each
    group's settings that differ from it.

    Example: groups with lr 0.02, 0.02, 0.002 give ``typical["lr"] == 0.02`` and ``{"lr": 0.002}``
    for the third.
    """
    cfgs = {g.name: g.config for g in groups}
    keys = sorted(set().union(*[set(c) for c in cfgs.values()])) if cfgs else []
    typical = {}
    for k in keys:
        counts: dict[str, int] = {}
        for c in cfgs.values():
            key = json.dumps(c.get(k), sort_keys=True, default=str)
            counts[key] = counts.get(key, 0) + 1
        typical[k] = json.loads(max(counts, key=lambda key: counts[key]))
    diff = {
        n: {
            k: v
            for k, v in c.items()
            if json.dumps(v, sort_keys=True, default=str) != json.dumps(typical.get(k), sort_keys=True, default=str)
        }
        for n, c in cfgs.items()
    }
    return typical, diff


def claims_markdown(cl: list[dict]) -> str:
    """The verdict table of :func:`convsim.reporting.claims.claims` (each claim with its primary
    comparison), then each claim's evidence as a list."""
    rows = []
    for c in cl:
        p = c.get("primary") or {}
        est = p.get("estimate")
        scale = 100.0 if p.get("metric") == ACCURACY and est and abs(est["mean"]) <= 1 else 1.0
        interval = "—" if not est else _interval(est, scale)
        stable = {True: "yes", False: "no", None: "—"}[p.get("loo_stable")]
        pv = "—" if p.get("p") is None else f"{p['p']:.2g}"
        rows.append([f"({c['id']})", c["claim"], p.get("label", "—"), interval, pv, f"**{c['verdict']}**", stable])
    out = [
        markdown_table(
            [
                "",
                "paper claim",
                "primary comparison",
                "estimate [95% CI]",
                "p",
                "verdict",
                "stable leaving out one seed",
            ],
            rows,
        )
    ]
    for c in cl:
        out.append(f"**({c['id']}) {c['claim']}** — {c['verdict']}.\n")
        out += [f"- {line}" for line in c["evidence"]]
        out.append("")
    return "\n".join(out) + "\n"


def _interval(est: dict, scale: float) -> str:
    if est.get("low") is None:
        return f"{est['mean'] * scale:+.3g} (n={est['n']})"
    digits = 2 if scale == 100 else 3
    unit = " pts" if scale == 100 else ""
    return (
        f"{est['mean'] * scale:+.{digits}f} [{est['low'] * scale:+.{digits}f}, {est['high'] * scale:+.{digits}f}]{unit}"
    )
