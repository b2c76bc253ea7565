"""Experiment suites as data, and ``convsim reproduce``.

A suite is a list of :class:`RunSpec`: a run name, a method label, the :class:`convsim.training.config.TrainConfig`
fields it sets, a seed, and the *studies* (report sections) it feeds. Runs that differ only in
their seed share a *group*; a run shared by several studies (the width-1 baseline is in the method
comparison, the width sweep and the I sweep) is trained once. The grid is built by small helpers::

    grid("main", {"cnn1": CNN1}, methods=("baseline", "cs-init", "cs-reg"), seeds=(0, 1, 2), hp=HP)

``convsim reproduce --suite quick --out DIR`` trains every run of the suite that is not complete
into ``DIR/runs/<name>/`` (complete runs are skipped, interrupted ones resumed), then writes
``DIR/report.md``, ``DIR/figures/*.png``, ``DIR/results.json`` and ``DIR/summary.csv`` via
:func:`convsim.reporting.report.write_report`. Re-running it only re-aggregates.

Suites (what ``quick`` costs on a 2-core CPU is recorded in ``BENCHMARKS.md``):

* ``smoke`` (32 runs): synthetic data, tiny subsets, 2 seeds, 1-2 epochs; every report section has
  data, no number means anything. Run by the tests.
* ``quick`` (72 runs): Fashion-MNIST subsets, cnn1/cnn2, 3 seeds, the CS modes and the
  SO/OCNN/SRIP/DeCov baselines, a width sweep, an I sweep, momentum, early stopping and a tiny
  ResNet18 (``make demo``; on a busy machine ``--jobs 2 --threads 1`` is faster).
* ``paper`` (180 runs): the full protocol for a GPU (full Fashion-MNIST, 50 epochs for cnn1/cnn2,
  ResNet18 widths 0.25-1, I in {0, 100, 500, 1000, 2000}, beta in {0.001, 0.01, 0.1}). Not run here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from convsim._internal.files import atomic_write_json, atomic_write_text
from convsim.reporting.claims import ClaimDesign
from convsim.reporting.cwnnk_records import overlap_study
from convsim.reporting.methods import CS_INIT_METHODS, CS_REG_METHODS, METHODS, PENALTY_METHODS
from convsim.reporting.runs import read_json
from convsim.training.checkpoint import FINAL_STATUSES, has_checkpoint
from convsim.training.config import LOGS, normalize_config_dict
from convsim.training.summary import headline


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite: ``overrides`` are :class:`TrainConfig` fields (seed included)."""

    name: str
    group: str
    method: str
    seed: int
    overrides: Mapping[str, Any]
    studies: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "group": self.group,
            "method": self.method,
            "seed": self.seed,
            "overrides": dict(self.overrides),
            "studies": list(self.studies),
        }


@dataclass(frozen=True)
class Hyper:
    """Method hyper-parameters: CS strength beta, CS-init iterations I, and each penalty's strength beta."""

    beta: float = 0.01
    init_iters: int = 500
    penalty_betas: Mapping[str, float] = field(
        default_factory=lambda: {"so": 0.1, "ocnn": 0.1, "srip": 0.1, "decov": 0.01}
    )


def method_overrides(method: str, hp: Hyper) -> dict:
    """The TrainConfig fields that select ``method`` (everything else is the model's base config).

    Example:
        >>> method_overrides("cs-init", Hyper(init_iters=100))["init_iters"]
        100
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    o = {"beta": 0.0, "init_iters": 0, "penalty": "none", "penalty_beta": 0.0}
    if method in CS_INIT_METHODS:
        o["init_iters"] = int(hp.init_iters)
    if method in CS_REG_METHODS:
        o["beta"] = float(hp.beta)
    if method == "cs-decoupled":
        o["cs_mode"] = "decoupled"
    if method in PENALTY_METHODS:
        o["penalty"], o["penalty_beta"] = method, float(hp.penalty_betas[method])
    return o


def group_name(overrides: Mapping[str, Any], method: str, tag: str = "") -> str:
    """``cnn1-w1-cs-init-I500``: model, width, method and its CS settings, then ``tag``."""
    parts = [str(overrides["model"]), f"w{float(overrides.get('width', 1.0)):g}", method]
    if method in CS_INIT_METHODS:
        parts.append(f"I{overrides['init_iters']}")
    if method in CS_REG_METHODS:
        parts.append(f"b{overrides['beta']:g}")
    if tag:
        parts.append(tag)
    return "-".join(parts)


def grid(
    study: str,
    models: Mapping[str, Mapping[str, Any]],
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    hp: Hyper | Mapping[str, Hyper],
    widths: Sequence[float] | None = None,
    tag: str = "",
    extra: Mapping[str, Any] | None = None,
) -> list[RunSpec]:
    """Runs for every model x width x method x seed of one study.

    ``models`` maps a model name to its base config (dataset, subsets, epochs, optimiser...);
    ``hp`` is one :class:`Hyper` or one per model; ``widths`` (default: each base config's
    width) sweeps the width multiplier; ``extra`` fields override the base config (e.g. momentum),
    and ``tag`` marks them in the group name.
    """
    specs = []
    for model, base in models.items():
        h = hp[model] if isinstance(hp, Mapping) else hp
        for width in widths or [base.get("width", 1.0)]:
            for method in methods:
                o = {**base, "model": model, "width": float(width), **(extra or {}), **method_overrides(method, h)}
                g = group_name(o, method, tag)
                specs += [RunSpec(f"{g}-s{s}", g, method, int(s), {**o, "seed": int(s)}, (study,)) for s in seeds]
    return specs


def merge(*spec_lists: Iterable[RunSpec]) -> list[RunSpec]:
    """Concatenate study grids; a run present in several studies is kept once with their union.

    Raises ``ValueError`` if two runs share a name but not their overrides.
    """
    out: dict[str, RunSpec] = {}
    for specs in spec_lists:
        for s in specs:
            if s.name in out:
                old = out[s.name]
                if dict(old.overrides) != dict(s.overrides) or old.method != s.method:
                    raise ValueError(
                        f"run {s.name!r} is defined twice with different settings: "
                        f"{dict(old.overrides)} vs {dict(s.overrides)}"
                    )
                studies = old.studies + tuple(x for x in s.studies if x not in old.studies)
                out[s.name] = dataclasses.replace(old, studies=studies)
            else:
                out[s.name] = s
    return list(out.values())


# ----------------------------------------------------------------------------------------------
# The suites
# ----------------------------------------------------------------------------------------------


def _cnn1(data: Mapping[str, Any], **kw: Any) -> dict:
    # The released MNIST CNN1 protocol (spec §12.3): plain SGD, lr 0.01, no momentum (batch 128 there).
    return {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "batch_size": 128, **data, **kw}


def _bn_net(data: Mapping[str, Any], **kw: Any) -> dict:
    # cnn2 and ResNet18 (BatchNorm): the released CIFAR protocol, SGD with momentum 0.9 (spec §12.2).
    return {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 128, **data, **kw}


# Penalty weights: about 5-15% of the initial cross-entropy (2.3) for each model's initial weights.
CNN1_HP = Hyper(beta=0.01, init_iters=500, penalty_betas={"so": 0.05, "ocnn": 0.05, "srip": 0.1, "decov": 0.5})
BN_HP = Hyper(beta=0.001, init_iters=500, penalty_betas={"so": 0.005, "ocnn": 0.005, "srip": 0.05, "decov": 0.05})


def _hp(base: Hyper, **kw: Any) -> Hyper:
    return dataclasses.replace(base, **kw)


MAIN_METHODS = ("baseline", "cs-init", "cs-reg", "cs-init+reg", "so", "ocnn", "srip", "decov")


def early_stop_grids(
    models: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], hp: Hyper, es: Mapping[str, Any]
) -> list[list[RunSpec]]:
    """The ``early_stop`` study: baselines with channel-wise NNK and with validation early stopping."""
    return [
        grid(
            "early_stop",
            models,
            methods=("baseline",),
            seeds=seeds,
            hp=hp,
            extra={"early_stop": mode, **es},
            tag=f"es-{mode}",
        )
        for mode in ("cwnnk", "validation")
    ]


def smoke_suite() -> list[RunSpec]:
    """Seconds per run on synthetic data: every report section gets data, nothing is meaningful."""
    data = {
        "dataset": "synthetic",
        "train_subset": 256,
        "test_subset": 128,
        "epochs": 2,
        "batch_size": 32,
        "fm_batch": 64,
    }
    hp = _hp(CNN1_HP, init_iters=20)
    cnn1 = {"cnn1": _cnn1(data, lr=0.05)}
    seeds = (0, 1)
    es = {"epochs": 3, "patience": 1, "es_samples": 128, "es_k": 5}
    return merge(
        grid("main", cnn1, methods=("baseline", "cs-init", "cs-reg", "so"), seeds=seeds, hp=hp),
        grid(
            "main", {"cnn2": _bn_net(data, epochs=1, width=0.25)}, methods=("baseline", "cs-reg"), seeds=seeds, hp=BN_HP
        ),
        grid("width", cnn1, methods=("baseline", "cs-reg"), widths=(0.5, 1.0), seeds=seeds, hp=hp),
        grid("iters", cnn1, methods=("baseline", "cs-init"), seeds=seeds, hp=hp),
        grid("iters", cnn1, methods=("cs-init",), seeds=seeds, hp=_hp(hp, init_iters=5)),
        grid("beta", cnn1, methods=("cs-reg",), seeds=seeds, hp=hp),
        grid("beta", cnn1, methods=("cs-reg",), seeds=seeds, hp=_hp(hp, beta=0.1)),
        grid(
            "resnet",
            {"resnet18": _bn_net(data, epochs=1, width=0.0625, train_subset=128)},
            methods=("baseline", "cs-init"),
            seeds=seeds,
            hp=_hp(BN_HP, init_iters=10),
        ),
        grid(
            "momentum", cnn1, methods=("baseline", "cs-init"), seeds=seeds, hp=hp, extra={"momentum": 0.9}, tag="m0.9"
        ),
        *early_stop_grids(cnn1, seeds, hp, es),
    )


def quick_suite() -> list[RunSpec]:
    """Fashion-MNIST subsets for a 2-core CPU in about 15 minutes (``make demo``).

    cnn1 keeps plain SGD but uses lr 0.02 and batch 32 instead of the released 0.01 and 128: with
    those it sits on its initial plateau for most of a 5-epoch budget and one seed in three never
    leaves it. The raw CS initialisation shrinks cnn1's kernels to ~0 (the loss is quartic and cnn1
    has no BatchNorm, spec §8.2) and the network never trains, so cnn1 also gets the
    scale-invariant initialisation (``cs_normalize``, tag ``norm``), which the momentum study uses.
    The momentum study keeps the step size: lr 0.002 with momentum 0.9 (lr / (1 - m) equal).
    Subset sizes are multiples of the batch size (no tiny last batch, which upsets BatchNorm's
    running statistics).
    """
    data = {"dataset": "fashion-mnist", "train_subset": 5120, "test_subset": 2000}
    seeds = (0, 1, 2)
    cnn1 = {"cnn1": _cnn1(data, epochs=5, batch_size=32, lr=0.02)}
    cnn2 = {"cnn2": _bn_net(data, epochs=3, width=0.5)}
    resnet = {"resnet18": _bn_net(data, train_subset=2048, test_subset=1000, epochs=3, width=0.0625)}
    norm = {"cs_normalize": True}
    momentum = {"momentum": 0.9, "lr": 0.002}
    es = {"epochs": 8, "patience": 2, "es_samples": 500, "es_k": 15}
    return merge(
        grid(
            "main",
            cnn1,
            methods=("baseline", "cs-init", "cs-reg", "so", "ocnn", "srip", "decov"),
            seeds=seeds,
            hp=CNN1_HP,
        ),
        grid("main", cnn1, methods=("cs-init",), seeds=seeds, hp=CNN1_HP, extra=norm, tag="norm"),
        grid("main", cnn2, methods=("baseline", "cs-init", "cs-reg"), seeds=seeds, hp=BN_HP),
        grid("width", cnn1, methods=("baseline", "cs-reg"), widths=(0.5, 1.0, 2.0), seeds=seeds, hp=CNN1_HP),
        grid("iters", cnn1, methods=("baseline", "cs-init"), seeds=seeds, hp=CNN1_HP),
        grid("iters", cnn1, methods=("cs-init",), seeds=seeds, hp=_hp(CNN1_HP, init_iters=100)),
        grid("iters", cnn1, methods=("cs-init",), seeds=seeds, hp=CNN1_HP, extra=norm, tag="norm"),
        grid("resnet", resnet, methods=("baseline", "cs-init", "cs-reg"), seeds=seeds, hp=BN_HP),
        grid("momentum", cnn1, methods=("baseline", "cs-reg"), seeds=seeds, hp=CNN1_HP, extra=momentum, tag="m0.9"),
        grid(
            "momentum", cnn1, methods=("cs-init",), seeds=seeds, hp=CNN1_HP, extra={**momentum, **norm}, tag="norm-m0.9"
        ),
        *early_stop_grids(cnn1, seeds, CNN1_HP, es),
    )


def paper_suite() -> list[RunSpec]:
    """The full protocol for a GPU: full Fashion-MNIST, 50 epochs, 3 seeds."""
    data = {"dataset": "fashion-mnist", "train_subset": 0, "test_subset": 0}  # 0 = the whole split
    seeds = (0, 1, 2)
    cnn1 = {"cnn1": _cnn1(data, epochs=50)}
    cnn2 = {"cnn2": _bn_net(data, epochs=50)}
    cnns = {**cnn1, **cnn2}
    hp = {"cnn1": CNN1_HP, "cnn2": BN_HP}
    resnet = {"resnet18": _bn_net(data, epochs=30)}
    norm = {"cs_normalize": True}
    return merge(
        grid("main", cnns, methods=MAIN_METHODS, seeds=seeds, hp=hp),
        grid("main", cnn1, methods=("cs-init", "cs-init+reg"), seeds=seeds, hp=CNN1_HP, extra=norm, tag="norm"),
        grid(
            "width",
            cnn1,
            methods=("baseline", "cs-reg", "cs-init+reg"),
            widths=(0.5, 1.0, 2.0, 4.0),
            seeds=seeds,
            hp=CNN1_HP,
        ),
        grid("width", cnn2, methods=("baseline", "cs-reg"), widths=(0.25, 0.5, 1.0), seeds=seeds, hp=BN_HP),
        grid("iters", cnns, methods=("baseline",), seeds=seeds, hp=hp),
        *[
            grid(
                "iters", cnn1, methods=("cs-init",), seeds=seeds, hp=_hp(CNN1_HP, init_iters=i), extra=norm, tag="norm"
            )
            for i in (100, 500, 1000, 2000)
        ],
        *[
            grid("iters", cnns, methods=("cs-init",), seeds=seeds, hp={m: _hp(h, init_iters=i) for m, h in hp.items()})
            for i in (100, 500, 1000, 2000)
        ],
        *[
            grid("beta", cnns, methods=("cs-reg",), seeds=seeds, hp={m: _hp(h, beta=b) for m, h in hp.items()})
            for b in (0.001, 0.01, 0.1)
        ],
        grid(
            "resnet",
            resnet,
            methods=("baseline", "cs-init", "cs-reg", "cs-init+reg", "so", "ocnn"),
            seeds=seeds,
            hp=BN_HP,
        ),
        grid("resnet", resnet, methods=("baseline", "cs-init"), widths=(0.25, 0.5), seeds=seeds, hp=BN_HP),
        _paper_cnn1_extras(cnn1, seeds),
    )


def _paper_cnn1_extras(cnn1: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> list[RunSpec]:
    """The paper suite's cnn1 momentum and early-stopping studies."""
    momentum = {"momentum": 0.9, "lr": 0.001}
    es = {"epochs": 100, "patience": 5}
    return merge(
        grid(
            "momentum",
            cnn1,
            methods=("baseline", "cs-init", "cs-reg"),
            seeds=seeds,
            hp=CNN1_HP,
            extra=momentum,
            tag="m0.9",
        ),
        grid(
            "momentum",
            cnn1,
            methods=("cs-init",),
            seeds=seeds,
            hp=CNN1_HP,
            extra={**momentum, "cs_normalize": True},
            tag="norm-m0.9",
        ),
        *early_stop_grids(cnn1, seeds, CNN1_HP, es),
    )


# The fmnist study's strengths: CS beta (raw and normalised) and each penalty's weight at 1x and 10x
# CNN1_HP's (about 5-15% and 50-150% of the initial cross-entropy).
FMNIST_BETAS = (0.001, 0.01, 0.1)
FMNIST_NORM_BETAS = (0.01, 0.1)
FMNIST_PENALTY_BETAS = {m: (w, 10 * w) for m, w in CNN1_HP.penalty_betas.items()}
FMNIST_EPOCHS = 30
FMNIST_SEEDS = (0, 1, 2, 3, 4)


def fmnist_suite() -> list[RunSpec]:
    """The CS paper's CNN1 protocol on the whole of Fashion-MNIST: a powered study for a 2-core CPU.

    cnn1, plain SGD at lr 0.01 without momentum, batch 128, 60,000 training and 10,000 test images,
    5 paired seeds (a seed fixes the initial weights, before any CS initialisation, and the
    minibatch order, whatever the method). 30 epochs instead of the paper's 50, the
    least the study allows: measured on the 2-core CPU it ran on, a full-data cnn1 epoch takes
    about 10 s on one thread in fp32 with channels_last (bf16 autocast is 8x slower there, the CPU
    having no native bf16), so 125 runs x 30 epochs take about 6 hours two at a time.
    Momentum variants use lr 0.001 with momentum 0.9, keeping the effective step lr / (1 - m).
    Groups are listed in the order they are trained: those of the claims' primary comparisons first.
    """
    data = {"dataset": "fashion-mnist", "train_subset": 0, "test_subset": 0, "channels_last": True}
    cnn1 = {"cnn1": _cnn1(data, epochs=FMNIST_EPOCHS)}
    seeds = FMNIST_SEEDS
    hp = CNN1_HP
    norm = {"cs_normalize": True}
    momentum = {"momentum": 0.9, "lr": 0.001}
    return merge(
        grid("main", cnn1, methods=("baseline", "cs-reg"), seeds=seeds, hp=hp),
        grid("width", cnn1, methods=("baseline", "cs-reg"), widths=(0.5, 1.0, 2.0), seeds=seeds, hp=hp),
        grid(
            "momentum",
            cnn1,
            methods=("baseline", "cs-reg", "cs-decoupled"),
            seeds=seeds,
            hp=hp,
            extra=momentum,
            tag="m0.9",
        ),
        grid("main", cnn1, methods=("cs-decoupled",), seeds=seeds, hp=hp),
        grid("main", cnn1, methods=("cs-init",), seeds=seeds, hp=hp, extra=norm, tag="norm"),
        grid("momentum", cnn1, methods=("cs-init",), seeds=seeds, hp=hp, extra={**momentum, **norm}, tag="norm-m0.9"),
        *[grid("beta", cnn1, methods=("cs-reg",), seeds=seeds, hp=_hp(hp, beta=b)) for b in FMNIST_BETAS],
        *[
            grid("beta", cnn1, methods=("cs-reg",), seeds=seeds, hp=_hp(hp, beta=b), extra=norm, tag="norm")
            for b in FMNIST_NORM_BETAS
        ],
        *[
            grid("ortho", cnn1, methods=(m,), seeds=seeds, hp=_hp(hp, penalty_betas={m: w}), tag=f"p{w:g}")
            for m, ws in FMNIST_PENALTY_BETAS.items()
            for w in ws
        ],
        grid("main", cnn1, methods=("cs-init",), seeds=seeds, hp=hp),
    )


# The generative suite. CS strengths: beta·CS about 2% and 20% of the loss after two baseline epochs
# of a pilot (seed 0, this suite's data): the VAE decoder's CS grows from 2.5 at init to about 600
# while the NELBO falls to about 270 nats; the DCGAN generator's CS is about 30 with a generator loss
# of about 3.
GENERATIVE_BETAS = {"vae": (0.01, 0.1), "dcgan": (1e-3, 1e-2)}
GENERATIVE_SEEDS = (0, 1, 2)
GENERATIVE_EPOCHS = {"vae": 10, "dcgan": 6}  # a DCGAN epoch costs about twice a VAE epoch
GENERATIVE_BASE = {
    "vae": {"optimizer": "adam", "lr": 1e-3, "adam_beta1": 0.9, "batch_size": 128},
    "dcgan": {"optimizer": "adam", "lr": 2e-4, "adam_beta1": 0.5, "batch_size": 128},
}
GENERATIVE_DATA = {"dataset": "fashion-mnist", "train_subset": 20000, "test_subset": 0, "fd_samples": 10000}


def generative_primary() -> dict[str, str]:
    """Each model's primary CS group (the lower strength), against which stride-aware CS is also compared."""
    return {m: group_name({"model": m, "beta": b[0]}, "cs-reg") for m, b in GENERATIVE_BETAS.items()}


def generative_suite() -> list[RunSpec]:
    """CS on the decoder of a VAE and the generator of a DCGAN, on Fashion-MNIST (issue 10).

    Per model: the baseline, CS-reg at two strengths, CS-init (I = 500) and stride-aware CS-reg at the
    lower strength; 3 paired seeds; Adam (VAE lr 1e-3; DCGAN lr 2e-4, beta1 0.5), batch 128, a
    stratified 20,000-image training subset, 10 VAE epochs and 6 DCGAN epochs (940 generator steps),
    FD on 10,000 generated images against the 10,000 test images every epoch. Sized for about an
    hour on a quiet 2-core CPU (two runs at a time).
    """
    specs = []
    for model, betas in GENERATIVE_BETAS.items():
        base = {model: {**GENERATIVE_DATA, **GENERATIVE_BASE[model], "epochs": GENERATIVE_EPOCHS[model]}}
        hp = Hyper(beta=betas[0])
        seeds = GENERATIVE_SEEDS
        specs += [
            grid("generative", base, methods=("baseline", "cs-reg"), seeds=seeds, hp=hp),
            grid("generative", base, methods=("cs-reg",), seeds=seeds, hp=_hp(hp, beta=betas[1])),
            grid("generative", base, methods=("cs-init",), seeds=seeds, hp=hp),
            grid(
                "generative",
                base,
                methods=("cs-reg",),
                seeds=seeds,
                hp=hp,
                extra={"cs_stride_aware": True},
                tag="stride",
            ),
        ]
    return merge(*specs)


SUITE_FUNCTIONS: dict[str, Callable[[], list[RunSpec]]] = {
    "smoke": smoke_suite,
    "quick": quick_suite,
    "paper": paper_suite,
    "fmnist": fmnist_suite,
    "generative": generative_suite,
}
SUITES: dict[str, list[RunSpec]] = {name: make() for name, make in SUITE_FUNCTIONS.items()}
# Per suite: the claims' primary comparisons ("claims", group names) and the options of the report's
# channel-wise NNK overlap section ("overlap": keyword arguments of overlap_analysis, plus "study":
# which runs it analyses). Every suite's cnn1 groups follow the same naming, so one design serves.
SUITE_OPTIONS: dict[str, dict] = {
    "smoke": {
        "claims": ClaimDesign(larger_baseline="cnn1-w1-baseline"),
        "overlap": {"study": "main", "n_samples": 64, "k": 5},
    },
    "quick": {"claims": ClaimDesign(), "overlap": {"study": "main", "n_samples": 500, "k": 15}},
    "paper": {"claims": ClaimDesign(), "overlap": {"study": "main", "n_samples": 2000, "k": 25}},
    # fmnist analyses the momentum study: the main study's first runs were trained on a machine that is
    # gone, with their checkpoints, before runs kept their CW-NNK records (reporting.cwnnk_records).
    "fmnist": {"claims": ClaimDesign(), "overlap": {"study": "momentum", "n_samples": 1000, "k": 25}},
    "generative": {"report": "generative"},
}


# ----------------------------------------------------------------------------------------------
# Running a suite
# ----------------------------------------------------------------------------------------------


def _train_module() -> ModuleType:
    import convsim.training  # imported late: `convsim reproduce --help` stays fast

    return convsim.training


def validate_specs(specs: Sequence[RunSpec], config_cls: type | None = None) -> None:
    """Raise ``ValueError`` if a spec sets a field that :class:`TrainConfig` does not have."""
    config_cls = config_cls or _train_module().TrainConfig
    known = {f.name for f in dataclasses.fields(config_cls)}
    for s in specs:
        unknown = sorted(set(s.overrides) - known)
        if unknown:
            raise ValueError(f"run {s.name!r} sets unknown TrainConfig fields {unknown}; known: {sorted(known)}")


def run_status(run_dir: Path) -> str:
    """ "complete", "interrupted" (a run directory without a complete summary) or "missing"."""
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (FileNotFoundError, json.JSONDecodeError):
        status = None
    if status in FINAL_STATUSES:
        return "complete"
    return "interrupted" if run_dir.exists() and any(run_dir.glob("*.jsonl")) or has_checkpoint(run_dir) else "missing"


def stale_settings(spec: RunSpec, run_dir: Path) -> dict:
    """{field: (stored, wanted)} where a finished run's stored config differs from ``spec``."""
    try:
        stored = normalize_config_dict(json.loads((run_dir / "summary.json").read_text()).get("config") or {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {k: (stored.get(k), v) for k, v in spec.overrides.items() if k in stored and stored[k] != v}


def _config(spec: RunSpec, run_dir: Path, run_opts: Mapping[str, Any], config_cls: type) -> Any:
    known = {f.name for f in dataclasses.fields(config_cls)}
    fields = {**spec.overrides, "out": str(run_dir), "resume": True, "verbose": False}
    fields.update({k: v for k, v in run_opts.items() if v is not None and k in known})
    return config_cls(**fields)


def _train_one(spec_dict: dict, run_dir: str, run_opts: dict) -> tuple[str, str, float, str]:
    """Train one run (also in a worker process); never raises: returns (name, status, seconds, error)."""
    t0 = time.perf_counter()
    name = spec_dict["name"]
    try:
        mod = _train_module()
        spec = RunSpec(**{**spec_dict, "studies": tuple(spec_dict["studies"])})
        summary = mod.train(_config(spec, Path(run_dir), run_opts, mod.TrainConfig))
        status = run_status(Path(run_dir))
        if status != "complete":
            return name, "failed", time.perf_counter() - t0, f"train returned with status {summary.get('status')!r}"
        note = _keep_overlap_record(spec, Path(run_dir), run_opts.get("overlap"))
        return name, status, time.perf_counter() - t0, headline(summary) + note
    except Exception as exc:  # one failed run must not stop the suite
        tb = traceback.format_exc(limit=4)
        return name, "failed", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}\n{tb}"


def _keep_overlap_record(spec: RunSpec, run_dir: Path, overlap: Mapping[str, Any] | None) -> str:
    """Store the run's CW-NNK record now, while its checkpoint exists, when the suite's overlap analysis
    covers it (checkpoints are not committed; the record is). A failure here does not fail the run:
    the report recomputes the record from the checkpoint, or says that it is missing."""
    if not overlap or overlap.get("skip"):
        return ""
    study, settings = overlap_study(overlap)
    if study not in spec.studies:
        return ""
    from convsim.reporting.overlap import keep_run_record  # imported on use: it loads matplotlib

    try:
        keep_run_record(run_dir, **settings)
    except Exception as exc:  # noqa: BLE001  # reported, never fatal: the run itself is complete
        return f"; CW-NNK record not stored ({type(exc).__name__}: {exc})"
    return "; CW-NNK record stored"


TrainOne = Callable[[dict, str, dict], tuple[str, str, float, str]]


def reproduce(
    suite: str,
    out: str | os.PathLike,
    *,
    data_dir: str | None = None,
    device: str | None = None,
    jobs: int = 1,
    only: str | None = None,
    threads: int | None = None,
    download: bool = False,
    train_log: str | None = None,
    train_one: TrainOne | None = None,
    report: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the missing runs of ``suite`` into ``out/runs`` and write the report into ``out``.

    ``only`` is a regular expression on run names (``re.search``); ``jobs`` > 1 trains runs in
    that many worker processes with ``threads`` (default: CPU count // jobs) torch threads each.
    ``data_dir``, ``device``, ``threads``, ``download`` and ``train_log`` (the trainer's ``log``:
    none, csv or tensorboard) are passed to every TrainConfig (they may change when a run is
    resumed, and are no part of a run's identity: a complete run is skipped whatever they are).
    ``train_one`` replaces the trainer (tests); ``log`` prints progress. Returns
    ``{"trained", "skipped", "failed", "seconds", "report"}`` (and ``"claims"`` with a report).
    """
    specs = select_specs(suite, only)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if train_log is not None and train_log not in LOGS:
        raise ValueError(f"train_log must be one of {', '.join(LOGS)} or None, got {train_log!r}")
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    out = Path(out)
    atomic_write_json(
        out / "suite.json",
        {"suite": suite, "only": only, "jobs": jobs, "threads": threads, "runs": [s.as_dict() for s in SUITES[suite]]},
    )
    if train_one is None:
        validate_specs(specs)
        train_one = _train_one
    todo, skipped = prepare_runs(specs, out / "runs", suite, log)
    run_opts = {
        "data_dir": data_dir,
        "device": device,
        "threads": threads,
        "download": download or None,
        "log": train_log,
        "overlap": SUITE_OPTIONS[suite].get("overlap"),  # not a TrainConfig field: read by _train_one only
    }
    t0 = time.perf_counter()
    done = train_runs(todo, out / "runs", run_opts, jobs, train_one, log)
    seconds = time.perf_counter() - t0
    failed = {n: err.splitlines()[0] for n, (st, _, err) in done.items() if st != "complete"}
    result: dict[str, Any] = {
        "trained": sorted(n for n, (st, _, _) in done.items() if st == "complete"),
        "skipped": sorted(s.name for s in skipped),
        "failed": failed,
        "seconds": seconds,
        "report": None,
    }
    if report:
        t1 = time.perf_counter()
        res = report_suite(out, suite, failed=failed, study={"jobs": jobs, "threads": threads})
        result.update(report=str(out / "report.md"), claims={c["id"]: c["verdict"] for c in res["claims"]})
        log(f"report: {out / 'report.md'} ({time.perf_counter() - t1:.1f} s)")
    log(f"training: {seconds:.1f} s for {len(todo)} runs ({len(failed)} failed)")
    return result


def select_specs(suite: str, only: str | None = None) -> list[RunSpec]:
    """The runs of ``suite`` whose name matches the regular expression ``only`` (all when ``None``)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {sorted(SUITES)}")
    pattern = re.compile(only) if only is not None else None
    return [s for s in SUITES[suite] if pattern is None or pattern.search(s.name)]


def prepare_runs(
    specs: Sequence[RunSpec], runs_dir: Path, suite: str, log: Callable[[str], None]
) -> tuple[list[RunSpec], list[RunSpec]]:
    """Write every run's ``spec.json``; return (runs to train, complete runs), warning about
    complete runs whose stored settings differ from their spec."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped = [], []
    for s in specs:
        d = runs_dir / s.name
        d.mkdir(exist_ok=True)
        atomic_write_json(d / "spec.json", {**s.as_dict(), "suite": suite})
        if run_status(d) != "complete":
            todo.append(s)
            continue
        skipped.append(s)
        stale = stale_settings(s, d)
        if stale:
            log(f"warning: {s.name} was trained with other settings ({stale}); delete {d} to retrain it")
    log(f"suite {suite}: {len(specs)} runs, {len(skipped)} complete, {len(todo)} to train -> {runs_dir}")
    return todo, skipped


def train_runs(
    todo: Sequence[RunSpec], runs_dir: Path, run_opts: dict, jobs: int, train_one: TrainOne, log: Callable[[str], None]
) -> dict[str, tuple[str, float, str]]:
    """Train ``todo`` in order (``jobs`` at a time in spawned worker processes): {name: (status, seconds, message)}."""
    done: dict[str, tuple[str, float, str]] = {}

    def record(i: int, res: tuple[str, str, float, str]) -> None:
        name, status, secs, msg = res
        done[name] = (status, secs, msg)
        log(f"[{i}/{len(todo)}] {name}: {status} in {secs:.1f} s" + (f"\n{msg}" if status == "failed" else f", {msg}"))

    if jobs == 1 or len(todo) <= 1:
        for i, s in enumerate(todo, 1):
            record(i, train_one(s.as_dict(), str(runs_dir / s.name), run_opts))
        return done
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(train_one, s.as_dict(), str(runs_dir / s.name), run_opts) for s in todo]
        for i, f in enumerate(as_completed(futures), 1):
            record(i, f.result())
    return done


def report_suite(
    out: str | os.PathLike,
    suite: str,
    *,
    failed: Mapping[str, str] | None = None,
    study: Mapping[str, Any] | None = None,
    source: str | os.PathLike | None = None,
) -> dict:
    """Write the report of ``suite``'s runs under ``source/runs`` (default ``out``) into ``out``.

    Used by ``convsim reproduce`` and ``convsim report``. ``study`` (how the suite was run: jobs,
    threads) defaults to what ``source/suite.json`` records; a cached overlap analysis in
    ``source/overlap`` is reused, so a committed study needs no checkpoints.
    """
    from convsim.reporting.report import write_report

    out = Path(out)
    source = Path(source) if source is not None else out
    runs_dir = source / "runs"
    if study is None:
        stored = read_json(source / "suite.json") or {}
        study = {k: stored[k] for k in ("jobs", "threads") if k in stored}
    study = {**study, "description": inspect.getdoc(SUITE_FUNCTIONS[suite])}
    cache = source / "overlap" / "cache.json"
    if source.resolve() != out.resolve() and cache.exists():
        atomic_write_text(out / "overlap" / "cache.json", cache.read_text())
    pending = [s.name for s in SUITES[suite] if run_status(runs_dir / s.name) != "complete"]
    options = SUITE_OPTIONS[suite]
    if options.get("report") == "generative":
        from convsim.reporting.generative import write_generative_report

        names = [s.name for s in SUITES[suite]]
        return write_generative_report(out, runs_dir, generative_primary(), include=names, pending=pending)
    return write_report(
        out,
        suite=suite,
        runs_dir=runs_dir,
        design=options["claims"],
        overlap=options.get("overlap"),
        pending=pending,
        failed=failed,
        include=[s.name for s in SUITES[suite]],
        study=study,
    )
