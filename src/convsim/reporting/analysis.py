"""``convsim analyze``'s output for one :class:`~convsim.analysis.Analysis`: JSON, markdown tables and figures.

:func:`write_analysis` writes into one folder (every file atomically):

* ``analysis.json``: :meth:`Analysis.to_dict` (the schema of :mod:`convsim.analysis`), plus
  ``inputs`` (what was analysed, as the caller describes it) and ``figures`` (the file names);
* ``report.md``: the settings, a table of the weight and feature-map measures and a table of the
  CW-NNK measures (one row per layer, ``n/a`` where a measure does not apply), the definitions,
  and the figures;
* ``measures_vs_depth.png``: every measure against depth (the layers in forward order), one panel
  per measure;
* ``fm_cosine_heatmaps.png``: the (M, M) feature-map cosine matrices of the first, middle and last
  layer;
* ``channel_overlap_heatmaps.png``: the (M, M) M1 (Jaccard) channel-overlap matrices of the first,
  middle and last layer with CW-NNK (not written when no layer has filter pairs).

Example::

    from convsim import analyze
    write_analysis(analyze(model, images), "runs/analysis", inputs={"model": "my_net.py:build"})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
from matplotlib.ticker import MaxNLocator

from convsim._internal.files import atomic_write, atomic_write_json, atomic_write_text
from convsim.analysis import DEAD_TOL, Analysis, LayerAnalysis

__all__ = ["FIGURES", "PANELS", "analysis_markdown", "heatmap_layers", "write_analysis"]

FIGURES = {
    "depth": "measures_vs_depth.png",
    "fm_cosine": "fm_cosine_heatmaps.png",
    "overlap": "channel_overlap_heatmaps.png",
}
# panels of measures_vs_depth.png: (title, ((key, line label), ...), log scale); keys as in _value
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...], bool], ...] = (
    ("CS (per channel, all pairs)", (("cs", "CS"),), True),
    ("normalised CS", (("cs_normalized", "normalised CS"),), False),
    ("mean |kernel cosine|", (("kernel_abs_cos", "kernels"),), False),
    ("mean |feature-map cosine|", (("fm_abs_cos", "uncentred"), ("fm_abs_cos_centered", "centred")), False),
    (
        "feature-map effective rank",
        (("fm_effective_rank", "Gram"), ("fm_effective_rank_centered", "covariance"), ("out_channels", "channels")),
        False,
    ),
    ("dead channels (share)", (("dead_share", "constant"), ("never_positive_share", "never > 0")), False),
    ("CW-NNK M1 (Jaccard)", (("cwnnk.M1", "M1"),), False),
    ("CW-NNK M1w (weighted)", (("cwnnk.M1w", "M1w"),), False),
    ("CW-NNK M2 (union ratio)", (("cwnnk.M2", "M2"),), False),
    ("CW-NNK M3 (layer / channel counts)", (("cwnnk.M3", "M3"),), False),
    ("mean NNK count", (("cwnnk.mean_channel_count", "per channel"), ("cwnnk.mean_layer_count", "whole layer")), False),
    ("LOO error", (("cwnnk.layer_loo_error", "layer"), ("cwnnk.mean_channel_loo_error", "channel mean")), False),
)


def _value(layer: Mapping[str, Any], key: str) -> float:
    """A layer's measure by key (``cwnnk.M1``, ``dead_share``, ...) as a float; NaN when not applicable."""
    if key in ("dead_share", "never_positive_share"):
        listed = layer["dead_channels" if key == "dead_share" else "never_positive_channels"]
        return len(listed) / layer["out_channels"]
    if key.startswith("cwnnk."):
        sub = layer.get("cwnnk")
        v = None if sub is None else sub.get(key.split(".", 1)[1])
    else:
        v = layer.get(key)
    return math.nan if v is None else float(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, ``|`` in cells escaped. (``reporting.tables.markdown_table`` does the same, but
    importing that module costs scipy.stats, seconds of start-up for ``convsim analyze``.)"""
    esc = [[str(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in esc[1:]]) + "\n"


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else "–"


def _sci(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


# ------------------------------------------------------------------------------------------ figures


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _depth_axis(ax: Axes, names: Sequence[str]) -> None:
    depths = list(range(1, len(names) + 1))
    if len(names) <= 12:
        ax.set_xticks(depths, names, rotation=45, ha="right", fontsize=6)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("conv layer (depth)", fontsize=7)


def fig_measures_vs_depth(layers: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per entry of :data:`PANELS`: the measure of every layer against its depth."""
    names = [lay["name"] for lay in layers]
    depths = np.arange(1, len(layers) + 1)
    fig = Figure(figsize=(4 * 3.4, 3 * 2.7), layout="constrained")
    for i, (title, lines, log) in enumerate(PANELS):
        ax = fig.add_subplot(3, 4, i + 1)
        shown = False
        for key, label in lines:
            ys = np.array([_value(lay, key) for lay in layers])
            if np.isfinite(ys).any():
                ax.plot(depths, ys, marker="o", ms=3, label=label, ls="--" if key == "out_channels" else "-")
                shown = True
        ax.set_title(title, fontsize=8)
        if not shown:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if log and all(_value(lay, lines[0][0]) > 0 for lay in layers if math.isfinite(_value(lay, lines[0][0]))):
            ax.set_yscale("log")
        if len(lines) > 1:
            ax.legend(fontsize=6)
        ax.tick_params(labelsize=6)
        _depth_axis(ax, names)
    return _save(fig, path)


def heatmap_layers(layers: Sequence[LayerAnalysis], overlap: bool = False) -> list[LayerAnalysis]:
    """The first, middle and last layer (fewer when there are fewer), among those with CW-NNK when ``overlap``."""
    pool = [lay for lay in layers if lay.channel_overlap is not None] if overlap else list(layers)
    if not pool:
        return []
    picks = sorted({0, (len(pool) - 1) // 2, len(pool) - 1})
    return [pool[i] for i in picks]


def fig_heatmaps(
    layers: Sequence[LayerAnalysis],
    matrices: Sequence[torch.Tensor],
    title: str,
    limits: tuple[float, float],
    path: Path,
) -> Path:
    """One (M, M) heat map per layer, with a shared colour bar."""
    fig = Figure(figsize=(3.3 * len(layers) + 0.8, 3.2), layout="constrained")
    axes = [fig.add_subplot(1, len(layers), i + 1) for i in range(len(layers))]
    cmap = "RdBu_r" if limits[0] < 0 else "viridis"
    im = None
    for ax, lay, mat in zip(axes, layers, matrices, strict=True):
        im = ax.imshow(mat.double().numpy(), vmin=limits[0], vmax=limits[1], cmap=cmap, interpolation="nearest")
        ax.set_title(f"{lay.name} ({lay.type}, {lay.out_channels} ch.)", fontsize=8)
        ax.set_xlabel("channel", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("channel", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.85, label=title)
    return _save(fig, path)


def make_figures(analysis: Analysis, out_dir: Path) -> list[str]:
    """Write the figures of :data:`FIGURES` into ``out_dir``; returns the names written."""
    written = [fig_measures_vs_depth(analysis.to_dict()["layers"], out_dir / FIGURES["depth"]).name]
    chosen = heatmap_layers(analysis.layers)
    cos = [lay.fm_cosine for lay in chosen]
    written.append(fig_heatmaps(chosen, cos, "feature-map cosine", (-1.0, 1.0), out_dir / FIGURES["fm_cosine"]).name)
    chosen = heatmap_layers(analysis.layers, overlap=True)
    if chosen:
        m1 = [lay.channel_overlap for lay in chosen if lay.channel_overlap is not None]
        written.append(fig_heatmaps(chosen, m1, "M1 (Jaccard)", (0.0, 1.0), out_dir / FIGURES["overlap"]).name)
    return written


# ------------------------------------------------------------------------------------------ markdown


def _weight_fm_table(layers: Sequence[Mapping[str, Any]]) -> str:
    header = ["depth", "layer", "type", "C out", "groups", "CS", "CS normalised", "|kernel cos|"]
    header += ["|FM cos|", "|FM cos| centred", "eff. rank", "eff. rank centred", "dead", "never > 0"]
    rows = [
        [
            L["depth"],
            f"`{L['name']}`",
            L["type"],
            L["out_channels"],
            L["groups"],
            _sci(L["cs"]),
            _sci(L["cs_normalized"]),
            _fmt(L["kernel_abs_cos"]),
            _fmt(L["fm_abs_cos"]),
            _fmt(L["fm_abs_cos_centered"]),
            _fmt(L["fm_effective_rank"], 2),
            _fmt(L["fm_effective_rank_centered"], 2),
            len(L["dead_channels"]),
            len(L["never_positive_channels"]),
        ]
        for L in layers
    ]
    return _table(header, rows)


def _cwnnk_table(layers: Sequence[Mapping[str, Any]]) -> str:
    header = ["depth", "layer", "M1", "M1w", "M2", "M3", "count per channel", "layer count"]
    header += ["layer LOO", "channel LOO", "dead in sample", "saturated"]
    keys = ("M1", "M1w", "M2", "M3", "mean_channel_count", "mean_layer_count", "layer_loo_error")
    rows = []
    for L in layers:
        c = L["cwnnk"] or {}
        cells = [_fmt(c.get(k)) for k in keys] + [_fmt(c.get("mean_channel_loo_error"))]
        cells += [str(c["dead_in_sample"]) if c else "n/a", _fmt(c.get("saturated"), 2)]
        rows.append([L["depth"], f"`{L['name']}`", *cells])
    return _table(header, rows)


def _settings(result: Mapping[str, Any]) -> list[str]:
    inputs = result.get("inputs") or {}
    code = ("model", "weights")  # paths and specs in code font, descriptions as text
    lines = [
        f"- {k.replace('_', ' ')}: " + (f"`{v}`" if k in code else str(v)) for k, v in inputs.items() if v is not None
    ]
    lines += [
        f"- feature maps: the conv outputs (bias included, before any activation) of {result['n_inputs']} inputs",
        f"- CW-NNK: a seeded sample of {result['n_samples']} inputs (seed {result['seed']}), k = {result['k']}, "
        f"{result['nnk']['kernel']} kernel, {result['nnk']['solver']} solver; LOO errors "
        + ("from the data's labels" if result["labels"] else "n/a (no labels)"),
        f"- convsim {result['convsim_version']}",
    ]
    return lines


DEFINITIONS = f"""CS: the all-pairs, per-channel Convolutional Similarity of the layer's filters (within groups);
normalised: the same with every filter scaled to unit norm. |kernel cos| and |FM cos|: mean absolute cosine over
channel pairs of the flattened filters and of the pooled feature-map Gram (centred: correlation). Effective rank:
(tr A)² / ‖A‖²_F of the Gram (centred: covariance), between 1 and the channel count. Dead: channels whose output
varies by at most {DEAD_TOL:g} of the layer's largest variation over all the data; never > 0: channels a following
ReLU would zero on every input. CW-NNK (channel-wise NNK): M1 = mean off-diagonal Jaccard of the channels' NNK
neighbourhoods, M1w its weighted form, M2 = |union of channel neighbourhoods| / sum of their sizes (1 = disjoint),
M3 = the whole layer's NNK count / the sum of the channels' counts; LOO = leave-one-out NNK label-interpolation
error. n/a: a layer with one output channel per group (depthwise) has no filter pairs."""


def analysis_markdown(result: Mapping[str, Any]) -> str:
    """``report.md`` for the dict :func:`write_analysis` writes to ``analysis.json``."""
    lines = ["# Channel redundancy analysis", "", *_settings(result), ""]
    lines += ["## Weights and feature maps", "", _weight_fm_table(result["layers"])]
    lines += ["## Channel-wise NNK", "", _cwnnk_table(result["layers"])]
    lines += ["## Definitions", "", DEFINITIONS, ""]
    captions = {
        FIGURES["depth"]: "Every measure against depth",
        FIGURES["fm_cosine"]: "Feature-map cosines of the first, middle and last layer",
        FIGURES["overlap"]: "Channel overlap (M1) of the first, middle and last layer with CW-NNK",
    }
    if result.get("figures"):
        lines += ["## Figures", ""]
        for f in result["figures"]:
            lines += [f"![{captions.get(f, f)}]({f})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_analysis(
    analysis: Analysis, out_dir: str | Path, *, inputs: Mapping[str, Any] | None = None, figures: bool = True
) -> dict[str, Path]:
    """Write ``analysis.json``, ``report.md`` and (``figures``) the PNGs into ``out_dir``; returns name -> path.

    ``inputs`` describes what was analysed (e.g. ``{"model": ..., "weights": ..., "data": ...}``);
    it is stored under ``"inputs"`` in the JSON and listed in the report.
    """
    out = Path(out_dir)
    result = analysis.to_dict()
    result["inputs"] = dict(inputs or {})
    result["figures"] = make_figures(analysis, out) if figures else []
    paths = {name: out / name for name in result["figures"]}
    paths["analysis.json"] = atomic_write_json(out / "analysis.json", result)
    paths["report.md"] = atomic_write_text(out / "report.md", analysis_markdown(result))
    return paths
