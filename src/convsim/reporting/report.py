"""``report.md``, ``results.json``, ``summary.csv`` and figures for a folder of training runs.

:func:`write_report` reads the run directories (:mod:`convsim.reporting.runs`), groups runs that differ only
in their seed, and reports every number as a mean over seeds with a 95% Student-t confidence
interval (:mod:`convsim.reporting.intervals`); it decides the paper's claims (:mod:`convsim.reporting.claims`), draws
the figures (:mod:`convsim.reporting.figures`) and lays out the tables (:mod:`convsim.reporting.tables`). The names of
those modules stay importable from here.

Example (synthetic run directories; see ``tests/test_report.py``)::

    result = write_report("runs/quick")          # reads runs/quick/runs/*, writes report.md
    print(result["claims"][0]["verdict"])
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence


from convsim.reporting.claims import (FAILS, HOLDS, NOT_TESTED, OVERLAPS, TOO_FEW, claim_accuracy, claim_convergence,  # noqa: F401
                     claim_momentum, claim_orthogonality, claim_smaller, claims, combine, verdict)
from convsim.reporting.figures import (FIGURES, METHOD_COLORS, curve, fig_bars, fig_cs_loss, fig_curves, fig_xy,  # noqa: F401
                      make_figures)
from convsim.reporting.intervals import CONFIDENCE, Estimate, contrast, mean_ci, safe_contrast  # noqa: F401
from convsim._internal.files import atomic_write_json, atomic_write_text
from convsim.reporting.runs import (COMPLETE_STATUSES, CONTEXT_FIELDS, CS_FIELDS, CS_METHODS, METHOD_ORDER,  # noqa: F401
                   NUM_CLASSES, ORTHO_METHODS, RUN_FIELDS, Group, Run, accuracy_scale, collapsed, group_runs,
                   in_study, infer_method, iters_series, load_runs, percent_unit, read_json, read_run, width_sweep)
from convsim.training.summary import FINAL_KEYS as FINAL_METRICS  # the delivered weights' metrics, top level of summary.json
from convsim.reporting.tables import (claims_markdown, fmt_estimate, fmt_sci, markdown_table, settings_table,  # noqa: F401
                     smaller_models, table_groups, table_kernel_fm)

# Per configuration (results.json, summary.csv): FINAL_METRICS and the training loss after epoch 1.
GROUP_METRICS = FINAL_METRICS + ("train_loss_epoch1",)
SECTIONS = (
    "## Claims",
    "## Setup",
    "## Figure 1: CS loss during training",
    "## Figure 2: training loss",
    "## Figure 3: training accuracy",
    "## Figure 4: ResNet18",
    "## Figure 5: test accuracy versus initialisation iterations",
    "## Kernel orthogonality versus feature-map similarity",
    "## Smaller models",
    "## Regulariser weight",
    "## Momentum",
    "## Early stopping",
    "## Channel-wise NNK overlap",
    "## All configurations",
    "## How the numbers are computed",
    "## Versions",
)


def jsonable(obj: Any) -> Any:
    """Tensors, arrays, paths and numpy scalars turned into JSON values (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def run_versions() -> dict:
    """Versions of a run's libraries plus those that computed and drew the report."""
    import matplotlib
    import scipy

    from convsim.training.summary import versions

    return {**versions(), "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "platform": platform.platform()}


# ----------------------------------------------------------------------------------------------
# Overlap (channel-wise NNK) section
# ----------------------------------------------------------------------------------------------

def overlap_section(groups: Mapping[str, Group], out_dir: Path, options: Mapping[str, Any] | None,
                    analysis: Callable | None = None, markdown: Callable | None = None) -> tuple[dict | None, str]:
    """Run ``convsim.reporting.overlap.overlap_analysis`` on the runs of ``options["study"]`` (default
    "main"), cached in ``out_dir/overlap/cache.json`` keyed by the runs' summaries and the options."""
    options = dict(options or {})
    if options.get("skip"):
        return None, "_overlap analysis switched off for this suite_\n"
    study = options.pop("study", "main")
    runs = [r for g in in_study(groups, study) for r in g.runs]
    if len(runs) < 2:
        return None, f"_fewer than two complete runs in study `{study}`: no overlap analysis_\n"
    if analysis is None or markdown is None:
        from convsim.reporting import overlap as nnk_report  # imported on use: it loads the trainer

        analysis = analysis or nnk_report.overlap_analysis
        markdown = markdown or nnk_report.overlap_markdown
    odir = Path(out_dir) / "overlap"
    digest = hashlib.sha1()
    for r in sorted(runs, key=lambda r: r.name):
        digest.update(r.name.encode())
        digest.update((r.path / "summary.json").read_bytes())
    digest.update(json.dumps(options, sort_keys=True).encode())
    key = digest.hexdigest()
    cache = read_json(odir / "cache.json")
    if cache and cache.get("key") == key:
        return cache.get("result"), cache["markdown"]
    result = analysis([r.path for r in runs], odir, **options)
    md = markdown(result)
    res = jsonable(result)
    atomic_write_json(odir / "cache.json", {"key": key, "markdown": md, "result": res})
    return res, md


def write_report(out_dir: str | Path, *, suite: str | None = None, runs_dir: str | Path | None = None,
                 overlap: Mapping[str, Any] | None = None, overlap_fns: tuple[Callable, Callable] | None = None,
                 pending: Sequence[str] = (), failed: Mapping[str, str] | None = None,
                 include: Iterable[str] | None = None) -> dict:
    """Aggregate ``runs_dir`` (default ``out_dir/runs``) and write ``report.md``, ``results.json``,
    ``summary.csv`` and ``figures/*.png`` into ``out_dir``. Returns the results dict.

    ``overlap`` holds keyword options for the overlap analysis (``study``, ``n_samples``, ``k``,
    ``skip``); ``overlap_fns`` replaces ``(overlap_analysis, overlap_markdown)``; ``pending`` and
    ``failed`` name runs that are not (yet) complete, for the report's intro. ``include`` limits
    the report to these run names (a suite's runs; other folders under ``runs_dir`` are listed as
    ignored).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir / "runs"
    runs = load_runs(runs_dir) if runs_dir.is_dir() else []
    ignored: list[str] = []
    if include is not None:
        keep = set(include)
        ignored = sorted(r.name for r in runs if r.name not in keep)
        runs = [r for r in runs if r.name in keep]
    groups = group_runs(runs)
    incomplete = sorted(r.name for r in runs if not r.complete)
    scale = accuracy_scale(groups)
    unit = percent_unit(scale)
    cl = claims(groups)
    final_cs_col = ("final CS", lambda g: fmt_sci(g.estimate("cs")))  # table columns used twice
    wall_time_col = ("wall time (s)", lambda g: fmt_estimate(g.estimate("", "wall_time"), 1, 1))
    a_fns = overlap_fns or (None, None)
    ov_result, ov_md = overlap_section(groups, out_dir, overlap, *a_fns)
    fig_paths = make_figures(groups, out_dir / "figures")
    small_table, small_found = smaller_models(groups, scale)
    common, diff = settings_table(list(groups.values()))
    versions_runs = sorted({json.dumps(r.summary.get("versions"), sort_keys=True) for r in runs if r.summary.get("versions")})
    devices = sorted({str(r.summary.get("device")) for r in runs if r.summary.get("device")})
    wall = [r.wall_time() for r in runs if r.complete and r.wall_time() is not None]

    def rel(p: Path) -> str:
        return p.relative_to(out_dir).as_posix()

    md: list[str] = []
    title = f"convsim reproduction report — suite `{suite}`" if suite else "convsim reproduction report"
    md.append(f"# {title}\n")
    md.append(
        "This report re-runs the experiments of *Feature Map Similarity Reduction in Convolutional Neural "
        "Networks* (Belmekki et al., arXiv 2411.03226; Convolutional Similarity, CS) with `convsim`, and the "
        "channel-wise NNK overlap analysis of Bonet et al. (ICASSP 2022). Every number below is computed from "
        "the run directories under `runs/`; nothing is typed by hand. Values are means over seeds with 95% "
        "Student-t confidence intervals (± half-width); the verdicts in **Claims** follow the rules in "
        "*How the numbers are computed*. These are `convsim`'s own measurements on this machine, not the "
        "paper's numbers (which are not known).\n")
    md.append(f"- complete runs: **{sum(r.complete for r in runs)}** in **{len(groups)}** configurations"
              + (f"; total training time {sum(wall) / 60:.1f} min" if wall else ""))
    if incomplete or pending:
        md.append(f"- not complete (excluded): {', '.join(sorted(set(incomplete) | set(pending)))}")
    if failed:
        md.append(f"- failed: {', '.join(f'{k} ({v})' for k, v in sorted(failed.items()))}")
    if ignored:
        md.append(f"- ignored (run folders not in this suite): {', '.join(ignored)}")
    md.append(f"- devices: {', '.join(devices) or 'unknown'}; generated {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    md.append("## Claims\n")
    md.append("<!-- claims:start -->")
    md.append(claims_markdown(cl))
    md.append("<!-- claims:end -->\n")

    md.append("## Setup\n")
    md.append("Settings of most configurations (each configuration's deviations are listed in *All "
              "configurations*):\n")
    md.append(markdown_table(["setting", "value"], [[k, json.dumps(v, default=str)] for k, v in common.items()]))
    md.append("\nStudies: `main` (methods compared per model), `width` (width sweep), `iters` (number of CS "
              "initialisation iterations), `resnet` (ResNet18), `beta` (regulariser weight), `momentum`, "
              "`early_stop`. The per-configuration settings are listed in *All configurations*.\n")

    md.append("## Figure 1: CS loss during training\n")
    md.append("CS loss (log scale) during the initialisation phase (left, per Adam step) and during training "
              "(right, per epoch) for the baseline, CS initialisation and the CS regulariser. Lines are "
              "geometric means over seeds and bands 95% Student-t CIs of the log values, so they stay "
              "positive on the log axis.\n")
    md.append(f"![CS loss]({rel(fig_paths['cs_loss'])})\n")
    md.append("## Figure 2: training loss\n")
    md.append("Training classification loss per epoch on a log scale (geometric means and log-scale 95% CIs, "
              "as in figure 1), per method, one panel per model.\n")
    md.append(f"![training loss]({rel(fig_paths['train_loss'])})\n")
    md.append("## Figure 3: training accuracy\n")
    md.append(f"![training accuracy]({rel(fig_paths['train_acc'])})\n")
    md.append("## Figure 4: ResNet18\n")
    md.append(f"![ResNet18]({rel(fig_paths['resnet18'])})\n")
    md.append(table_groups(in_study(groups, "resnet"), scale, [("CS", lambda g: fmt_sci(g.estimate("cs")))]))
    md.append("\n## Figure 5: test accuracy versus initialisation iterations\n")
    md.append(f"![test accuracy vs I]({rel(fig_paths['init_iters'])})\n")
    iter_rows = []
    for label, by_i in iters_series(groups).items():
        for i, g in sorted(by_i.items()):
            iter_rows.append([label, f"{i:g}", len(g.runs), fmt_estimate(g.estimate("test_acc"), scale),
                              fmt_sci(g.estimate("cs"))])
    md.append(markdown_table(["series", "I", "seeds", "test acc" + unit, "final CS"], iter_rows))

    md.append("\n## Kernel orthogonality versus feature-map similarity\n")
    md.append("Final-epoch measurements per method: mean |cosine| between flattened kernels, the CS loss, mean "
              "|cosine| between feature maps (uncentred, as the released code; and centred, i.e. correlation), "
              "and test accuracy" + unit + ".\n")
    md.append(table_kernel_fm(groups, scale))

    md.append("\n## Smaller models\n")
    md.append(f"![test accuracy vs width]({rel(fig_paths['width'])})\n")
    md.append(small_table)
    for f in small_found:
        w = f["smallest_width"]
        md.append(f"- {f['model']} {f['method']}: " + (
            f"smallest width whose CS accuracy reaches the baseline of the next width up: **{w:g}**"
            if w is not None else "no width where the CS accuracy reaches the baseline of the next width up"))
    md.append("")

    md.append("## Regulariser weight\n")
    md.append(table_groups(in_study(groups, "beta"), scale, [("β", lambda g: str(g.get("beta"))), final_cs_col]))

    md.append("\n## Momentum\n")
    md.append(table_groups(in_study(groups, "momentum"), scale, [
        ("momentum", lambda g: str(g.get("momentum"))),
        ("CS after epoch 1", lambda g: fmt_sci(g.estimate("cs", "first"))),
        final_cs_col]))

    md.append("\n## Early stopping\n")
    md.append("Channel-wise NNK early stopping (no validation set) against classic validation early stopping.\n")
    es = in_study(groups, "early_stop")
    md.append(table_groups(es, scale, [("criterion", lambda g: str(g.get("early_stop"))),
                                       ("stop epoch", lambda g: fmt_estimate(g.estimate("", "stop_epoch"), 1, 1)),
                                       ("delivered epoch", lambda g: fmt_estimate(g.estimate("", "delivered_epoch"), 1, 1)),
                                       wall_time_col]))
    es_lines = []
    for g in es:
        if g.get("early_stop") == "cwnnk":
            others = [h for h in es if h.get("early_stop") == "validation" and h.context(early_stop="x") == g.context(early_stop="x")]
            for h in others:
                d = safe_contrast([(1.0, g.values("test_acc")), (-1.0, h.values("test_acc"))])
                if d is None:
                    continue
                es_lines.append(f"- {g.get('model')}: CW-NNK − validation test accuracy {d.fmt_interval(scale)} "
                                f"({d.method}, n={d.n})")
    md.append("\n".join(es_lines) + ("\n" if es_lines else ""))

    md.append("\n## Channel-wise NNK overlap\n")
    md.append(ov_md.rstrip() + "\n")

    md.append("\n## All configurations\n")
    md.append(table_groups(list(groups.values()), scale, [
        ("settings", lambda g: ", ".join(f"{k}={v}" for k, v in sorted(diff.get(g.name, {}).items()))),
        ("final train loss", lambda g: fmt_sci(g.estimate("train_loss"))),
        wall_time_col]))

    md.append("\n## How the numbers are computed\n")
    md.append(
        "- **Mean ± CI**: mean over seeds ± t(0.975, n−1)·s/√n (s: sample standard deviation). One seed: no CI.\n"
        "- **Differences** between configurations: when both have the same seeds (same initial weights and "
        "minibatch order) the difference is formed per seed and the same t interval is used (*paired*); "
        "otherwise Welch's interval with Welch–Satterthwaite degrees of freedom.\n"
        "- **Verdicts**: each comparison is oriented so that a positive difference supports the claim; "
        "*holds* if its 95% CI lies above 0, *does not hold* if below 0, *inconclusive (CI overlaps)* "
        "otherwise. A claim holds if at least one comparison holds and none fails.\n"
        "- (a) test accuracy of each CS variant − baseline (same model and training settings). "
        "(b) baseline − CS training loss after the first epoch. "
        "(c) width sweep: CS at width w − baseline at the next width up; it counts only where the baseline "
        "gains significantly from the larger width, holds when CS also beats the baseline significantly at "
        "width w and its mean reaches the larger baseline, fails when it is significantly below it. "
        "(d) for each orthogonality penalty (SO/OCNN/SRIP) that lowers mean |kernel cos| significantly: its "
        "mean |feature-map cos| − that of each CS regulariser (uncentred and centred), leaving out collapsed "
        "configurations (mean test accuracy below 1.5× chance: the network did not train). "
        "(e) CS gain without momentum − CS gain with SGD momentum (or baseline − CS under momentum).\n"
        "- Final values are those of the delivered weights in `summary.json` (for early stopping: the "
        "restored epoch); per-epoch curves come from `metrics.jsonl`, with epoch 0 the measurement before "
        "training (after any CS initialisation).\n")

    md.append("## Versions\n")
    md.append(f"- report generated with: {json.dumps(run_versions(), sort_keys=True)}")
    for v in versions_runs:
        md.append(f"- runs trained with: {v}")
    md.append(f"- figures: {', '.join(rel(p) for p in fig_paths.values())}; data: `results.json`, `summary.csv`\n")
    report = "\n".join(md)
    atomic_write_text(out_dir / "report.md", report)

    results = {
        "suite": suite,
        "runs": [{"name": r.name, "group": r.group, "method": r.method, "seed": r.seed, "complete": r.complete,
                  "studies": list(r.studies), **{k: r.final(k) for k in FINAL_METRICS},
                  "train_loss_epoch1": r.first("train_loss"), "stop_epoch": r.stop_epoch(),
                  "wall_time": r.wall_time()} for r in runs],
        "groups": [group_record(g) for g in groups.values()],
        "claims": cl,
        "smaller_models": small_found,
        "overlap": ov_result,
        "figures": {k: rel(p) for k, p in fig_paths.items()},
        "versions": run_versions(),
        "incomplete": incomplete,
        "failed": dict(failed or {}),
        "ignored": ignored,
        "report_seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out_dir / "results.json", jsonable(results))
    write_csv(out_dir / "summary.csv", groups)
    return results


def group_estimates(g: Group) -> dict[str, Estimate | None]:
    """{metric: mean over seeds with CI} for :data:`GROUP_METRICS` (``None`` where no run logged it)."""
    out = {k: g.estimate(k) for k in FINAL_METRICS}
    out["train_loss_epoch1"] = g.estimate("train_loss", "first")
    return out


def group_record(g: Group) -> dict:
    """A configuration in ``results.json``: its settings, seeds and :func:`group_estimates`."""
    rec = {"group": g.name, "method": g.method, "studies": sorted(g.studies), "seeds": [r.seed for r in g.runs],
           "config": g.config}
    for k, e in group_estimates(g).items():
        rec[k] = e.as_dict() if e else None
    return rec


def write_csv(path: Path, groups: Mapping[str, Group]) -> Path:
    """One row per configuration: settings, then mean / CI low / CI high / n per metric."""
    cols = ["group", "method", "studies"] + list(CONTEXT_FIELDS) + ["beta", "init_iters", "cs_normalize", "penalty", "penalty_weight"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + [f"{m}_{s}" for m in GROUP_METRICS for s in ("mean", "ci_low", "ci_high", "n")])
    for g in groups.values():
        row = [g.name, g.method, ";".join(sorted(g.studies))] + [g.get(k) for k in cols[3:]]
        for e in group_estimates(g).values():
            row += [None, None, None, 0] if e is None else [e.mean, e.low, e.high, e.n]
        w.writerow(["" if v is None else v for v in row])
    return atomic_write_text(path, buf.getvalue())
