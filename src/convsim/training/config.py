r"""Every hyperparameter of a training run (:class:`TrainConfig`) and its command-line flags.

One dataclass field per hyperparameter, each with its one-line help; :func:`add_arguments`
derives one ``--kebab-case`` flag per field from it, :func:`config_from_args` reads them back
and :func:`to_argv` writes a config as flags (e.g. to relaunch it under ``torchrun``). A stored
config (``asdict``) comes back through :func:`config_from_dict`, which maps renamed fields
(:data:`LEGACY_FIELDS`, via :func:`normalize_config_dict`) so that older runs load and resume.

Example:
    >>> config = TrainConfig(model="cnn2", beta=0.01)
    >>> to_argv(config)
    ['--model', 'cnn2', '--beta', '0.01']
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from convsim import data as _data
from convsim import models as _models
from convsim.nnk.solvers import SOLVERS as NNK_SOLVERS
from convsim.penalties import PENALTIES
from convsim.similarity import CHANNELS, PAIRS
from convsim.training.distributed import DEVICES
from convsim.training.errors import ConfigError, ConfigTypeError

MODELS = _models.MODELS
DATASETS = tuple(_data.DATASETS)
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step")
CS_MODES = ("loss", "decoupled")
INIT_OPTIMIZERS = ("adam", "train")
PENALTY_CHOICES = ("none", *PENALTIES)
EARLY_STOPS = ("none", "cwnnk", "validation")
LOGS = ("none", "csv", "tensorboard")  # convsim.training.loggers

# Renamed fields, old name -> new name. Stored runs (summary.json, checkpoint.pt) keep the names
# they were written with; normalize_config_dict maps them, so such runs still load and resume.
LEGACY_FIELDS = {"penalty_weight": "penalty_beta"}


# Fields that may differ between a run and its resumption. All but `epochs` leave the training
# math alone; a larger `epochs` continues a complete run (with a cosine/step schedule the
# remaining epochs follow the schedule of the new total). `log` is how a run is watched, not what
# it trains: a run stored before the field existed resumes with any choice.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "out", "device", "threads", "eval_batch", "verbose", "data_dir", "download", "log"}
)


def _opt(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A config field with its one-line help (shown by ``convsim train --help``)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Every hyperparameter of one training run (nanoGPT style: all visible, each commented).

    Invalid values raise ``ValueError`` on construction. ``asdict(config)`` is what
    ``summary.json`` stores and :func:`convsim.training.loop.load_run` reads back.

    Example:
        >>> TrainConfig(model="cnn2", beta=0.01).beta
        0.01
    """

    # --- model and data
    model: str = _opt("cnn1", "architecture (convsim.models.build)", MODELS)
    width: float = _opt(1.0, "channel-width multiplier of the architecture")
    dataset: str = _opt("fashion-mnist", "dataset (convsim.data.load)", DATASETS)
    data_dir: str | None = _opt(None, "folder searched first for dataset files")
    download: bool = _opt(False, "download missing dataset files (checksum-verified)")
    train_subset: int = _opt(0, "stratified training subset size, 0 = the whole split")
    test_subset: int = _opt(0, "stratified test subset size, 0 = the whole split")
    # --- optimisation
    epochs: int = _opt(10, "epochs to train (with --resume: the total to reach)")
    batch_size: int = _opt(128, "global minibatch size (split across DDP ranks)")
    drop_last: bool = _opt(
        False, "skip each epoch's last batch when it is short (a tiny batch skews BatchNorm's running statistics)"
    )
    optimizer: str = _opt("sgd", "training optimizer", OPTIMIZERS)
    lr: float = _opt(0.01, "learning rate")
    momentum: float = _opt(0.9, "SGD momentum (Adam: see adam_beta1)")
    adam_beta1: float = _opt(0.9, "Adam's first-moment decay (0.9 is Adam's default; DCGAN uses 0.5)")
    weight_decay: float = _opt(0.0, "L2 weight decay of the optimizer, on every parameter")
    schedule: str = _opt("none", "lr schedule per epoch: none | cosine to 0 | step (x0.1 at 50%% and 75%%)", SCHEDULES)
    # --- Convolutional Similarity
    beta: float = _opt(0.0, "weight of the CS regulariser, 0 = off")
    cs_pairs: str = _opt("all", "filter pairs of the CS loss (adjacent = the authors' released code)", PAIRS)
    cs_channels: str = _opt("per_channel", "channel treatment of the CS loss", CHANNELS)
    cs_normalize: bool = _opt(False, "unit-norm each filter inside the CS loss (scale invariant)")
    cs_mode: str = _opt(
        "loss",
        "loss: add beta*CS to the loss; decoupled: a separate CS gradient step after "
        "each optimizer step, outside momentum (like AdamW's weight decay)",
        CS_MODES,
    )
    cs_stride_aware: bool = _opt(
        False, "stride-aware CS: each layer's own stride (default: stride 1, the paper's definition)"
    )
    init_iters: int = _opt(0, "CS-initialisation steps before training, 0 = off")
    init_lr: float = _opt(2e-3, "learning rate of the CS-initialisation steps")
    init_optimizer: str = _opt(
        "adam",
        "init steps: a fresh Adam thrown away after (paper), or the "
        "training optimizer itself so its momentum carries on",
        INIT_OPTIMIZERS,
    )
    # --- baseline penalty
    penalty: str = _opt("none", "kernel-orthogonality / decorrelation baseline", PENALTY_CHOICES)
    penalty_beta: float = _opt(
        1e-3, "weight of the baseline penalty: loss + penalty_beta * P(model) (convsim.penalties.Penalty(beta=...))"
    )
    # --- early stopping
    early_stop: str = _opt(
        "none", "cwnnk: per-channel NNK LOO error on training data; validation: held-out split", EARLY_STOPS
    )
    patience: int = _opt(10, "epochs without improvement before a channel freezes / training stops")
    es_k: int = _opt(25, "neighbours of the channel-wise NNK LOO error")
    es_samples: int = _opt(1000, "training images on which the channel-wise LOO error is computed")
    es_solver: str = _opt(
        "exact",
        "NNK solver of the channel-wise LOO error: exact (the optimum), pruning (the released "
        "one-way solver of CW-DeepNNK, tolerance 1e-6) or pgd",
        NNK_SOLVERS,
    )
    val_fraction: float = _opt(0.2, "share of the training set held out for --early-stop validation")
    es_restore: bool = _opt(
        True,
        "on early stop, restore the weights of the best epoch "
        "(validation: lowest error; cwnnk: last improvement of any channel)",
    )
    # --- run and speed
    seed: int = _opt(0, "seed of the model init, the shuffling and every subset")
    device: str = _opt("auto", "auto = cuda when available", DEVICES)
    out: str = _opt("runs/train", "run directory")
    resume: bool = _opt(False, "continue the run in --out from its checkpoint")
    channels_last: bool = _opt(False, "NHWC memory format for data and model (faster on CPU)")
    bf16: bool = _opt(False, "bfloat16 autocast for forward passes (CPU or CUDA)")
    threads: int = _opt(0, "torch CPU threads, 0 = physical cores (divided among DDP ranks)")
    eval_batch: int = _opt(1000, "batch size of evaluation passes")
    fm_batch: int = _opt(
        256, "first test images (vae, dcgan: fixed latent codes) used to measure CS and feature-map similarity"
    )
    fd_samples: int = _opt(
        10000, "vae, dcgan: generated images the per-epoch Frechet distance compares with the test set"
    )
    verbose: bool = _opt(True, "print one line per epoch")
    log: str = _opt(
        "csv",
        "per-epoch log beside metrics.jsonl: csv (metrics.csv), tensorboard (event files in tensorboard/, "
        "with per-layer CS and feature-map similarity; pip install convsim[tensorboard]) or none",
        LOGS,
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first field whose value is not allowed."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            if value is None and f.name == "data_dir":
                continue
            base = str if f.name == "data_dir" else kind
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if base is int and isinstance(value, float) and value.is_integer():
                value = int(value)
                setattr(self, f.name, value)
            if not isinstance(value, base) or (base is not bool and isinstance(value, bool)):
                raise ConfigTypeError(f"{f.name} must be a {base.__name__}, got {value!r}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        checks = [
            ("width", self.width > 0 and math.isfinite(self.width), "> 0"),
            ("train_subset", self.train_subset >= 0, ">= 0 (0 = all)"),
            ("test_subset", self.test_subset >= 0, ">= 0 (0 = all)"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("adam_beta1", 0 <= self.adam_beta1 < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("beta", self.beta >= 0 and math.isfinite(self.beta), ">= 0"),
            ("init_iters", self.init_iters >= 0, ">= 0"),
            ("init_lr", self.init_lr > 0, "> 0"),
            ("penalty_beta", self.penalty_beta >= 0, ">= 0"),
            ("patience", self.patience >= 1, ">= 1"),
            ("es_k", self.es_k >= 1, ">= 1"),
            ("es_samples", self.es_samples >= 2, ">= 2"),
            ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
            ("threads", self.threads >= 0, ">= 0 (0 = physical cores)"),
            ("eval_batch", self.eval_batch >= 1, ">= 1"),
            ("fm_batch", self.fm_batch >= 2, ">= 2"),
            ("fd_samples", self.fd_samples >= 2, ">= 2"),
            ("out", bool(self.out), "a non-empty path"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.model in _models.GENERATIVE_MODELS and self.early_stop != "none":
            raise ConfigError(
                f"early_stop {self.early_stop!r} needs a classifier; {self.model} trains with early_stop none"
            )


CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))


def normalize_config_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored ``asdict(config)`` with today's field names: the keys of :data:`LEGACY_FIELDS` renamed.

    Every other key is kept as it is (known or not). Where a dict holds both a legacy name and its
    new name, the new one wins. Use it wherever a stored config is read by key (``summary.json``,
    ``checkpoint.pt``, ``spec.json``).

    Example:
        >>> normalize_config_dict({"penalty": "so", "penalty_weight": 0.1})
        {'penalty': 'so', 'penalty_beta': 0.1}
    """
    out = {k: v for k, v in values.items() if k not in LEGACY_FIELDS}
    for old, new in LEGACY_FIELDS.items():
        if old in values and new not in values:
            out[new] = values[old]
    return out


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a stored ``asdict(config)``: legacy names mapped, unknown keys ignored.

    Example:
        >>> config = config_from_dict({"beta": 0.01, "penalty_weight": 0.1, "no_longer_a_field": 1})
        >>> config.beta, config.penalty_beta
        (0.01, 0.1)
    """
    return TrainConfig(**{k: v for k, v in normalize_config_dict(values).items() if k in CONFIG_FIELDS})


# ----------------------------------------------------------------------------------------------
# Command-line flags
# ----------------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--kebab-case`` flag per :class:`TrainConfig` field (booleans also get ``--no-...``).

    Flags not given are left out of the namespace (``argparse.SUPPRESS``), so
    :func:`config_from_args` can tell them apart from defaults (needed by ``--resume``). The old
    names of :data:`LEGACY_FIELDS` (e.g. ``--penalty-weight``) are accepted but not listed in ``--help``.
    """
    hints = typing.get_type_hints(TrainConfig)
    legacy = {new: old for old, new in LEGACY_FIELDS.items()}
    for f in fields(TrainConfig):
        kind = hints[f.name]
        default = f.default if f.default is not MISSING else None
        help_text = f"{f.metadata['help']} (default: {default})"
        if kind is bool:
            parser.add_argument(
                _flag(f.name),
                action=argparse.BooleanOptionalAction,
                dest=f.name,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        base = str if f.name == "data_dir" else kind
        choices = f.metadata.get("choices")
        metavar = None if choices else f.name.upper()
        parser.add_argument(
            _flag(f.name),
            type=base,
            choices=choices,
            metavar=metavar,
            dest=f.name,
            default=argparse.SUPPRESS,
            help=help_text,
        )
        if f.name in legacy:
            parser.add_argument(
                _flag(legacy[f.name]),
                type=base,
                choices=choices,
                metavar=metavar,
                dest=f.name,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from parsed flags: ``base`` (default: the defaults) with the given flags applied.

    Raises ``ValueError``/``TypeError`` for values the config does not allow.

    Example:
        >>> p = argparse.ArgumentParser(); add_arguments(p)
        >>> config_from_args(p.parse_args(["--model", "cnn2", "--train-subset", "512"])).train_subset
        512
    """
    values = asdict(base) if base is not None else {}
    values.update({k: getattr(args, k) for k in CONFIG_FIELDS if hasattr(args, k)})
    return TrainConfig(**values)


def to_argv(config: TrainConfig) -> list[str]:
    """Command-line flags that reproduce ``config`` (non-default fields only), e.g. to launch ``torchrun``.

    Example:
        >>> to_argv(TrainConfig(beta=0.01, cs_normalize=True))
        ['--beta', '0.01', '--cs-normalize']
    """
    argv: list[str] = []
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        if value == f.default and type(value) is type(f.default):
            continue
        if isinstance(value, bool):
            argv.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            argv += [_flag(f.name), repr(value) if isinstance(value, float) else str(value)]
    return argv
