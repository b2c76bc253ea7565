"""Aggregation of training runs over seeds: confidence intervals, claim verdicts, figures, report.md.

A *run directory* (written by :func:`convsim.train.train`) holds ``metrics.jsonl`` (one line per
epoch), ``init.jsonl`` (CS per initialisation step), ``summary.json`` (config, status, versions)
and, when ``convsim reproduce`` created it, ``spec.json`` (run name, group, method label, seed and
the studies the run belongs to). Runs that differ only in their seed form a *group*; every number
in the report is a mean over a group's seeds with a 95% Student-t confidence interval.

Statistics (all in float64, plain Python floats since they go straight into JSON and markdown):

* ``mean_ci``: mean ± t_{0.975, n-1} · s / sqrt(n), with s the sample standard deviation (n-1
  in the denominator). One value has no interval.
* ``contrast``: a linear combination sum_i c_i · mean_i of group means (a difference of two
  methods, or a difference of differences). When every group has the same seeds (runs with the
  same seed share the initial weights and the minibatch order) the contrast is formed per seed
  and ``mean_ci`` is applied to those per-seed values (*paired*); otherwise the Welch
  interval: variance V = sum_i c_i^2 s_i^2 / n_i with Welch-Satterthwaite degrees of freedom
  V^2 / sum_i (c_i^2 s_i^2 / n_i)^2 / (n_i - 1).
* ``verdict``: "holds" when the interval of a contrast oriented so that positive supports the
  claim lies above 0, "does not hold" when it lies below 0, "inconclusive (CI overlaps)"
  otherwise.

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
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator
from scipy import stats

from .io import atomic_write, atomic_write_json, atomic_write_text, read_jsonl

CONFIDENCE = 0.95
NUM_CLASSES = 10  # every dataset of convsim.data has 10 classes
CS_METHODS = ("cs-init", "cs-reg", "cs-init+reg")
ORTHO_METHODS = ("so", "dso", "mc", "srip", "ocnn")  # kernel-orthogonality penalties (not DeCov)
METHOD_ORDER = ("baseline", "cs-init", "cs-reg", "cs-init+reg", "so", "dso", "mc", "srip", "ocnn", "decov")
METHOD_COLORS = {
    "baseline": "#333333", "cs-init": "#1f77b4", "cs-reg": "#ff7f0e", "cs-init+reg": "#2ca02c",
    "so": "#d62728", "dso": "#e377c2", "mc": "#bcbd22", "srip": "#8c564b", "ocnn": "#9467bd",
    "decov": "#17becf", "cs-init (normalised)": "#0b3d91", "cs-init+reg (normalised)": "#0e5e0e",
}
# Config fields that must agree for two groups to be compared (everything but the method).
CONTEXT_FIELDS = ("model", "width", "dataset", "train_subset", "test_subset", "epochs", "batch_size",
                  "optimizer", "lr", "momentum", "weight_decay", "schedule", "early_stop")
# Fields that set the CS method itself.
CS_FIELDS = ("beta", "init_iters", "init_lr", "init_optimizer", "cs_pairs", "cs_channels", "cs_normalize")
# Fields that never describe an experiment (where and how a run was executed).
RUN_FIELDS = {"seed", "out", "resume", "device", "data_dir", "threads", "channels_last", "bf16", "download",
              "verbose", "eval_batch"}
FINAL_METRICS = ("test_acc", "test_loss", "train_acc", "train_loss", "cs", "kernel_cosine",
                 "fm_similarity", "fm_similarity_centered")
FIGURES = {
    "cs_loss": "fig1_cs_loss.png",
    "train_loss": "fig2_train_loss.png",
    "train_acc": "fig3_train_acc.png",
    "resnet18": "fig4_resnet18.png",
    "init_iters": "fig5_init_iters.png",
    "width": "fig6_width.png",
}
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
HOLDS, FAILS, OVERLAPS = "holds", "does not hold", "inconclusive (CI overlaps)"
TOO_FEW = "inconclusive (too few seeds for a CI)"
COMPLETE_STATUSES = ("complete", "stopped early")  # the trainer's final statuses
NOT_TESTED = "not tested"


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval ``[low, high]`` (``None`` when n = 1)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str = "t"

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "method": self.method}

    def fmt(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        """``"81.23 ± 0.45"``; ``"81.23 (n=1, no CI)"`` for one seed."""
        sign = "+" if signed else ""
        m = f"{self.mean * scale:{sign}.{digits}f}"
        if self.low is None:
            return f"{m} (n={self.n}, no CI)"
        return f"{m} ± {self.half_width * scale:.{digits}f}"

    def fmt_interval(self, scale: float = 1.0, digits: int = 2) -> str:
        """``"+1.20 [0.30, 2.10]"``: a difference with its interval."""
        if self.low is None:
            return f"{self.mean * scale:+.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def _t_quantile(confidence: float, dof: float) -> float:
    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean and Student-t confidence interval of independent values (one per seed).

    ``mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof=1``). For n = 1 the interval is ``None``.

    Example:
        >>> e = mean_ci([1.0, 2.0, 3.0])
        >>> round(e.mean, 6), round(e.half_width, 4)
        (2.0, 2.4841)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values), dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_ci needs a non-empty 1-D sequence of numbers, got shape {x.shape}")
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, None, None, 1, "single")
    h = _t_quantile(confidence, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Estimate(mean, mean - h, mean + h, int(x.size), "t")


def contrast(terms: Sequence[tuple[float, Mapping[Any, float]]], confidence: float = CONFIDENCE,
             paired: bool | None = None) -> Estimate:
    """Confidence interval of ``sum_i c_i * mean(group_i)`` for ``terms = [(c_i, {seed: value})]``.

    ``paired=None`` pairs by seed when every group has the same (at least two) seeds, and uses
    the Welch-Satterthwaite interval otherwise; ``True``/``False`` force a choice. The estimate's
    ``method`` says which was used. Too few values for an interval give ``low = high = None``.

    Example (B - A with seeds 0, 1, 2):
        >>> a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.5, 2: 4.0}
        >>> contrast([(1.0, b), (-1.0, a)]).method
        'paired'
    """
    if not terms:
        raise ValueError("contrast needs at least one (coefficient, {seed: value}) term")
    for c, vals in terms:
        if not isinstance(vals, Mapping) or not vals:
            raise ValueError("each term must be (coefficient, non-empty {seed: value} mapping)")
    seed_sets = [set(v) for _, v in terms]
    same = all(s == seed_sets[0] for s in seed_sets)
    if paired is None:
        paired = same and len(seed_sets[0]) >= 2
    if paired:
        if not same:
            raise ValueError("paired contrast needs the same seeds in every group")
        seeds = sorted(seed_sets[0], key=str)
        per_seed = [sum(c * float(v[s]) for c, v in terms) for s in seeds]
        e = mean_ci(per_seed, confidence)
        return Estimate(e.mean, e.low, e.high, e.n, "paired" if e.low is not None else "single")
    means, var_terms, ns = [], [], []
    for c, v in terms:
        x = np.asarray([float(y) for y in v.values()], dtype=np.float64)
        means.append(c * float(x.mean()))
        ns.append(x.size)
        var_terms.append(c * c * float(x.var(ddof=1)) / x.size if x.size > 1 else math.nan)
    mean = float(sum(means))
    n = int(min(ns))
    if any(k < 2 for k in ns):
        return Estimate(mean, None, None, n, "welch")
    var = sum(var_terms)
    if var == 0.0:
        return Estimate(mean, mean, mean, n, "welch")
    dof = var ** 2 / sum(vt ** 2 / (k - 1) for vt, k in zip(var_terms, ns) if vt > 0)
    h = _t_quantile(confidence, dof) * math.sqrt(var)
    return Estimate(mean, mean - h, mean + h, n, "welch")


def safe_contrast(terms: Sequence[tuple[float, Mapping[Any, float]]]) -> Estimate | None:
    """:func:`contrast`, or ``None`` when some group has no value for the metric."""
    return contrast(terms) if all(v for _, v in terms) else None


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


# ----------------------------------------------------------------------------------------------
# Runs and groups
# ----------------------------------------------------------------------------------------------

def infer_method(config: Mapping[str, Any]) -> str:
    """Method label of a training config: its penalty name, or CS-init / CS-reg / both / baseline."""
    pen = config.get("penalty")
    if pen not in (None, "", "none") and float(config.get("penalty_weight") or 0) != 0:
        return str(pen)
    init = int(config.get("init_iters") or 0) > 0
    reg = float(config.get("beta") or 0) > 0
    return {(True, True): "cs-init+reg", (True, False): "cs-init", (False, True): "cs-reg"}.get((init, reg), "baseline")


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    name: str
    group: str
    method: str
    seed: Any
    studies: tuple[str, ...]
    config: dict
    summary: dict
    metrics: list[dict]
    init: list[dict]

    @property
    def complete(self) -> bool:
        return self.summary.get("status") in COMPLETE_STATUSES

    def final(self, key: str) -> float | None:
        """The value of the delivered weights: the summary's top-level metric (after early
        stopping, the restored epoch's), else the last epoch that logged ``key``."""
        v = _num(self.summary.get(key))
        if v is not None:
            return v
        for rec in reversed(self.metrics):
            v = _num(rec.get(key))
            if v is not None:
                return v
        return None

    def first(self, key: str) -> float | None:
        """The value after the first training epoch (epoch >= 1)."""
        for rec in self.metrics:
            if int(rec.get("epoch", 1)) >= 1:
                v = _num(rec.get(key))
                if v is not None:
                    return v
        return None

    def curve(self, key: str) -> dict[int, float]:
        """{epoch: value}; epoch 0 is the summary's ``initial`` measurement (after any CS init)."""
        out = {int(r["epoch"]): float(r[key]) for r in self.metrics
               if "epoch" in r and _num(r.get(key)) is not None}
        v = _num((self.summary.get("initial") or {}).get(key))
        if v is not None and out:
            out[0] = v
        return dict(sorted(out.items()))

    def init_curve(self) -> dict[int, float]:
        return {int(r["step"]): float(r["cs"]) for r in self.init if _num(r.get("cs")) is not None}

    def stop_epoch(self) -> float | None:
        """The epoch training stopped at (early stopping), else the last epoch run."""
        for v in ((self.summary.get("early_stop") or {}).get("stop_epoch"), self.summary.get("epochs_run")):
            if _num(v) is not None:
                return float(v)
        epochs = [int(r["epoch"]) for r in self.metrics if "epoch" in r]
        return float(max(epochs)) if epochs else None

    def delivered_epoch(self) -> float | None:
        """The epoch whose weights the run delivers (the restored one after early stopping)."""
        v = _num(self.summary.get("delivered_epoch"))
        return v if v is not None else self.stop_epoch()

    def wall_time(self) -> float | None:
        v = _num(self.summary.get("wall_time"))
        if v is not None:
            return v
        secs = [_num(r.get("seconds")) for r in self.metrics]
        secs = [s for s in secs if s is not None]
        return float(sum(secs)) if secs else None


def read_run(path: str | Path) -> Run | None:
    """Read one run directory; ``None`` if it has no ``summary.json`` and no ``spec.json``."""
    path = Path(path)
    spec = _read_json(path / "spec.json")
    summary = _read_json(path / "summary.json")
    if spec is None and summary is None:
        return None
    spec, summary = spec or {}, summary or {}
    config = dict(summary.get("config") or {})
    if not config:
        config = dict(spec.get("overrides") or {})
    name = spec.get("name") or path.name
    seed = spec.get("seed", summary.get("seed", config.get("seed")))
    group = spec.get("group") or re.sub(r"-s\d+$", "", name)
    return Run(
        path=path, name=name, group=group,
        method=spec.get("method") or infer_method(config),
        seed=seed if seed is not None else name,
        studies=tuple(spec.get("studies") or ()),
        config=config, summary=summary,
        metrics=read_jsonl(path / "metrics.jsonl"),
        init=read_jsonl(path / "init.jsonl"),
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every run directory directly under ``runs_dir`` (sorted by name)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"expected a folder of run directories, {runs_dir} is not a directory")
    runs = [read_run(p) for p in sorted(runs_dir.iterdir()) if p.is_dir()]
    return [r for r in runs if r is not None]


@dataclass
class Group:
    """Runs of one configuration that differ only in their seed."""

    name: str
    method: str
    runs: list[Run]
    studies: set[str] = field(default_factory=set)

    @property
    def config(self) -> dict:
        return {k: v for k, v in self.runs[0].config.items() if k not in RUN_FIELDS}

    def get(self, key: str, default: Any = None) -> Any:
        return self.runs[0].config.get(key, default)

    def context(self, **replace: Any) -> tuple:
        cfg = {k: self.get(k) for k in CONTEXT_FIELDS}
        cfg.update(replace)
        return tuple(_norm(cfg[k]) for k in CONTEXT_FIELDS)

    def values(self, key: str, which: str = "final") -> dict[Any, float]:
        """{seed: value} of a metric (``which``: "final" or "first" epoch; or "stop_epoch",
        "wall_time")."""
        out = {}
        for r in self.runs:
            if which == "final":
                v = r.final(key)
            elif which == "first":
                v = r.first(key)
            elif which == "stop_epoch":
                v = r.stop_epoch()
            elif which == "delivered_epoch":
                v = r.delivered_epoch()
            elif which == "wall_time":
                v = r.wall_time()
            else:
                raise ValueError(f"which must be final, first, stop_epoch, delivered_epoch or wall_time, got {which!r}")
            if v is not None:
                out[r.seed] = v
        return out

    def estimate(self, key: str, which: str = "final") -> Estimate | None:
        vals = self.values(key, which)
        return mean_ci(vals.values()) if vals else None


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return v


def group_runs(runs: Iterable[Run]) -> dict[str, Group]:
    """Complete runs grouped by configuration (ordered by method, then name)."""
    groups: dict[str, Group] = {}
    for r in runs:
        if not r.complete:
            continue
        g = groups.setdefault(r.group, Group(r.group, r.method, []))
        g.runs.append(r)
        g.studies.update(r.studies)
    for g in groups.values():
        g.runs.sort(key=lambda r: str(r.seed))
    return dict(sorted(groups.items(), key=lambda kv: (_method_rank(kv[1].method), kv[0])))


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def in_study(groups: Mapping[str, Group], study: str) -> list[Group]:
    return [g for g in groups.values() if study in g.studies]


def _baseline_for(g: Group, groups: Iterable[Group], **replace: Any) -> Group | None:
    key = g.context(**replace)
    for b in groups:
        if b.method == "baseline" and b.context() == key:
            return b
    return None


def collapsed(g: Group) -> bool:
    """True when a group's mean test accuracy is below 1.5x chance (10 classes): its network did
    not train (e.g. kernels shrunk to ~0 by the raw CS initialisation), so its feature-map
    statistics describe a degenerate network."""
    e = g.estimate("test_acc")
    return e is not None and e.mean < 1.5 / NUM_CLASSES


def accuracy_scale(groups: Mapping[str, Group]) -> float:
    """100 when accuracies are stored as fractions (shown in percent), else 1."""
    accs = [v for g in groups.values() for v in g.values("test_acc").values()]
    return 100.0 if accs and max(accs) <= 1.0 else 1.0


# ----------------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------------

def _comparison(label: str, est: Estimate | None, unit: str, scale: float = 1.0, note: str = "",
                verdict_override: str | None = None) -> dict:
    v = verdict_override or verdict(est)
    return {"label": label, "estimate": est.as_dict() if est else None, "verdict": v,
            "text": (f"{label}: {est.fmt_interval(scale, 2 if scale == 100 else 3)} {unit} ({est.method}, n={est.n}) → {v}"
                     if est else f"{label}: no data → {v}") + (f"; {note}" if note else "")}


def _pairs_vs_baseline(groups: Sequence[Group], methods: Sequence[str]):
    for g in groups:
        if g.method in methods:
            b = _baseline_for(g, groups)
            if b is not None:
                yield g, b


def claim_accuracy(groups: Mapping[str, Group], scale: float) -> dict:
    """(a) CS improves test accuracy: CS − baseline test accuracy per model and CS variant."""
    main = in_study(groups, "main")
    comps = []
    for g, b in _pairs_vs_baseline(main, CS_METHODS):
        est = safe_contrast([(1.0, g.values("test_acc")), (-1.0, b.values("test_acc"))])
        comps.append(_comparison(f"{g.get('model')} {_label(g)} − baseline", est, "pts" if scale == 100 else "", scale))
    return _claim("a", "CS improves test accuracy", comps)


def claim_convergence(groups: Mapping[str, Group], scale: float) -> dict:
    """(b) faster convergence: baseline − CS training loss after the first epoch (> 0 supports)."""
    main = in_study(groups, "main")
    comps = []
    for g, b in _pairs_vs_baseline(main, CS_METHODS):
        est = safe_contrast([(1.0, b.values("train_loss", "first")), (-1.0, g.values("train_loss", "first"))])
        comps.append(_comparison(f"{g.get('model')} baseline − {_label(g)}, train loss after epoch 1", est, "", 1.0))
    return _claim("b", "CS converges faster (lower training loss after the first epoch)", comps)


def width_sweep(groups: Mapping[str, Group]) -> dict:
    """{(model, method): {width: Group}} for the width study."""
    out: dict[tuple, dict] = {}
    for g in in_study(groups, "width"):
        out.setdefault((g.get("model"), g.method), {})[float(g.get("width", 1.0))] = g
    return out


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
            label = f"{model} {_label(by_w[small])} at width {small:g} − baseline at width {large:g}"
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
            comps.append(_comparison(label, d, "pts" if scale == 100 else "", scale, note, v))
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
                comps.append(_comparison(f"{p.get('model')} {p.method} − {_label(v)}, {key}", d, "", 1.0,
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
        bm = _baseline_for(g, allg)
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
            label = f"{g.get('model')} {_label(g)}: gain without momentum − gain with momentum {g.get('momentum')}"
        else:
            est = safe_contrast([(1.0, bm.values("test_acc")), (-1.0, g.values("test_acc"))])
            label = f"{g.get('model')} baseline − {_label(g)} with momentum {g.get('momentum')}"
        comps.append(_comparison(label, est, "pts" if scale == 100 else "", scale))
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


# ----------------------------------------------------------------------------------------------
# Curves and figures
# ----------------------------------------------------------------------------------------------

def curve(runs: Sequence[Run], key: str, init: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over seeds at every epoch (or init step) logged by any run;
    low/high are NaN where fewer than two runs have the point."""
    per = [r.init_curve() if init else r.curve(key) for r in runs]
    xs = sorted(set().union(*per)) if per else []
    mean, lo, hi = [], [], []
    for x in xs:
        e = mean_ci([p[x] for p in per if x in p])
        mean.append(e.mean)
        lo.append(e.low if e.low is not None else math.nan)
        hi.append(e.high if e.high is not None else math.nan)
    return np.asarray(xs, float), np.asarray(mean), np.asarray(lo), np.asarray(hi)


def _new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _band(ax, x, m, lo, hi, label, color, log=False):
    if log:
        m = np.where(m > 0, m, np.nan)
    ax.plot(x, m, label=label, color=color, lw=1.6, marker="o" if len(x) < 12 else None, ms=3)
    ok = ~np.isnan(lo)
    if ok.any():
        low = np.where(lo > 0, lo, m * 0.5) if log else lo
        ax.fill_between(x[ok], low[ok], hi[ok], color=color, alpha=0.12, lw=0)


def _color(g: Group) -> str | None:
    key = g.method + (" (normalised)" if g.method in CS_METHODS and g.get("cs_normalize") else "")
    return METHOD_COLORS.get(key, METHOD_COLORS.get(g.method))


def _groups_by_model(groups: Sequence[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(str(g.get("model")), []).append(g)
    return out


def _label(g: Group, with_model: bool = False) -> str:
    s = g.method
    if g.method in ("cs-init", "cs-init+reg"):
        s += f" I={g.get('init_iters')}"
    if g.method in ("cs-reg", "cs-init+reg"):
        s += f" β={g.get('beta')}"
    if g.method in CS_METHODS and g.get("cs_normalize"):
        s += " (normalised)"
    return f"{g.get('model')} {s}" if with_model else s


def fig_cs_loss(groups: Mapping[str, Group], path: Path) -> Path:
    """Figure 1: CS loss during the initialisation phase (per step) and training (per epoch)."""
    fig, (a0, a1) = _new_figure(2)
    by_model = _groups_by_model(in_study(groups, "main"))
    model = "cnn1" if "cnn1" in by_model else (sorted(by_model)[0] if by_model else None)
    sel = [g for g in by_model.get(model, []) if g.method in ("baseline",) + CS_METHODS]
    drew0 = drew1 = False
    for g in sel:
        color = _color(g)
        x, m, lo, hi = curve(g.runs, "cs", init=True)
        if len(x):
            _band(a0, x, m, lo, hi, _label(g), color, log=True)
            drew0 = True
        x, m, lo, hi = curve(g.runs, "cs")
        if len(x):
            _band(a1, x, m, lo, hi, _label(g), color, log=True)
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
    for ax, model in zip(axes, models):
        drew = False
        for g in by_model.get(model, []):
            if g.method not in ("baseline",) + CS_METHODS:
                continue  # the penalty baselines are in the tables; the paper's figures compare CS modes
            x, m, lo, hi = curve(g.runs, key)
            if len(x):
                _band(ax, x, m * scale, lo * scale, hi * scale, _label(g), _color(g), log=log)
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
    ests = [(g, g.estimate("test_acc")) for g in groups]
    ests = [(g, e) for g, e in ests if e is not None]
    if not ests:
        _empty(ax, "no runs for this figure in this suite")
        return _save(fig, path)
    xs = np.arange(len(ests))
    means = [e.mean * scale for _, e in ests]
    err = [(e.half_width or 0.0) * scale for _, e in ests]
    ax.bar(xs, means, yerr=err, capsize=4, color=[_color(g) or "#777" for g, _ in ests])
    ax.set_xticks(xs, [_label(g) + f"\nw={g.get('width')}" for g, _ in ests], fontsize=7, rotation=20)
    lo = min(m - e for m, e in zip(means, err))
    hi = max(m + e for m, e in zip(means, err))
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_ylabel("test accuracy" + (" (%)" if scale == 100 else ""))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def fig_xy(series: Mapping[str, Mapping[float, Group]], path: Path, xlabel: str, title: str, scale: float,
           logx: bool = False) -> Path:
    """Figures 5 and 6: test accuracy against a swept setting (I or width), one line per series."""
    fig, (ax,) = _new_figure(1)
    drew = False
    for label, by_x in series.items():
        pts = [(x, g.estimate("test_acc")) for x, g in sorted(by_x.items())]
        pts = [(x, e) for x, e in pts if e is not None]
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
    ax.set_ylabel("test accuracy" + (" (%)" if scale == 100 else ""))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def iters_series(groups: Mapping[str, Group]) -> dict[str, dict[float, Group]]:
    """{"cnn1 β=0": {I: Group}} for the init-iterations study (I = 0 is the matching baseline)."""
    out: dict[str, dict[float, Group]] = {}
    for g in in_study(groups, "iters"):
        beta = g.get("beta") or 0
        label = (f"{g.get('model')} w={float(g.get('width', 1.0)):g}" + (f" β={beta}" if beta else "")
                 + (" normalised CS" if g.get("cs_normalize") else " raw CS"))
        out.setdefault(label, {})[float(g.get("init_iters") or 0)] = g
    for g in in_study(groups, "iters"):  # I = 0 (the baseline) starts every series of its context
        if g.method == "baseline":
            for by_i in out.values():
                first = next(iter(by_i.values()))
                if 0.0 not in by_i and first.context() == g.context():
                    by_i[0.0] = g
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def make_figures(groups: Mapping[str, Group], fig_dir: Path) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` (a placeholder panel when a suite has no data)."""
    scale = accuracy_scale(groups)
    fig_dir = Path(fig_dir)
    paths = {
        "cs_loss": fig_cs_loss(groups, fig_dir / FIGURES["cs_loss"]),
        "train_loss": fig_curves(groups, fig_dir / FIGURES["train_loss"], "train_loss", "training loss (log)", True),
        "train_acc": fig_curves(groups, fig_dir / FIGURES["train_acc"], "train_acc",
                                "training accuracy" + (" (%)" if scale == 100 else ""), False, scale),
        "resnet18": fig_bars(in_study(groups, "resnet"), fig_dir / FIGURES["resnet18"], "ResNet18 test accuracy", scale),
        "init_iters": fig_xy(iters_series(groups), fig_dir / FIGURES["init_iters"],
                             "initialisation iterations I", "test accuracy vs I", scale, logx=True),
        "width": fig_xy({f"{m} {meth}": by_w for (m, meth), by_w in width_sweep(groups).items()},
                        fig_dir / FIGURES["width"], "width multiplier", "test accuracy vs width", scale),
    }
    return paths


# ----------------------------------------------------------------------------------------------
# Tables and markdown
# ----------------------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "_no runs in this suite for this table_\n"
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(e: Estimate | None, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if e is None else e.fmt(scale, digits)


def _sci(e: Estimate | None) -> str:
    if e is None:
        return "—"
    if e.low is None:
        return f"{e.mean:.3g} (n=1)"
    return f"{e.mean:.3g} ± {e.half_width:.2g}"


def table_kernel_fm(groups: Mapping[str, Group], scale: float) -> str:
    rows = []
    for g in in_study(groups, "main"):
        rows.append([g.get("model"), _label(g) + (" (collapsed)" if collapsed(g) else ""), len(g.runs),
                     _fmt(g.estimate("kernel_cosine"), 1, 3),
                     _sci(g.estimate("cs")), _fmt(g.estimate("fm_similarity"), 1, 3),
                     _fmt(g.estimate("fm_similarity_centered"), 1, 3), _fmt(g.estimate("test_acc"), scale)])
    return _table(["model", "method", "seeds", "mean |kernel cos|", "CS", "mean |fm cos|",
                   "mean |fm cos| centred", "test acc" + (" (%)" if scale == 100 else "")], rows)


def smaller_models(groups: Mapping[str, Group], scale: float) -> tuple[str, list[dict]]:
    """The width-sweep table and, per CS method, the smallest width whose CS accuracy reaches
    (mean >= mean) the baseline of the next width up."""
    sweep = width_sweep(groups)
    rows, found = [], []
    for (model, method), by_w in sorted(sweep.items(), key=lambda kv: (str(kv[0][0]), _method_rank(kv[0][1]))):
        if method == "baseline" or (model, "baseline") not in sweep:
            continue
        base = sweep[(model, "baseline")]
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
            rows.append([model, f"{w:g}", _fmt(b_e, scale), f"{_label(by_w[w])}: {_fmt(cs_e, scale)}",
                         _fmt(nxt, scale) if nxt else "—", "yes" if reaches else ("—" if nxt is None else "no")])
        found.append({"model": model, "method": method, "smallest_width": hit,
                      "widths": widths})
    u = " (%)" if scale == 100 else ""
    table = _table(["model", "width", f"baseline acc{u}", f"CS acc{u}", f"baseline acc at next width{u}",
                    "CS reaches it"], rows)
    return table, found


def table_groups(groups: Sequence[Group], scale: float, extra: Sequence[tuple[str, Callable[[Group], str]]] = ()) -> str:
    rows = []
    for g in groups:
        rows.append([g.name, _label(g), len(g.runs), _fmt(g.estimate("test_acc"), scale)]
                    + [fn(g) for _, fn in extra])
    return _table(["configuration", "method", "seeds", "test acc" + (" (%)" if scale == 100 else "")]
                  + [h for h, _ in extra], rows)


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
        typical[k] = json.loads(max(counts, key=counts.get))
    diff = {n: {k: v for k, v in c.items() if json.dumps(v, sort_keys=True, default=str)
                != json.dumps(typical.get(k), sort_keys=True, default=str)} for n, c in cfgs.items()}
    return typical, diff


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
    import matplotlib
    import scipy
    import torch

    from . import __version__

    return {"convsim": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "platform": platform.platform()}


# ----------------------------------------------------------------------------------------------
# Overlap (channel-wise NNK) section
# ----------------------------------------------------------------------------------------------

def overlap_section(groups: Mapping[str, Group], out_dir: Path, options: Mapping[str, Any] | None,
                    analysis: Callable | None = None, markdown: Callable | None = None) -> tuple[dict | None, str]:
    """Run ``convsim.nnk.report.overlap_analysis`` on the runs of ``options["study"]`` (default
    "main"), cached in ``out_dir/overlap/cache.json`` keyed by the runs' summaries and the options."""
    options = dict(options or {})
    if options.get("skip"):
        return None, "_overlap analysis switched off for this suite_\n"
    study = options.pop("study", "main")
    runs = [r for g in in_study(groups, study) for r in g.runs]
    if len(runs) < 2:
        return None, f"_fewer than two complete runs in study `{study}`: no overlap analysis_\n"
    if analysis is None or markdown is None:
        try:
            from .nnk import report as nnk_report
        except ImportError as exc:  # part of the deliverable: fail loudly
            raise RuntimeError("convsim.nnk.report is missing; the overlap section needs "
                               "overlap_analysis/overlap_markdown") from exc
        analysis = analysis or nnk_report.overlap_analysis
        markdown = markdown or nnk_report.overlap_markdown
    odir = Path(out_dir) / "overlap"
    digest = hashlib.sha1()
    for r in sorted(runs, key=lambda r: r.name):
        digest.update(r.name.encode())
        digest.update((r.path / "summary.json").read_bytes())
    digest.update(json.dumps(options, sort_keys=True).encode())
    key = digest.hexdigest()
    cache = _read_json(odir / "cache.json")
    if cache and cache.get("key") == key:
        return cache.get("result"), cache["markdown"]
    result = analysis([r.path for r in runs], odir, **options)
    md = markdown(result)
    res = jsonable(result)
    atomic_write_json(odir / "cache.json", {"key": key, "markdown": md, "result": res})
    return res, md


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

def _claims_md(cl: list[dict]) -> str:
    rows = [[f"({c['id']})", c["claim"], f"**{c['verdict']}**"] for c in cl]
    out = [_table(["", "paper claim", "verdict on this data"], rows)]
    for c in cl:
        out.append(f"**({c['id']}) {c['claim']}** — {c['verdict']}.\n")
        out += [f"- {line}" for line in c["evidence"]]
        out.append("")
    return "\n".join(out) + "\n"


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
    unit = " (%)" if scale == 100 else ""
    cl = claims(groups)
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
    md.append(_claims_md(cl))
    md.append("<!-- claims:end -->\n")

    md.append("## Setup\n")
    md.append("Settings of most configurations (each configuration's deviations are listed in *All "
              "configurations*):\n")
    md.append(_table(["setting", "value"], [[k, json.dumps(v, default=str)] for k, v in common.items()]))
    md.append("\nStudies: `main` (methods compared per model), `width` (width sweep), `iters` (number of CS "
              "initialisation iterations), `resnet` (ResNet18), `beta` (regulariser weight), `momentum`, "
              "`early_stop`. The per-configuration settings are listed in *All configurations*.\n")

    md.append("## Figure 1: CS loss during training\n")
    md.append("CS loss (log scale) during the initialisation phase (left, per Adam step) and during training "
              "(right, per epoch) for the baseline, CS initialisation and the CS regulariser; bands are 95% CIs "
              "over seeds.\n")
    md.append(f"![CS loss]({rel(fig_paths['cs_loss'])})\n")
    md.append("## Figure 2: training loss\n")
    md.append("Training classification loss per epoch on a log scale, per method, one panel per model.\n")
    md.append(f"![training loss]({rel(fig_paths['train_loss'])})\n")
    md.append("## Figure 3: training accuracy\n")
    md.append(f"![training accuracy]({rel(fig_paths['train_acc'])})\n")
    md.append("## Figure 4: ResNet18\n")
    md.append(f"![ResNet18]({rel(fig_paths['resnet18'])})\n")
    md.append(table_groups(in_study(groups, "resnet"), scale, [("CS", lambda g: _sci(g.estimate("cs")))]))
    md.append("\n## Figure 5: test accuracy versus initialisation iterations\n")
    md.append(f"![test accuracy vs I]({rel(fig_paths['init_iters'])})\n")
    iter_rows = []
    for label, by_i in iters_series(groups).items():
        for i, g in sorted(by_i.items()):
            iter_rows.append([label, f"{i:g}", len(g.runs), _fmt(g.estimate("test_acc"), scale),
                              _sci(g.estimate("cs"))])
    md.append(_table(["series", "I", "seeds", "test acc" + unit, "final CS"], iter_rows))

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
    md.append(table_groups(in_study(groups, "beta"), scale, [("β", lambda g: str(g.get("beta"))),
                                                              ("final CS", lambda g: _sci(g.estimate("cs")))]))

    md.append("\n## Momentum\n")
    md.append(table_groups(in_study(groups, "momentum"), scale, [
        ("momentum", lambda g: str(g.get("momentum"))),
        ("CS after epoch 1", lambda g: _sci(g.estimate("cs", "first"))),
        ("final CS", lambda g: _sci(g.estimate("cs")))]))

    md.append("\n## Early stopping\n")
    md.append("Channel-wise NNK early stopping (no validation set) against classic validation early stopping.\n")
    es = in_study(groups, "early_stop")
    md.append(table_groups(es, scale, [("criterion", lambda g: str(g.get("early_stop"))),
                                       ("stop epoch", lambda g: _fmt(g.estimate("", "stop_epoch"), 1, 1)),
                                       ("delivered epoch", lambda g: _fmt(g.estimate("", "delivered_epoch"), 1, 1)),
                                       ("wall time (s)", lambda g: _fmt(g.estimate("", "wall_time"), 1, 1))]))
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
        ("final train loss", lambda g: _sci(g.estimate("train_loss"))),
        ("wall time (s)", lambda g: _fmt(g.estimate("", "wall_time"), 1, 1))]))

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


def group_record(g: Group) -> dict:
    rec = {"group": g.name, "method": g.method, "studies": sorted(g.studies), "seeds": [r.seed for r in g.runs],
           "config": g.config}
    for k in FINAL_METRICS:
        e = g.estimate(k)
        rec[k] = e.as_dict() if e else None
    e = g.estimate("train_loss", "first")
    rec["train_loss_epoch1"] = e.as_dict() if e else None
    return rec


def write_csv(path: Path, groups: Mapping[str, Group]) -> Path:
    """One row per configuration: settings, then mean / CI low / CI high / n per metric."""
    cols = ["group", "method", "studies"] + list(CONTEXT_FIELDS) + ["beta", "init_iters", "cs_normalize", "penalty", "penalty_weight"]
    metric_cols = list(FINAL_METRICS) + ["train_loss_epoch1"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols + [f"{m}_{s}" for m in metric_cols for s in ("mean", "ci_low", "ci_high", "n")])
    for g in groups.values():
        row = [g.name, g.method, ";".join(sorted(g.studies))] + [g.get(k) for k in cols[3:]]
        for m in metric_cols:
            e = g.estimate("train_loss", "first") if m == "train_loss_epoch1" else g.estimate(m)
            row += [None, None, None, 0] if e is None else [e.mean, e.low, e.high, e.n]
        w.writerow(["" if v is None else v for v in row])
    return atomic_write_text(path, buf.getvalue())
