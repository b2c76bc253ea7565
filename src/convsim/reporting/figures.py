"""The report's figures (matplotlib, no pyplot state): curves and bars over seeds with 95% CIs.

:func:`make_figures` writes every figure of :data:`FIGURES` into one folder; a suite without the
data for a figure gets a placeholder panel saying so.

Example::

    paths = make_figures(group_runs(load_runs("runs/quick/runs")), Path("runs/quick/figures"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convsim._internal.files import atomic_write
from convsim.reporting.intervals import mean_ci
from convsim.reporting.methods import CS_METHODS
from convsim.reporting.runs import (
    Group,
    Run,
    accuracy_scale,
    in_study,
    iters_series,
    method_label,
    percent_unit,
    strength,
    width_sweep,
)

METHOD_COLORS = {
    "baseline": "#333333",
    "cs-init": "#1f77b4",
    "cs-reg": "#ff7f0e",
    "cs-init+reg": "#2ca02c",
    "so": "#d62728",
    "dso": "#e377c2",
    "mc": "#bcbd22",
    "srip": "#8c564b",
    "ocnn": "#9467bd",
    "decov": "#17becf",
    "cs-init (normalised)": "#0b3d91",
    "cs-init+reg (normalised)": "#0e5e0e",
    "cs-reg (normalised)": "#a05000",
    "cs-decoupled": "#7f7f00",
}
FIGURES = {
    "cs_loss": "fig1_cs_loss.png",
    "train_loss": "fig2_train_loss.png",
    "train_acc": "fig3_train_acc.png",
    "resnet18": "fig4_resnet18.png",
    "init_iters": "fig5_init_iters.png",
    "width": "fig6_width.png",
    "shrinkage": "fig7_kernel_norm.png",
    "fm_vs_accuracy": "fig8_fm_vs_accuracy.png",
    "kernel_vs_fm": "fig9_kernel_vs_fm.png",
}


def curve(
    runs: Sequence[Run], key: str, init: bool = False, log: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over seeds at every epoch (or init step) logged by any run;
    low/high are NaN where fewer than two runs have the point.

    ``log=True`` (for log-scale plots of positive values) summarises the logarithms: the geometric
    mean and the exponentiated Student-t interval of the logs, a band that stays positive and is
    symmetric on the plotted scale. Points where some value is not positive are NaN.
    """
    per = [r.init_curve() if init else r.curve(key) for r in runs]
    xs = sorted(set().union(*per)) if per else []
    mean: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for x in xs:
        vals = [p[x] for p in per if x in p]
        if log and min(vals) <= 0:
            for column in (mean, lo, hi):
                column.append(math.nan)
            continue
        e = mean_ci(np.log(vals) if log else vals)
        back = math.exp if log else float
        mean.append(back(e.mean))
        lo.append(back(e.low) if e.low is not None else math.nan)
        hi.append(back(e.high) if e.high is not None else math.nan)
    return np.asarray(xs, float), np.asarray(mean), np.asarray(lo), np.asarray(hi)


def _new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _band(
    ax: Axes, x: np.ndarray, m: np.ndarray, lo: np.ndarray, hi: np.ndarray, label: str, color: str | None
) -> None:
    ax.plot(x, m, label=label, color=color, lw=1.6, marker="o" if len(x) < 12 else None, ms=3)
    ok = ~np.isnan(lo)
    if ok.any():
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.12, lw=0)


def _color(g: Group) -> str | None:
    key = g.method + (" (normalised)" if g.method in CS_METHODS and g.get("cs_normalize") else "")
    return METHOD_COLORS.get(key, METHOD_COLORS.get(g.method))


def _groups_by_model(groups: Sequence[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(str(g.get("model")), []).append(g)
    return out


def fig_cs_loss(groups: Mapping[str, Group], path: Path) -> Path:
    """Figure 1: CS loss during the initialisation phase (per step) and training (per epoch)."""
    fig, (a0, a1) = _new_figure(2)
    by_model = _groups_by_model(in_study(groups, "main"))
    model = "cnn1" if "cnn1" in by_model else (sorted(by_model)[0] if by_model else None)
    sel = [g for g in by_model.get(model or "", []) if g.method in ("baseline",) + CS_METHODS]
    drew0 = drew1 = False
    for g in sel:
        color = _color(g)
        x, m, lo, hi = curve(g.runs, "cs", init=True, log=True)
        if len(x):
            _band(a0, x, m, lo, hi, method_label(g), color)
            drew0 = True
        x, m, lo, hi = curve(g.runs, "cs", log=True)
        if len(x):
            _band(a1, x, m, lo, hi, method_label(g), color)
            drew1 = True
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, drew, title, xl in ((a0, drew0, "initialisation phase", "CS step"), (a1, drew1, "training", "epoch")):
        if drew:
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("CS loss")
            ax.legend(fontsize=8)
            ax.set_title(f"{model}: {title}", fontsize=10)
        else:
            _empty(ax, f"no {title} CS data in this suite")
    return _save(fig, path)


def fig_curves(groups: Mapping[str, Group], path: Path, key: str, ylabel: str, log: bool, scale: float = 1.0) -> Path:
    """Figures 2 and 3: a per-epoch metric per method, one panel per model of the main study."""
    by_model = _groups_by_model([g for g in in_study(groups, "main") if g.get("model") != "resnet18"])
    models = sorted(by_model) or ["cnn1"]
    fig, axes = _new_figure(len(models))
    for ax, model in zip(axes, models, strict=False):
        drew = False
        for g in by_model.get(model, []):
            if g.method not in ("baseline",) + CS_METHODS:
                continue  # the penalty baselines are in the tables; the paper's figures compare CS modes
            x, m, lo, hi = curve(g.runs, key, log=log)
            if len(x):
                _band(ax, x, m * scale, lo * scale, hi * scale, method_label(g), _color(g))
                drew = True
        if not drew:
            _empty(ax, f"no {model} runs in this suite")
            continue
        if log:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def fig_bars(groups: Sequence[Group], path: Path, title: str, scale: float) -> Path:
    """Figure 4: test accuracy per configuration with CI error bars."""
    fig, (ax,) = _new_figure(1, width=max(5.0, 0.9 * len(groups) + 2))
    ests = [(g, e) for g in groups if (e := g.estimate("test_acc")) is not None]
    if not ests:
        _empty(ax, "no runs for this figure in this suite")
        return _save(fig, path)
    xs = np.arange(len(ests))
    means = [e.mean * scale for _, e in ests]
    err = [(e.half_width or 0.0) * scale for _, e in ests]
    ax.bar(xs, means, yerr=err, capsize=4, color=[_color(g) or "#777" for g, _ in ests])
    ax.set_xticks(xs, [method_label(g) + f"\nw={g.get('width')}" for g, _ in ests], fontsize=7, rotation=20)
    lo = min(m - e for m, e in zip(means, err, strict=False))
    hi = max(m + e for m, e in zip(means, err, strict=False))
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_ylabel("test accuracy" + percent_unit(scale))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def fig_xy(
    series: Mapping[str, Mapping[float, Group]], path: Path, xlabel: str, title: str, scale: float, logx: bool = False
) -> Path:
    """Figures 5 and 6: test accuracy against a swept setting (I or width), one line per series."""
    fig, (ax,) = _new_figure(1)
    drew = False
    for label, by_x in series.items():
        pts = [(x, e) for x, g in sorted(by_x.items()) if (e := g.estimate("test_acc")) is not None]
        if not pts:
            continue
        x = np.asarray([p[0] for p in pts])
        m = np.asarray([p[1].mean for p in pts]) * scale
        err = np.asarray([(p[1].half_width or 0.0) for p in pts]) * scale
        last = list(by_x.values())[-1]  # the series' own method (its first point may be the baseline)
        ax.errorbar(x, m, yerr=err, label=label, capsize=3, marker="o", ms=4, color=_color(last))
        drew = True
    if not drew:
        _empty(ax, "no runs for this figure in this suite")
        return _save(fig, path)
    xs = sorted({float(x) for by_x in series.values() for x in by_x})
    if logx:
        ax.set_xscale("symlog", linthresh=max(1.0, min([x for x in xs if x > 0], default=1.0)))
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy" + percent_unit(scale))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_shrinkage(groups: Sequence[Group], path: Path) -> Path:
    """Figure 7: shrinkage or decorrelation. Per epoch, the mean kernel norm (over conv layers), the
    raw CS and the scale-invariant (normalised) CS, one line per CS strength and the baseline."""
    fig, axes = _new_figure(3, width=4.6)
    keys = (("kernel_norm", "mean kernel norm"), ("cs", "CS (raw)"), ("cs_normalized", "CS (normalised)"))
    drew = False
    for ax, (key, label) in zip(axes, keys, strict=False):
        for g in groups:
            x, m, lo, hi = curve(g.runs, key, log=True)
            if len(x) and not np.isnan(m).all():
                _band(ax, x, m, lo, hi, method_label(g), _color(g))
                drew = True
        if ax.has_data():
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
    if not drew:
        for ax in axes:
            _empty(ax, "no per-epoch kernel norms in this suite")
        return _save(fig, path)
    axes[0].legend(fontsize=6)
    return _save(fig, path)


MARKERS = "os^Dvp*"  # one per strength of a method, weakest first


def _markers(groups: Sequence[Group]) -> dict[str, str]:
    """{group name: marker}: groups of one colour (method) get distinct markers, by strength."""
    by_color: dict[str | None, list[Group]] = {}
    for g in groups:
        by_color.setdefault(_color(g), []).append(g)
    out = {}
    for family in by_color.values():
        for i, g in enumerate(sorted(family, key=lambda g: (strength(g) or 0.0, g.name))):
            out[g.name] = MARKERS[i % len(MARKERS)]
    return out


def fig_scatter(
    groups: Sequence[Group], path: Path, x_keys: Sequence[tuple[str, str]], y_key: tuple[str, str], scale_y: float = 1.0
) -> Path:
    """Figures 8 and 9: one point per configuration (method x strength) with 95% CIs on both axes,
    one panel per ``(x metric, label)``; colour is the method, marker its strength (legend below)."""
    fig, axes = _new_figure(len(x_keys), width=5.2, height=5.4)
    markers = _markers(groups)
    legend: dict[str, Any] = {}
    for ax, (xk, xlabel) in zip(axes, x_keys, strict=False):
        pts = [
            (g, ex, ey)
            for g in groups
            if (ex := g.estimate(xk)) is not None and (ey := g.estimate(y_key[0])) is not None
        ]
        if not pts:
            _empty(ax, "no runs for this figure in this suite")
            continue
        for g, ex, ey in pts:
            bars = ax.errorbar(
                ex.mean,
                ey.mean * scale_y,
                xerr=ex.half_width or 0.0,
                yerr=(ey.half_width or 0.0) * scale_y,
                fmt=markers[g.name],
                ms=5,
                capsize=2,
                elinewidth=0.8,
                color=_color(g) or "#777",
            )
            legend.setdefault(method_label(g), bars)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(y_key[1])
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=3, fontsize=7)
    return _save(fig, path)


def make_figures(groups: Mapping[str, Group], fig_dir: Path) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` (a placeholder panel when a suite has no data)."""
    scale = accuracy_scale(groups)
    fig_dir = Path(fig_dir)
    paths = {
        "cs_loss": fig_cs_loss(groups, fig_dir / FIGURES["cs_loss"]),
        "train_loss": fig_curves(groups, fig_dir / FIGURES["train_loss"], "train_loss", "training loss (log)", True),
        "train_acc": fig_curves(
            groups, fig_dir / FIGURES["train_acc"], "train_acc", "training accuracy" + percent_unit(scale), False, scale
        ),
        "resnet18": fig_bars(
            in_study(groups, "resnet"), fig_dir / FIGURES["resnet18"], "ResNet18 test accuracy", scale
        ),
        "init_iters": fig_xy(
            iters_series(groups),
            fig_dir / FIGURES["init_iters"],
            "initialisation iterations I",
            "test accuracy vs I",
            scale,
            logx=True,
        ),
        "width": fig_xy(
            {f"{m} {meth}": by_w for (m, meth), by_w in width_sweep(groups).items()},
            fig_dir / FIGURES["width"],
            "width multiplier",
            "test accuracy vs width",
            scale,
        ),
    }
    base = [
        g
        for g in groups.values()
        if g.get("width", 1.0) == 1.0
        and float(g.get("momentum") or 0) == 0
        and g.get("model") == "cnn1"
        and g.get("early_stop", "none") == "none"
    ]
    if any(g.runs[0].metrics and "kernel_norm" in g.runs[0].metrics[0] for g in base):
        strengths = [g for g in base if g.method in ("baseline", "cs-reg", "cs-decoupled")]
        fm = (
            ("fm_similarity", "mean |feature-map cos|, uncentred"),
            ("fm_similarity_centered", "mean |feature-map cos|, centred"),
        )
        paths["shrinkage"] = fig_shrinkage(strengths, fig_dir / FIGURES["shrinkage"])
        paths["fm_vs_accuracy"] = fig_scatter(
            base, fig_dir / FIGURES["fm_vs_accuracy"], fm, ("test_acc", "test accuracy" + percent_unit(scale)), scale
        )
        paths["kernel_vs_fm"] = fig_scatter(
            base, fig_dir / FIGURES["kernel_vs_fm"], (("kernel_cosine", "mean |kernel cos|"),), fm[0]
        )
    return paths
