"""Run directories and the groups of runs that differ only in their seed.

A *run directory* (written by :func:`convsim.training.loop.train`) holds ``metrics.jsonl`` (one line per
epoch), ``init.jsonl`` (CS per initialisation step), ``summary.json`` (config, status, versions)
and, when ``convsim reproduce`` created it, ``spec.json`` (run name, group, method label, seed and
the studies the run belongs to). Runs that differ only in their seed form a :class:`Group`; its
:meth:`Group.estimate` is the mean over seeds with a 95% CI (:func:`convsim.reporting.intervals.mean_ci`).

Example::

    groups = group_runs(load_runs("runs/quick/runs"))   # {group name: Group}, complete runs only
    print(groups["cnn1-baseline"].estimate("test_acc").fmt(100))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convsim import data as _data
from convsim._internal.files import read_jsonl
from convsim.reporting.intervals import Estimate, mean_ci
from convsim.reporting.methods import (
    BASELINE,
    CS_INIT_METHODS,
    CS_METHODS,
    CS_REG_METHODS,
    PENALTY_METHODS,
    is_collapsed,
    method_rank,
)
from convsim.training.checkpoint import FINAL_STATUSES
from convsim.training.config import normalize_config_dict

# Config fields that must agree for two groups to be compared (everything but the method).
CONTEXT_FIELDS = (
    "model",
    "width",
    "dataset",
    "train_subset",
    "test_subset",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "early_stop",
)
# Fields that set the CS method itself.
CS_FIELDS = ("beta", "init_iters", "init_lr", "init_optimizer", "cs_pairs", "cs_channels", "cs_normalize", "cs_mode")
# Fields that never describe an experiment (where and how a run was executed).
RUN_FIELDS = {
    "seed",
    "out",
    "resume",
    "device",
    "data_dir",
    "threads",
    "channels_last",
    "bf16",
    "download",
    "verbose",
    "eval_batch",
    "log",
}


def infer_method(config: Mapping[str, Any]) -> str:
    """Method label of a training config: its penalty name, or CS-init / CS-reg / both / decoupled / baseline."""
    pen = config.get("penalty")
    if pen not in (None, "", "none") and float(config.get("penalty_beta") or 0) != 0:
        return str(pen)
    init = int(config.get("init_iters") or 0) > 0
    reg = float(config.get("beta") or 0) > 0
    if reg and not init and config.get("cs_mode") == "decoupled":
        return "cs-decoupled"
    return {(True, True): "cs-init+reg", (True, False): "cs-init", (False, True): "cs-reg"}.get((init, reg), BASELINE)


def _layer_mean(x: Any) -> Any:
    """A per-layer record (``{layer: value}``, e.g. ``kernel_norm``) becomes its mean over layers."""
    if isinstance(x, Mapping):
        vals = [_num(v) for v in x.values()]
        present = [v for v in vals if v is not None]
        return sum(present) / len(present) if present and len(present) == len(vals) else None
    return x


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
        return self.summary.get("status") in FINAL_STATUSES

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
        """{epoch: value}; epoch 0 is the summary's ``initial`` measurement (after any CS init).

        A per-layer metric (``kernel_norm``) gives its mean over the layers."""
        out = {
            int(r["epoch"]): v
            for r in self.metrics
            if "epoch" in r
            for v in [_num(_layer_mean(r.get(key)))]
            if v is not None
        }
        v = _num(_layer_mean((self.summary.get("initial") or {}).get(key)))
        if v is not None and out:
            out[0] = v
        return dict(sorted(out.items()))

    def init_curve(self) -> dict[int, float]:
        return {int(r["step"]): float(r["cs"]) for r in self.init if _num(r.get("cs")) is not None}

    def stop_epoch(self) -> float | None:
        """The epoch training stopped at (early stopping), else the last epoch run."""
        for v in ((self.summary.get("early_stop") or {}).get("stop_epoch"), self.summary.get("epochs_run")):
            num = _num(v)
            if num is not None:
                return num
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
        secs = [s for s in (_num(r.get("seconds")) for r in self.metrics) if s is not None]
        return float(sum(secs)) if secs else None


def read_run(path: str | Path) -> Run | None:
    """Read one run directory; ``None`` if it has no ``summary.json`` and no ``spec.json``."""
    path = Path(path)
    spec = read_json(path / "spec.json")
    summary = read_json(path / "summary.json")
    if spec is None and summary is None:
        return None
    spec, summary = spec or {}, summary or {}
    config = normalize_config_dict(summary.get("config") or spec.get("overrides") or {})
    name = spec.get("name") or path.name
    seed = spec.get("seed", summary.get("seed", config.get("seed")))
    group = spec.get("group") or re.sub(r"-s\d+$", "", name)
    return Run(
        path=path,
        name=name,
        group=group,
        method=spec.get("method") or infer_method(config),
        seed=seed if seed is not None else name,
        studies=tuple(spec.get("studies") or ()),
        config=config,
        summary=summary,
        metrics=read_jsonl(path / "metrics.jsonl"),
        init=read_jsonl(path / "init.jsonl"),
    )


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; ``None`` if the file is missing or torn."""
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
    return dict(sorted(groups.items(), key=lambda kv: (method_rank(kv[1].method), kv[0])))


def in_study(groups: Mapping[str, Group], study: str) -> list[Group]:
    """The groups whose runs belong to ``study`` (``main``, ``width``, ``iters``, ...)."""
    return [g for g in groups.values() if study in g.studies]


def baseline_for(g: Group, groups: Iterable[Group], **replace: Any) -> Group | None:
    """The baseline group of ``groups`` trained like ``g`` (same context, with ``replace`` applied)."""
    key = g.context(**replace)
    for b in groups:
        if b.method == "baseline" and b.context() == key:
            return b
    return None


def collapsed(g: Group) -> bool:
    """True when a group's mean test accuracy is below 1.5x chance for its dataset's class count
    (:func:`convsim.reporting.methods.is_collapsed`): its network did not train."""
    e = g.estimate("test_acc")
    info = _data.DATASETS.get(str(g.get("dataset")))
    return e is not None and info is not None and is_collapsed(e.mean, info.classes)


def accuracy_scale(groups: Mapping[str, Group]) -> float:
    """100 when accuracies are stored as fractions (shown in percent), else 1."""
    accs = [v for g in groups.values() for v in g.values("test_acc").values()]
    return 100.0 if accs and max(accs) <= 1.0 else 1.0


def percent_unit(scale: float) -> str:
    """``" (%)"`` after an accuracy label when accuracies are shown in percent, else ``""``."""
    return " (%)" if scale == 100 else ""


def width_sweep(groups: Mapping[str, Group]) -> dict:
    """{(model, method): {width: Group}} for the width study."""
    out: dict[tuple, dict] = {}
    for g in in_study(groups, "width"):
        out.setdefault((g.get("model"), g.method), {})[float(g.get("width", 1.0))] = g
    return out


def iters_series(groups: Mapping[str, Group]) -> dict[str, dict[float, Group]]:
    """{"cnn1 β=0": {I: Group}} for the init-iterations study (I = 0 is the matching baseline)."""
    out: dict[str, dict[float, Group]] = {}
    for g in in_study(groups, "iters"):
        beta = g.get("beta") or 0
        label = (
            f"{g.get('model')} w={float(g.get('width', 1.0)):g}"
            + (f" β={beta}" if beta else "")
            + (" normalised CS" if g.get("cs_normalize") else " raw CS")
        )
        out.setdefault(label, {})[float(g.get("init_iters") or 0)] = g
    for g in in_study(groups, "iters"):  # I = 0 (the baseline) starts every series of its context
        if g.method == "baseline":
            for by_i in out.values():
                first = next(iter(by_i.values()))
                if 0.0 not in by_i and first.context() == g.context():
                    by_i[0.0] = g
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def strength(g: Group) -> float | None:
    """The regularisation strength of a group: CS ``beta`` for CS acting during training, the
    penalty's ``penalty_beta`` for a penalty, else ``None``."""
    if g.method in CS_REG_METHODS:
        return float(g.get("beta") or 0)
    if g.method in PENALTY_METHODS:
        return float(g.get("penalty_beta") or 0)
    return None


def method_label(g: Group, with_model: bool = False) -> str:
    """``"cs-init+reg I=500 β=0.01 (normalised)"``: the method with the settings that tell runs apart.

    ``with_model`` prefixes the model and, where they are not the defaults, its width and SGD
    momentum: ``"cnn1 w=2 cs-reg β=0.01"``.
    """
    s = g.method
    if g.method in CS_INIT_METHODS:
        s += f" I={g.get('init_iters')}"
    if g.method in CS_REG_METHODS or g.method in PENALTY_METHODS:
        s += f" β={strength(g):g}"
    if g.method in CS_METHODS and g.get("cs_normalize"):
        s += " (normalised)"
    if not with_model:
        return s
    width, momentum = float(g.get("width") or 1.0), float(g.get("momentum") or 0.0)
    context = (f" w={width:g}" if width != 1.0 else "") + (f" m={momentum:g}" if momentum else "")
    return f"{g.get('model')}{context} {s}"
