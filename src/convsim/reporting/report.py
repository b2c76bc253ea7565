"""``report.md``, ``results.json``, ``summary.csv`` and figures for a folder of training runs.

:func:`write_report` reads the run directories (:mod:`convsim.reporting.runs`), groups runs that
differ only in their seed, decides the paper's claims (:mod:`convsim.reporting.claims`), draws the
figures (:mod:`convsim.reporting.figures`) and writes the report as a list of :data:`SECTIONS`:
each a heading (written once, here) and a function of the :class:`Context` that returns the
section's text, or ``None`` when the suite has no data for it.

Example (synthetic run directories; see ``tests/test_report.py``)::

    result = write_report("docs/fmnist", suite="fmnist")    # reads docs/fmnist/runs/*
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convsim._internal.files import atomic_write_json, atomic_write_text
from convsim.reporting.claims import ClaimDesign, claims, design_text, matched_settings
from convsim.reporting.cwnnk_records import RUN_RECORD, overlap_study, stored_record
from convsim.reporting.figures import make_figures
from convsim.reporting.intervals import CONFIDENCE
from convsim.reporting.methods import COLLAPSE_FACTOR
from convsim.reporting.runs import (
    CONTEXT_FIELDS,
    Group,
    Run,
    accuracy_scale,
    group_runs,
    in_study,
    iters_series,
    load_runs,
    percent_unit,
    read_json,
)
from convsim.reporting.tables import (
    claims_markdown,
    fmt_estimate,
    fmt_sci,
    markdown_table,
    settings_table,
    smaller_models,
    table_groups,
    table_kernel_fm,
)
from convsim.reporting.verdicts import rules_text
from convsim.training.summary import FINAL_KEYS

# Per configuration (results.json, summary.csv): the delivered weights' metrics and the training loss after epoch 1.
GROUP_METRICS = FINAL_KEYS + ("train_loss_epoch1",)
MAX_LISTED = 12  # runs named in the intro when some are not complete


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

    return {
        **versions(),
        "scipy": scipy.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------------------------
# What every section reads
# ----------------------------------------------------------------------------------------------


@dataclass
class Context:
    """The runs of a report and everything computed from them once."""

    out_dir: Path
    suite: str | None
    runs: list[Run]
    groups: dict[str, Group]
    design: ClaimDesign
    claims: list[dict]
    figures: dict[str, Path]
    overlap: tuple[dict | None, str]
    study: Mapping[str, Any] = field(default_factory=dict)
    pending: Sequence[str] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    ignored: Sequence[str] = ()

    @property
    def scale(self) -> float:
        return accuracy_scale(self.groups)

    @property
    def unit(self) -> str:
        return percent_unit(self.scale)

    @property
    def incomplete(self) -> list[str]:
        return sorted(r.name for r in self.runs if not r.complete)

    def figure(self, key: str, alt: str) -> str:
        return f"![{alt}]({self.figures[key].relative_to(self.out_dir).as_posix()})\n"


def _final_cs(g: Group) -> str:
    return fmt_sci(g.estimate("cs"))


def _wall_time(g: Group) -> str:
    return fmt_estimate(g.estimate("", "wall_time"), 1, 1)


# ----------------------------------------------------------------------------------------------
# The sections, in report order
# ----------------------------------------------------------------------------------------------


def claims_section(ctx: Context) -> str:
    missing = set(ctx.incomplete) | set(ctx.pending)
    status = ""
    if missing:
        done = sum(r.complete for r in ctx.runs)
        status = (
            f"**The suite is not complete: {done} of {done + len(missing)} runs are done, so these verdicts "
            f"are provisional.** Comparisons whose groups lack runs are not tested yet.\n\n"
        )
    return status + "<!-- claims:start -->\n" + claims_markdown(ctx.claims) + "<!-- claims:end -->\n"


def setup_section(ctx: Context) -> str:
    common, _ = settings_table(list(ctx.groups.values()))
    complete = [r for r in ctx.runs if r.complete]
    hours = sum(r.wall_time() or 0.0 for r in complete) / 3600
    machines = sorted(
        {json.dumps(r.summary.get("machine") or r.summary.get("device"), sort_keys=True) for r in complete}
    )
    threads = sorted({int(r.summary["threads"]) for r in complete if r.summary.get("threads") is not None})
    torch_versions = sorted({(r.summary.get("versions") or {}).get("torch", "?") for r in complete})
    jobs = ctx.study.get("jobs")
    lines = [
        f"{ctx.study['description']}\n" if ctx.study.get("description") else "",
        "Settings of most configurations (deviations per configuration are in *All configurations*):\n",
        markdown_table(["setting", "value"], [[k, json.dumps(v, default=str)] for k, v in common.items()]),
        f"\n- machine(s): {'; '.join(machines) or 'unknown'}",
        f"- torch threads per run: {', '.join(map(str, threads)) or 'unknown'}; torch {', '.join(torch_versions)}",
        f"- training time: {hours:.2f} h summed over {len(complete)} runs"
        + (f", trained {jobs} at a time: about {hours / jobs:.1f} h of wall time" if jobs else ""),
        f"- studies: {', '.join(sorted({s for g in ctx.groups.values() for s in g.studies})) or 'none'}\n",
    ]
    return "\n".join(lines)


def cs_loss_section(ctx: Context) -> str:
    return (
        "CS loss (log scale) during the initialisation phase (left, per Adam step) and during training (right, "
        "per epoch) for the baseline and the CS methods. Lines are geometric means over seeds and bands 95% "
        "Student-t CIs of the log values, so they stay positive on the log axis.\n\n" + ctx.figure("cs_loss", "CS loss")
    )


def train_loss_section(ctx: Context) -> str:
    return (
        "Training classification loss per epoch on a log scale (geometric means and log-scale 95% CIs, as in "
        "figure 1), per method, one panel per model.\n\n" + ctx.figure("train_loss", "training loss")
    )


def train_acc_section(ctx: Context) -> str:
    return ctx.figure("train_acc", "training accuracy")


def resnet_section(ctx: Context) -> str | None:
    groups = in_study(ctx.groups, "resnet")
    if not groups:
        return None
    return ctx.figure("resnet18", "ResNet18") + table_groups(groups, ctx.scale, [("CS", _final_cs)])


def iters_section(ctx: Context) -> str | None:
    series = iters_series(ctx.groups)
    if not series:
        return None
    rows = [
        [label, f"{i:g}", len(g.runs), fmt_estimate(g.estimate("test_acc"), ctx.scale), _final_cs(g)]
        for label, by_i in series.items()
        for i, g in sorted(by_i.items())
    ]
    return ctx.figure("init_iters", "test accuracy vs I") + markdown_table(
        ["series", "I", "seeds", "test acc" + ctx.unit, "final CS"], rows
    )


def kernel_fm_section(ctx: Context) -> str:
    return (
        "Final-epoch measurements per method: mean |cosine| between flattened kernels, the CS loss, mean "
        "|cosine| between feature maps (uncentred, as the released code; and centred, i.e. correlation), and "
        f"test accuracy{ctx.unit}.\n\n" + table_kernel_fm(ctx.groups, ctx.scale)
    )


def matched_section(ctx: Context) -> str | None:
    if "shrinkage" not in ctx.figures:
        return None
    matched = matched_settings(ctx.groups, ctx.design)
    rows = [[family, f"`{name}`" if name else "none within the margin"] for family, name in matched.items()]
    return (
        "Claim (d) compares each method at its strongest setting whose test accuracy stays within the margin "
        "of the baseline. Figure 8 places every configuration (method × strength) by feature-map similarity "
        "and test accuracy, figure 9 by kernel cosine and feature-map similarity "
        f"({100 * CONFIDENCE:g}% CIs on both axes).\n\n"
        + markdown_table(["family", "matched setting"], rows)
        + "\n"
        + ctx.figure("fm_vs_accuracy", "feature-map similarity vs test accuracy")
        + ctx.figure("kernel_vs_fm", "kernel cosine vs feature-map similarity")
    )


def shrinkage_section(ctx: Context) -> str | None:
    if "shrinkage" not in ctx.figures:
        return None
    return (
        "Raw CS is a fourth power of the weights, and cnn1 has no BatchNorm: it can fall because kernels shrink, "
        "not because they decorrelate. Per epoch: the mean kernel norm over conv layers, the raw CS and the "
        "scale-invariant CS (unit-norm filters), for the baseline and each CS strength (geometric means, "
        "log-scale 95% CIs). Raw CS falling while the normalised CS does not is shrinkage.\n\n"
        + ctx.figure("shrinkage", "kernel norm, raw and normalised CS per epoch")
    )


def smaller_section(ctx: Context) -> str | None:
    table, found = smaller_models(ctx.groups, ctx.scale)
    if not found:
        return None
    lines = [ctx.figure("width", "test accuracy vs width"), table]
    for f in found:
        w = f["smallest_width"]
        lines.append(
            f"- {f['model']} {f['method']}: "
            + (
                f"smallest width whose CS accuracy reaches the baseline of the next width up: **{w:g}**"
                if w is not None
                else "no width where the CS accuracy reaches the baseline of the next width up"
            )
        )
    return "\n".join(lines) + "\n"


def beta_section(ctx: Context) -> str | None:
    groups = in_study(ctx.groups, "beta") + in_study(ctx.groups, "ortho")
    if not groups:
        return None
    return table_groups(
        groups,
        ctx.scale,
        [
            ("strength β", lambda g: str(g.get("beta") if g.method.startswith("cs") else g.get("penalty_beta"))),
            ("final CS", _final_cs),
            ("mean |kernel cos|", lambda g: fmt_estimate(g.estimate("kernel_cosine"), 1, 3)),
            ("mean |fm cos|", lambda g: fmt_estimate(g.estimate("fm_similarity"), 1, 3)),
        ],
    )


def momentum_section(ctx: Context) -> str | None:
    groups = in_study(ctx.groups, "momentum")
    if not groups:
        return None
    return table_groups(
        groups,
        ctx.scale,
        [
            ("momentum", lambda g: str(g.get("momentum"))),
            ("CS after epoch 1", lambda g: fmt_sci(g.estimate("cs", "first"))),
            ("final CS", _final_cs),
        ],
    )


def early_stop_section(ctx: Context) -> str | None:
    es = in_study(ctx.groups, "early_stop")
    if not es:
        return None
    table = table_groups(
        es,
        ctx.scale,
        [
            ("criterion", lambda g: str(g.get("early_stop"))),
            ("stop epoch", lambda g: fmt_estimate(g.estimate("", "stop_epoch"), 1, 1)),
            ("delivered epoch", lambda g: fmt_estimate(g.estimate("", "delivered_epoch"), 1, 1)),
            ("wall time (s)", _wall_time),
        ],
    )
    from convsim.reporting.intervals import safe_contrast

    lines = []
    for g in (g for g in es if g.get("early_stop") == "cwnnk"):
        for h in es:
            if h.get("early_stop") == "validation" and h.context(early_stop="x") == g.context(early_stop="x"):
                d = safe_contrast([(1.0, g.values("test_acc")), (-1.0, h.values("test_acc"))])
                if d is not None:
                    lines.append(
                        f"- {g.get('model')}: CW-NNK − validation test accuracy "
                        f"{d.fmt_interval(ctx.scale)} ({d.method}, n={d.n})"
                    )
    return (
        "Channel-wise NNK early stopping (no validation set) against classic validation early stopping.\n\n"
        + table
        + "\n"
        + "\n".join(lines)
        + "\n"
    )


def overlap_md(ctx: Context) -> str:
    return ctx.overlap[1].rstrip() + "\n"


def all_configurations_section(ctx: Context) -> str:
    _, diff = settings_table(list(ctx.groups.values()))
    return table_groups(
        list(ctx.groups.values()),
        ctx.scale,
        [
            ("settings", lambda g: ", ".join(f"{k}={v}" for k, v in sorted(diff.get(g.name, {}).items()))),
            ("final train loss", lambda g: fmt_sci(g.estimate("train_loss"))),
            ("wall time (s)", _wall_time),
        ],
    )


def methods_section(ctx: Context) -> str:
    level = f"{100 * CONFIDENCE:g}%"
    return (
        f"- **Mean ± CI**: mean over seeds ± t({(1 + CONFIDENCE) / 2:g}, n−1)·s/√n (s: sample standard "
        f"deviation), a {level} interval. One seed: no CI.\n"
        + rules_text()
        + design_text(ctx.design)
        + f"- Claim (d) excludes collapsed configurations (mean test accuracy below {COLLAPSE_FACTOR:g}× chance for "
        "the dataset: the network did not train).\n"
        "- Final values are those of the delivered weights in `summary.json` (for early stopping: the "
        "restored epoch); per-epoch curves come from `metrics.jsonl`, with epoch 0 the measurement before "
        "training (after any CS initialisation).\n"
    )


def versions_section(ctx: Context) -> str:
    trained = sorted(
        {json.dumps(r.summary.get("versions"), sort_keys=True) for r in ctx.runs if r.summary.get("versions")}
    )
    lines = [f"- report generated with: {json.dumps(run_versions(), sort_keys=True)}"]
    lines += [f"- runs trained with: {v}" for v in trained]
    figs = ", ".join(p.relative_to(ctx.out_dir).as_posix() for p in ctx.figures.values())
    return "\n".join(lines + [f"- figures: {figs}; data: `results.json`, `summary.csv`\n"])


@dataclass(frozen=True)
class Section:
    """One section of ``report.md``: its heading and the function that writes its body."""

    heading: str
    body: Callable[[Context], str | None]


SECTIONS: tuple[Section, ...] = (
    Section("Claims", claims_section),
    Section("Setup", setup_section),
    Section("Figure 1: CS loss during training", cs_loss_section),
    Section("Figure 2: training loss", train_loss_section),
    Section("Figure 3: training accuracy", train_acc_section),
    Section("Figure 4: ResNet18", resnet_section),
    Section("Figure 5: test accuracy versus initialisation iterations", iters_section),
    Section("Kernel orthogonality versus feature-map similarity", kernel_fm_section),
    Section("Claim (d) at matched strength", matched_section),
    Section("Shrinkage or decorrelation", shrinkage_section),
    Section("Smaller models", smaller_section),
    Section("Regularisation strength", beta_section),
    Section("Momentum", momentum_section),
    Section("Early stopping", early_stop_section),
    Section("Channel-wise NNK overlap", overlap_md),
    Section("All configurations", all_configurations_section),
    Section("How the numbers are computed", methods_section),
    Section("Versions", versions_section),
)


def intro(ctx: Context) -> str:
    title = f"convsim reproduction report — suite `{ctx.suite}`" if ctx.suite else "convsim reproduction report"
    wall = [r.wall_time() for r in ctx.runs if r.complete and r.wall_time() is not None]
    devices = sorted({str(r.summary.get("device")) for r in ctx.runs if r.summary.get("device")})
    lines = [
        f"# {title}\n",
        "This report re-runs the experiments of *Feature Map Similarity Reduction in Convolutional Neural Networks* "
        "(Belmekki et al., arXiv 2411.03226; Convolutional Similarity, CS) with `convsim`, and the channel-wise NNK "
        "overlap analysis of Bonet et al. (ICASSP 2022). Every number below is computed from the run directories "
        "under `runs/`; nothing is typed by hand. Values are means over seeds with "
        f"{100 * CONFIDENCE:g}% Student-t confidence intervals (± half-width); the verdicts in **Claims** follow "
        "the rules in *How the numbers are computed*. "
        "These are `convsim`'s own measurements (the machines are listed with the setup), not the paper's numbers.\n",
        f"- complete runs: **{sum(r.complete for r in ctx.runs)}** in **{len(ctx.groups)}** configurations"
        + (f"; total training time {sum(w for w in wall if w) / 60:.1f} min" if wall else ""),
    ]
    missing = sorted(set(ctx.incomplete) | set(ctx.pending))
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (
            f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        )
        lines.append(f"- **{len(missing)} runs not complete (excluded; all listed in `results.json`)**: {shown}")
    if ctx.failed:
        lines.append(f"- failed: {', '.join(f'{k} ({v})' for k, v in sorted(ctx.failed.items()))}")
    if ctx.ignored:
        lines.append(f"- ignored (run folders not in this suite): {', '.join(ctx.ignored)}")
    lines.append(f"- devices: {', '.join(devices) or 'unknown'}\n")
    return "\n".join(lines)


def render(ctx: Context) -> str:
    """``report.md``: the intro, then every section of :data:`SECTIONS` that has data."""
    parts = [intro(ctx)]
    for section in SECTIONS:
        body = section.body(ctx)
        if body is not None:
            parts.append(f"## {section.heading}\n\n{body.rstrip()}\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Overlap (channel-wise NNK) analysis, cached
# ----------------------------------------------------------------------------------------------


def overlap_section(
    groups: Mapping[str, Group],
    out_dir: Path,
    options: Mapping[str, Any] | None,
    analysis: Callable | None = None,
    markdown: Callable | None = None,
) -> tuple[dict | None, str]:
    """Run :func:`convsim.reporting.overlap.overlap_analysis` on the runs of ``options["study"]``
    (default "main"), cached in ``out_dir/overlap/cache.json`` keyed by the runs' summaries and the
    options. Without a valid cache it needs, for every run, its checkpoint or its stored record
    (:mod:`convsim.reporting.cwnnk_records`, written here and by ``reproduce``); when a run has
    neither (a committed study whose weights are gone) the section says which."""
    if options and options.get("skip"):
        return None, "_overlap analysis switched off for this suite_\n"
    study, options = overlap_study(options or {})
    runs = [r for g in in_study(groups, study) for r in g.runs]
    if len(runs) < 2:
        return None, f"_fewer than two complete runs in study `{study}`: no overlap analysis_\n"
    odir = Path(out_dir) / "overlap"
    key = _overlap_key(runs, options)
    cache = read_json(odir / "cache.json")
    if cache and cache.get("key") == key:
        return cache.get("result"), cache["markdown"]
    missing = [r.name for r in runs if not (r.path / "checkpoint.pt").exists() and not stored_record(r.path, options)]
    if missing:
        return None, (
            f"_the overlap analysis needs the runs' weights; {len(missing)} of {len(runs)} runs have neither a "
            f"checkpoint (checkpoints are not committed) nor a stored `{RUN_RECORD}`, and `overlap/cache.json` "
            f"does not match: {', '.join(missing)}_\n"
        )
    if analysis is None or markdown is None:
        from convsim.reporting import overlap as nnk_report  # imported on use: it loads the trainer

        analysis = analysis or nnk_report.overlap_analysis
        markdown = markdown or nnk_report.overlap_markdown
    result = analysis([r.path for r in runs], odir, **options, keep_records=True)
    md = markdown(result)
    res = jsonable(result)
    atomic_write_json(odir / "cache.json", {"key": key, "markdown": md, "result": res})
    return res, md


def _overlap_key(runs: Sequence[Run], options: Mapping[str, Any]) -> str:
    digest = hashlib.sha1()
    for r in sorted(runs, key=lambda r: r.name):
        digest.update(r.name.encode())
        digest.update((r.path / "summary.json").read_bytes())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    *,
    suite: str | None = None,
    runs_dir: str | Path | None = None,
    design: ClaimDesign | None = None,
    overlap: Mapping[str, Any] | None = None,
    overlap_fns: tuple[Callable, Callable] | None = None,
    pending: Sequence[str] = (),
    failed: Mapping[str, str] | None = None,
    include: Iterable[str] | None = None,
    study: Mapping[str, Any] | None = None,
) -> dict:
    """Aggregate ``runs_dir`` (default ``out_dir/runs``) and write ``report.md``, ``results.json``,
    ``summary.csv`` and ``figures/*.png`` into ``out_dir``. Returns the results dict.

    ``design`` declares the claims' primary comparisons (default :class:`ClaimDesign`);
    ``overlap`` holds keyword options for the overlap analysis (``study``, ``n_samples``, ``k``,
    ``skip``); ``overlap_fns`` replaces ``(overlap_analysis, overlap_markdown)``; ``pending`` and
    ``failed`` name runs that are not (yet) complete; ``include`` limits the report to these run
    names (other folders under ``runs_dir`` are listed as ignored); ``study`` records how the suite
    was run (``jobs``, ``threads``).
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
    design = design or ClaimDesign()
    ctx = Context(
        out_dir,
        suite,
        runs,
        groups,
        design,
        claims(groups, design),
        make_figures(groups, out_dir / "figures"),
        overlap_section(groups, out_dir, overlap, *(overlap_fns or (None, None))),
        dict(study or {}),
        pending,
        dict(failed or {}),
        ignored,
    )
    atomic_write_text(out_dir / "report.md", render(ctx))
    results = results_record(ctx)
    results["report_seconds"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "results.json", jsonable(results))
    write_csv(out_dir / "summary.csv", groups)
    return results


def results_record(ctx: Context) -> dict:
    """``results.json``: every run, every configuration with its estimates, the claims and the figures."""
    return {
        "suite": ctx.suite,
        "design": ctx.design.as_dict(),
        "runs": [
            {
                "name": r.name,
                "group": r.group,
                "method": r.method,
                "seed": r.seed,
                "complete": r.complete,
                "studies": list(r.studies),
                **{k: r.final(k) for k in FINAL_KEYS},
                "train_loss_epoch1": r.first("train_loss"),
                "stop_epoch": r.stop_epoch(),
                "wall_time": r.wall_time(),
            }
            for r in ctx.runs
        ],
        "groups": [group_record(g) for g in ctx.groups.values()],
        "claims": ctx.claims,
        "matched_settings": matched_settings(ctx.groups, ctx.design),
        "smaller_models": smaller_models(ctx.groups, ctx.scale)[1],
        "overlap": ctx.overlap[0],
        "figures": {k: p.relative_to(ctx.out_dir).as_posix() for k, p in ctx.figures.items()},
        "versions": run_versions(),
        "study": dict(ctx.study),
        "incomplete": ctx.incomplete,
        "pending": sorted(ctx.pending),
        "failed": dict(ctx.failed),
        "ignored": list(ctx.ignored),
    }


def group_estimates(g: Group) -> dict:
    """{metric: mean over seeds with CI} for :data:`GROUP_METRICS` (``None`` where no run logged it)."""
    out = {k: g.estimate(k) for k in FINAL_KEYS}
    out["train_loss_epoch1"] = g.estimate("train_loss", "first")
    return out


def group_record(g: Group) -> dict:
    """A configuration in ``results.json``: its settings, seeds and :func:`group_estimates`."""
    rec: dict[str, Any] = {
        "group": g.name,
        "method": g.method,
        "studies": sorted(g.studies),
        "seeds": [r.seed for r in g.runs],
        "config": g.config,
    }
    for k, e in group_estimates(g).items():
        rec[k] = e.as_dict() if e else None
    return rec


def write_csv(path: Path, groups: Mapping[str, Group]) -> Path:
    """One row per configuration: settings, then mean / CI low / CI high / n per metric."""
    cols = [
        "group",
        "method",
        "studies",
        *CONTEXT_FIELDS,
        "beta",
        "init_iters",
        "cs_normalize",
        "cs_mode",
        "penalty",
        "penalty_beta",
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + [f"{m}_{s}" for m in GROUP_METRICS for s in ("mean", "ci_low", "ci_high", "n")])
    for g in groups.values():
        row = [g.name, g.method, ";".join(sorted(g.studies))] + [g.get(k) for k in cols[3:]]
        for e in group_estimates(g).values():
            row += [None, None, None, 0] if e is None else [e.mean, e.low, e.high, e.n]
        w.writerow(["" if v is None else v for v in row])
    return atomic_write_text(path, buf.getvalue())
