r"""``convsim overlap``: channel-wise NNK analysis of trained runs, with figures and a report section.

For every run directory (``convsim train``'s output: ``summary.json`` + ``checkpoint.pt``) the model
is rebuilt with :func:`convsim.training.loop.load_run`, ``n_samples`` images of its dataset (``split``,
a seeded subset that is the same for every run of a dataset) are normalised and passed through
it, and :func:`convsim.nnk.layer_overlap` analyses every conv layer. Per layer the summary keeps
the mean NNK count per channel (:math:`\bar n^c`) and of the whole layer (:math:`\bar n`), the
overlap scores M1 (mean off-diagonal Jaccard), M1w, M2 (union ratio; redundancy = 1 - M2) and M3
(aggregate ratio), dead channels and the LOO label-interpolation errors. Across runs, the last conv
layer's measures are correlated with the run's final test accuracy (Pearson and Spearman,
``scipy.stats``; reported when at least 3 runs vary).

Files written to ``out_dir``: ``overlap.json`` (every figure's numbers), ``counts_vs_depth.png``,
``overlap_vs_depth.png``, ``overlap_heatmaps.png`` (M1 of the last conv layer per run) and
``overlap_vs_accuracy.png``; the command also writes ``overlap.md``.

    convsim overlap runs/quick/runs/* --out runs/quick/overlap --n-samples 2000 -k 25
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from convsim import data
from convsim._internal.files import atomic_write, atomic_write_json
from convsim.nnk.channels import ChannelOverlap, layer_overlap
from convsim.nnk.neighbors import KERNELS
from convsim.nnk.options import NNKOptions
from convsim.nnk.solvers import SOLVERS
from convsim.reporting.cwnnk_records import KEYED_DEFAULTS, store_record, stored_record
from convsim.reporting.methods import is_collapsed

__all__ = ["overlap_analysis", "overlap_markdown", "MEASURES"]

# last-conv-layer measures correlated with test accuracy: key -> description
MEASURES = {
    "jaccard_score": "M1, mean off-diagonal Jaccard of channel neighbourhoods",
    "weighted_score": "M1w, weighted neighbourhood overlap",
    "redundancy": "1 - M2, shared share of the channel neighbours",
    "aggregate_ratio": "M3, layer count / sum of channel counts",
    "mean_channel_count": "mean NNK count per channel",
    "mean_layer_count": "mean NNK count of the whole layer",
    "mean_channel_loo": "mean per-channel LOO error",
    "layer_loo": "LOO error of the whole layer",
}
FIGURES = ("counts_vs_depth.png", "overlap_vs_depth.png", "overlap_heatmaps.png", "overlap_vs_accuracy.png")
MAX_HEATMAPS = 12


def _layer_summary(depth: int, name: str, r: ChannelOverlap, activation_shape: Sequence[int]) -> dict:
    live = ~r.dead
    counts = r.counts.double()
    out = {
        "depth": depth,
        "name": name,
        "channels": int(r.counts.shape[1]),
        "map_size": int(np.prod(activation_shape[2:])) if len(activation_shape) > 2 else 1,
        "dead": int(r.dead.sum()),
        "mean_channel_count": float(counts[:, live].mean()) if bool(live.any()) else 0.0,
        "mean_layer_count": float(r.aggregate_counts.double().mean()),
        "mean_sum_channel_counts": float(counts.sum(1).mean()),
        "jaccard_score": r.jaccard_score,
        "weighted_score": r.weighted_score,
        "union_ratio": float(r.union_ratio),
        "redundancy": 1.0 - float(r.union_ratio),
        "aggregate_ratio": float(r.aggregate_ratio),
        "saturated": float(r.saturated),
        "zero_fraction": float(r.zero_fraction[live].mean()) if bool(live.any()) else 1.0,
    }
    if r.loo_error is not None:
        out["mean_channel_loo"] = float(r.loo_error[live].mean()) if bool(live.any()) else 1.0
        out["layer_loo"] = float(r.layer_loo_error) if r.layer_loo_error is not None else None
    return out


def _correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    from scipy import stats

    pts = [
        (a, b)
        for a, b in zip(x, y, strict=False)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    res: dict[str, Any] = {"n": len(pts), "pearson_r": None, "pearson_p": None, "spearman_r": None, "spearman_p": None}
    if len(pts) < 3:
        return res
    xs, ys = np.array(pts).T
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return res
    pr = stats.pearsonr(xs, ys)
    sr = stats.spearmanr(xs, ys)
    res.update(pearson_r=float(pr[0]), pearson_p=float(pr[1]), spearman_r=float(sr[0]), spearman_p=float(sr[1]))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}


def _correlations(runs: Sequence[dict]) -> dict:
    """Correlation of each last-layer measure with test accuracy across ``runs``."""
    accs = [r["test_acc"] for r in runs]
    return {m: _correlation([r["last_layer"].get(m) for r in runs], accs) for m in MEASURES}


def _correlation_table(correlations: dict) -> list[str]:
    rows = ["| measure | n | Pearson r | p | Spearman r | p |", "|---|---|---|---|---|---|"]
    for m, c in correlations.items():
        rows.append(
            f"| {MEASURES[m]} | {c['n']} | {_fmt(c['pearson_r'], 2)} | {_fmt(c['pearson_p'], 3)} "
            f"| {_fmt(c['spearman_r'], 2)} | {_fmt(c['spearman_p'], 3)} |"
        )
    return rows


def _run_label(run_dir: Path) -> str:
    spec = run_dir / "spec.json"
    if spec.exists():
        try:
            s = json.loads(spec.read_text())
            if s.get("name"):
                return str(s["name"])
        except (OSError, json.JSONDecodeError):
            pass
    return run_dir.name


def _samples(
    dataset: str, split: str, n_samples: int, seed: int, root: str | None
) -> tuple[torch.Tensor, torch.Tensor]:

    images, labels = data.load(dataset, split, root=root)
    if images.shape[0] > n_samples:
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n_samples].sort().values
        images, labels = images[pick], labels[pick]
    return data.normalize(images, dataset), labels


def _run_record(
    rd: Path, model: torch.nn.Module, config: Any, summary: dict, res: dict[str, ChannelOverlap], x: torch.Tensor
) -> dict:
    """One run's entry of the analysis: its layers' summaries, the last layer's matrices, and
    whether it collapsed (at chance accuracy, e.g. kernels shrunk to ~0 by a raw CS
    initialisation: a degenerate network, kept in the tables but left out of the correlations)."""
    from convsim._internal.hooks import capture

    with torch.no_grad(), capture(model, list(res)) as store:  # map sizes, from one sample
        model(x[:1])
    shapes = {name: tuple(store[name].shape) for name in res}
    per_layer = [_layer_summary(i + 1, name, r, shapes[name]) for i, (name, r) in enumerate(res.items())]
    last = list(res.values())[-1]
    acc = summary.get("test_acc")
    return {
        "name": _run_label(Path(rd)),
        "path": str(rd),
        "model": getattr(config, "model", None),
        "width": getattr(config, "width", None),
        "dataset": config.dataset,
        "seed": getattr(config, "seed", None),
        "test_acc": acc,
        "collapsed": isinstance(acc, (int, float)) and is_collapsed(float(acc), data.DATASETS[config.dataset].classes),
        "layers": per_layer,
        "last_layer": {
            **per_layer[-1],
            "jaccard": last.jaccard.tolist(),
            "weighted_overlap": last.weighted_overlap.tolist(),
            "dead_channels": last.dead.tolist(),
            "loo_error": None if last.loo_error is None else last.loo_error.tolist(),
        },
    }


def _analyse_run(
    rd: Path,
    keyed: dict[str, Any],
    batch_size: int,
    data_dir: str | None,
    samples: dict[tuple, tuple[torch.Tensor, torch.Tensor]],
) -> dict:
    """One run's record, from its checkpoint; ``samples`` caches the images per (dataset, folder)."""
    from convsim.training.loop import load_run  # the trainer is heavy; import on use

    model, config, summary = load_run(rd)
    key = (config.dataset, data_dir or getattr(config, "data_dir", None))
    if key not in samples:
        samples[key] = _samples(config.dataset, keyed["split"], keyed["n_samples"], keyed["seed"], key[1])
    x, y = samples[key]
    res = layer_overlap(
        model,
        x,
        layers=keyed["layers"],
        n_samples=x.shape[0],
        batch_size=batch_size,
        labels=y,
        seed=keyed["seed"],
        k=keyed["k"],
        kernel=keyed["kernel"],
        solver=keyed["solver"],
        pruning_tol=keyed["pruning_tol"],
    )
    return _run_record(rd, model, config, summary, res, x)


def keep_run_record(run_dir: str | Path, *, batch_size: int = 256, data_dir: str | None = None, **options: Any) -> dict:
    """Store one run's CW-NNK record beside it (:mod:`convsim.reporting.cwnnk_records`) while its checkpoint
    exists, unless a matching one is stored already; returns the record. ``options`` are the keyed
    settings of :func:`overlap_analysis` (``n_samples``, ``k``, ...; defaults filled in)."""
    run_dir = Path(run_dir)
    unknown = sorted(set(options) - set(KEYED_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown overlap settings {unknown}; expected some of {sorted(KEYED_DEFAULTS)}")
    keyed = {**KEYED_DEFAULTS, **options}
    record = stored_record(run_dir, keyed)
    if record is None:
        record = _analyse_run(run_dir, keyed, batch_size, data_dir, {})
        store_record(run_dir, keyed, record)
    return record


def overlap_analysis(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    n_samples: int = KEYED_DEFAULTS["n_samples"],
    k: int = KEYED_DEFAULTS["k"],
    kernel: str = KEYED_DEFAULTS["kernel"],
    solver: str = KEYED_DEFAULTS["solver"],
    pruning_tol: float = KEYED_DEFAULTS["pruning_tol"],
    split: str = KEYED_DEFAULTS["split"],
    layers: Sequence[str] | None = KEYED_DEFAULTS["layers"],
    seed: int = KEYED_DEFAULTS["seed"],
    batch_size: int = 256,
    data_dir: str | None = None,
    figures: bool = True,
    keep_records: bool = False,
) -> dict:
    r"""CW-NNK analysis of trained runs; writes ``overlap.json`` and the figures to ``out_dir``.

    Args:
        run_dirs: run directories of ``convsim train`` (``summary.json`` + ``checkpoint.pt``, or a
            stored record with ``keep_records``).
        out_dir: output folder (created).
        n_samples: images analysed per run (a seeded subset of ``split``, the same for every run
            of a dataset).
        k, kernel, solver, pruning_tol: NNK options (:func:`convsim.nnk.channel_overlap`; the
            tolerance is used by ``solver="pruning"`` only).
        split: ``"train"`` (the CW-NNK papers use training data) or ``"test"``.
        layers: module names; default every conv layer of each model.
        seed: seed of the image subset.
        batch_size: forward batch size.
        data_dir: dataset folder; default the one in each run's config.
        figures: write the PNG figures.
        keep_records: keep each run's analysis in its folder (:mod:`convsim.reporting.cwnnk_records`)
            and reuse a stored one that matches the run's summary and these settings, so that the
            run's checkpoint is needed only once.

    Returns:
        JSON-ready dict: ``options`` (with ``solver``, ``pruning_tol`` for the pruning solver, and
        ``nnk``, every NNK setting used, :meth:`convsim.nnk.NNKOptions.summary`), ``runs`` (per
        run: name, path, model, width, dataset, seed, ``test_acc``, ``layers`` (per-layer
        summaries in depth order), ``last_layer`` with its M1 / M1w matrices), ``correlations``
        (per measure of :data:`MEASURES`: Pearson/Spearman r and p against test accuracy over the
        runs, ``None`` with fewer than 3 varying runs), ``figures`` (file names in ``out_dir``)
        and ``out_dir``.

    Example:
        >>> result = overlap_analysis(["runs/a", "runs/b", "runs/c"], "runs/overlap")  # doctest: +SKIP
        >>> print(overlap_markdown(result))  # doctest: +SKIP
    """
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("overlap_analysis needs at least one run directory")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    # the settings channel_overlap resolves these keywords to (it validates pruning_tol here)
    nnk_options = NNKOptions(k=k, kernel=kernel, solver=solver, pruning_tol=pruning_tol, duplicates="drop")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keyed = {"n_samples": n_samples, "k": k, "kernel": kernel, "solver": solver, "pruning_tol": pruning_tol}
    keyed |= {"split": split, "layers": layers, "seed": seed}
    samples: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    runs = []
    for rd in paths:
        record = stored_record(rd, keyed) if keep_records else None
        if record is None:
            record = _analyse_run(rd, keyed, batch_size, data_dir, samples)
            if keep_records:
                store_record(rd, keyed, record)
        runs.append(record)
    trained = [r for r in runs if not r["collapsed"]]
    correlations = _correlations(trained)
    # Pooling architectures confounds overlap with the model (M3 is about 1/C): also per model.
    models = sorted({str(r["model"]) for r in trained})
    by_model = (
        {m: _correlations([r for r in trained if str(r["model"]) == m]) for m in models} if len(models) > 1 else {}
    )
    result = {
        "options": {
            "n_samples": int(n_samples),
            "k": k,
            "kernel": kernel,
            "solver": solver,
            **({"pruning_tol": pruning_tol} if solver == "pruning" else {}),
            "split": split,
            "seed": seed,
            "layers": list(layers) if layers else None,
            "nnk": nnk_options.summary(),
        },
        "runs": runs,
        "correlations": correlations,
        "correlations_by_model": by_model,
        "figures": [],
        "out_dir": str(out_dir),
    }
    if figures:
        result["figures"] = _figures(result, out_dir)
    atomic_write_json(out_dir / "overlap.json", result)
    return result


# ------------------------------------------------------------------------------------------ figures


def _depth_pair(
    runs: Sequence[dict], left: tuple[str, str, str], right: tuple[str, str, str], legend: bool, path: Path
) -> None:
    """Two panels of per-layer values against depth, one line per run (same colour in both);
    ``left``/``right`` are (layer key, y label, title)."""
    fig, axes = _new_figure(2)
    for r in runs:
        d = [lay["depth"] for lay in r["layers"]]
        (line,) = axes[0].plot(d, [lay[left[0]] for lay in r["layers"]], marker="o", ms=3, label=r["name"])
        axes[1].plot(d, [lay[right[0]] for lay in r["layers"]], marker="o", ms=3, color=line.get_color())
    for ax, (_, ylabel, title) in zip(axes, (left, right), strict=False):
        ax.set(xlabel="conv layer (depth)", ylabel=ylabel, title=title)
    if legend:
        axes[0].legend(fontsize=6)
    _save(fig, path)


def _new_figure(ncols: int, width: float = 4.6, height: float = 3.4, nrows: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _figures(result: dict, out_dir: Path) -> list[str]:
    from matplotlib.ticker import MaxNLocator

    runs = result["runs"]
    legend = len(runs) <= 12
    # 1. counts against depth: per-channel mean vs whole-layer mean
    _depth_pair(
        runs,
        ("mean_channel_count", "mean NNK count", "per channel"),
        ("mean_layer_count", "mean NNK count", "whole layer"),
        legend,
        out_dir / FIGURES[0],
    )
    # 2. redundancy (1 - M2) and M3 against depth
    _depth_pair(
        runs,
        ("redundancy", "1 - M2", "redundancy (shared channel neighbours)"),
        ("aggregate_ratio", "M3", "layer count / sum of channel counts"),
        legend,
        out_dir / FIGURES[1],
    )
    # 3. M1 heat maps of the last conv layer
    shown = runs[:MAX_HEATMAPS]
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, axes = _new_figure(ncols, 3.2, 3.0, nrows)
    for ax, r in zip(axes, shown, strict=False):
        im = ax.imshow(np.array(r["last_layer"]["jaccard"]), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{r['name']}\n{r['last_layer']['name']} (M1)", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(shown) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8)
    _save(fig, out_dir / FIGURES[2])
    # 4. last-layer overlap against test accuracy
    fig, axes = _new_figure(2)
    trained = [r for r in runs if not r.get("collapsed")]
    acc = [r["test_acc"] for r in trained]
    for ax, m in zip(axes, ("aggregate_ratio", "redundancy"), strict=False):
        xs = [r["last_layer"][m] for r in trained]
        pts = [(x, y) for x, y in zip(xs, acc, strict=False) if y is not None]
        if pts:
            px, py = np.array(pts).T
            ax.scatter(px, py, s=18)
            c = result["correlations"][m]
            if c["pearson_r"] is not None:
                slope, icpt = np.polyfit(px, py, 1)
                grid = np.linspace(px.min(), px.max(), 20)
                ax.plot(grid, slope * grid + icpt, color="C3", lw=1)
                ax.set_title(
                    f"Pearson r = {c['pearson_r']:.2f}, Spearman = {c['spearman_r']:.2f} (n={c['n']})", fontsize=8
                )
            else:
                ax.set_title(f"n = {c['n']}: too few varying runs for r", fontsize=8)
        ax.set(xlabel=f"last conv layer: {MEASURES[m]}", ylabel="test accuracy")
        ax.xaxis.label.set_fontsize(8)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.tick_params(labelsize=7)
    _save(fig, out_dir / FIGURES[3])
    return list(FIGURES)


# ------------------------------------------------------------------------------------------ markdown


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "–"
    return str(v)


def solver_description(options: dict) -> str:
    """The NNK solver of an analysis' ``options`` in words, with the pruning solver's tolerance.

    Example:
        >>> solver_description({"solver": "pruning", "pruning_tol": 1e-6})
        'pruning solver (the released one-way solver, tolerance 1e-06)'
    """
    solver = options.get("solver", "exact")
    if solver == "pruning":
        return f"pruning solver (the released one-way solver, tolerance {options.get('pruning_tol', 1e-6):g})"
    return f"{solver} solver"


def overlap_markdown(result: dict, figure_dir: str | None = None) -> str:
    """A report section (markdown, no top heading) for the result of :func:`overlap_analysis`.

    ``figure_dir`` is the figures' folder relative to the markdown file; default the name of the
    analysis folder (``overlap/`` when the section sits in a report one level up).
    """
    o = result["options"]
    prefix = Path(result.get("out_dir", "")).name if figure_dir is None else figure_dir
    prefix = "" if prefix in ("", ".") else prefix.rstrip("/") + "/"
    lines = [
        f"Channel-wise NNK (CW-NNK) on {o['n_samples']} {o['split']} images per run, k = {o['k']} candidates, "
        f"{o['kernel']} kernel, {solver_description(o)}. Per channel, each image's flattened feature map is a point; "
        "the whole layer (channels concatenated) is analysed alongside. M1 = mean off-diagonal Jaccard of the "
        "channels' NNK neighbourhoods, M2 = |union of channel neighbourhoods| / sum of their sizes (1 - M2 = "
        "redundancy), M3 = layer count / sum of channel counts (about 1/C for redundant channels, larger for "
        "complementary ones). Dead channels are excluded. LOO = leave-one-out NNK label interpolation error.",
        "",
        "**Last conv layer**",
        "",
        "| run | layer | C | dead | mean count per channel | layer count | M1 | 1 - M2 | M3 | channel LOO | layer LOO "
        "| test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        L = r["last_layer"]
        lines.append(
            f"| {r['name']} | {L['name']} | {L['channels']} | {L['dead']} | {_fmt(L['mean_channel_count'], 2)} "
            f"| {_fmt(L['mean_layer_count'], 2)} | {_fmt(L['jaccard_score'])} | {_fmt(L['redundancy'])} "
            f"| {_fmt(L['aggregate_ratio'])} | {_fmt(L.get('mean_channel_loo'))} | {_fmt(L.get('layer_loo'))} "
            f"| {_fmt(r['test_acc'], 4)} |"
        )
    lines += ["", "**Correlation with test accuracy across runs (last conv layer)**", ""]
    lines += _correlation_table(result["correlations"])
    for model, corr in result.get("correlations_by_model", {}).items():
        lines += ["", f"_Within {model} runs only:_", ""] + _correlation_table(corr)
    excluded = [r["name"] for r in result["runs"] if r.get("collapsed")]
    if excluded:
        lines += [
            "",
            f"_Runs at chance accuracy (below 1.5 × chance) are left out of the correlations: {', '.join(excluded)}._",
        ]
    if all(c["pearson_r"] is None for c in result["correlations"].values()):
        lines += ["", "_Correlations need at least 3 runs whose values vary._"]
    lines += [
        "",
        "**Every conv layer**",
        "",
        "| run | depth | layer | C | dead | count per channel | layer count | M1 | 1 - M2 | M3 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        for L in r["layers"]:
            lines.append(
                f"| {r['name']} | {L['depth']} | {L['name']} | {L['channels']} | {L['dead']} "
                f"| {_fmt(L['mean_channel_count'], 2)} | {_fmt(L['mean_layer_count'], 2)} "
                f"| {_fmt(L['jaccard_score'])} | {_fmt(L['redundancy'])} | {_fmt(L['aggregate_ratio'])} |"
            )
    if result.get("figures"):
        lines.append("")
        captions = {
            FIGURES[0]: "NNK counts per channel and of the whole layer against depth",
            FIGURES[1]: "Redundancy (1 - M2) and M3 against depth",
            FIGURES[2]: "M1 overlap matrices of the last conv layer",
            FIGURES[3]: "Last-conv-layer overlap against test accuracy",
        }
        for f in result["figures"]:
            lines.append(f"![{captions.get(f, f)}]({prefix}{f})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
