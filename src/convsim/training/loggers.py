r"""Per-epoch training logs beside ``metrics.jsonl``: ``convsim train --log {none,csv,tensorboard}``.

A logger is made by :func:`make_logger` at the start of a run (before anything is written, so a
missing ``tensorboard`` package fails at once), :meth:`~RunLogger.start`\ ed with the epochs the
run already has (none for a fresh start, the checkpoint's history on resume) and given every
finished epoch's record (the dict ``metrics.jsonl`` gets) after the epoch's checkpoint, like
``metrics.jsonl`` itself, so a log never runs ahead of the checkpoint. Only rank 0 logs under DDP.

``csv``: ``metrics.csv``, one row per epoch: every scalar field of the record (numbers, strings,
booleans) and ``kernel_norm/<layer>``; per-channel lists (``es_errors``, ...) stay in
``metrics.jsonl``. The file is rewritten atomically after every epoch from the run's history, so
after a crash and ``--resume`` it holds exactly the checkpoint's epochs, each once.

``tensorboard``: event files in ``tensorboard/`` (``torch.utils.tensorboard``; ``pip install
convsim[tensorboard]``), the epoch as the step: every numeric field of the record under its own
name, and per conv layer the measurements :func:`convsim.training.evaluation.measure_redundancy`
aggregates (:func:`layer_redundancy`): ``cs/<layer>``, ``kernel_cosine/<layer>``,
``fm_similarity/<layer>``, ``fm_similarity_centered/<layer>``, ``fm_effective_rank/<layer>`` and
``kernel_norm/<layer>``. A resumed run's writer purges the events of the epochs it trains again
(``purge_step``), so TensorBoard shows each epoch once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from convsim._internal.files import atomic_write_text
from convsim.measure import FeatureMapSimilarity
from convsim.training.config import TrainConfig
from convsim.training.distributed import DistEnv
from convsim.training.errors import ConfigError

CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

# FeatureMapSimilarity's per-layer keys -> the names metrics.jsonl gives their averages (or sum, for cs)
_LAYER_KEYS = {
    "cs": "cs",
    "kernel_abs_cos": "kernel_cosine",
    "fm_abs_cos": "fm_similarity",
    "fm_effective_rank": "fm_effective_rank",
}


class RunLogger(Protocol):
    """What the training loop calls; ``per_layer`` says whether :meth:`log_epoch` wants :func:`layer_redundancy`."""

    per_layer: bool

    def start(self, history: Sequence[Mapping[str, Any]]) -> None:
        """The run's finished epochs so far (the checkpoint's history; empty for a fresh start)."""

    def log_epoch(self, record: Mapping[str, Any], layers: Mapping[str, Mapping[str, float]] | None) -> None:
        """One finished epoch: its ``metrics.jsonl`` record, and the per-layer measurements when ``per_layer``."""

    def close(self) -> None:
        """Flush and release files; called once the run ends, also on error."""


class NullLogger:
    """``--log none``, and every rank but 0 under DDP: logs nothing."""

    per_layer = False

    def start(self, history: Sequence[Mapping[str, Any]]) -> None:
        pass

    def log_epoch(self, record: Mapping[str, Any], layers: Mapping[str, Mapping[str, float]] | None) -> None:
        pass

    def close(self) -> None:
        pass


def make_logger(config: TrainConfig, env: DistEnv) -> RunLogger:
    """The logger ``config.log`` names, writing into ``config.out`` (a :class:`NullLogger` on ranks other than 0).

    Every rank checks that the logger can be made, so a missing ``tensorboard`` fails all alike.

    Raises:
        ConfigError: ``log="tensorboard"`` without the ``tensorboard`` package.

    Example:
        >>> type(make_logger(TrainConfig(log="csv"), DistEnv())).__name__
        'CsvLogger'
    """
    out = Path(config.out)
    logger: RunLogger
    if config.log == "csv":
        logger = CsvLogger(out / CSV_FILE)
    elif config.log == "tensorboard":
        logger = TensorBoardLogger(out / TENSORBOARD_DIR)
    else:
        logger = NullLogger()
    return logger if env.is_main else NullLogger()


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


def csv_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV cells of one record: scalar fields as they are, dicts one level down as ``key/subkey``, lists left out.

    Example:
        >>> csv_row({"epoch": 1, "cs": 2.5, "kernel_norm": {"conv1": 0.5}, "es_frozen": [True]})
        {'epoch': 1, 'cs': 2.5, 'kernel_norm/conv1': 0.5}
    """
    row: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            row.update({f"{key}/{k}": v for k, v in value.items() if _is_scalar(v)})
        elif _is_scalar(value):
            row[key] = value
    return row


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    """``records`` as CSV: a header of every column in order of first appearance, then one row per record.

    A cell a record lacks is empty; floats keep every digit (``repr``).

    Example:
        >>> print(csv_text([{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.05, "val_acc": 0.5}]), end="")
        epoch,lr,val_acc
        1,0.1,
        2,0.05,0.5
    """
    rows = [csv_row(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class CsvLogger:
    """``--log csv``: ``metrics.csv``, rewritten atomically from the whole history after every epoch.

    A rewrite instead of an append keeps the file whole and exact whatever happens: a crash
    leaves the previous version, and :meth:`start` makes it the checkpoint's epochs again. The
    header grows when an epoch brings a new column.
    """

    per_layer = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[Mapping[str, Any]] = []

    def start(self, history: Sequence[Mapping[str, Any]]) -> None:
        self.records = list(history)
        if self.records:
            self._write()
        else:  # a fresh start: no row left from an abandoned earlier one
            self.path.unlink(missing_ok=True)

    def log_epoch(self, record: Mapping[str, Any], layers: Mapping[str, Mapping[str, float]] | None) -> None:
        self.records.append(record)
        self._write()

    def _write(self) -> None:
        text = csv_text(self.records)
        try:
            if self.path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(self.path, text)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# TensorBoard
# ----------------------------------------------------------------------------------------------


def _summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`ConfigError` saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            f"log='tensorboard' (--log tensorboard) needs the tensorboard package ({e}); "
            f"install it with `pip install convsim[tensorboard]`, or use --log csv"
        ) from e
    return SummaryWriter


@torch.no_grad()
def layer_redundancy(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per conv layer, what :func:`~convsim.training.evaluation.measure_redundancy` sums or averages over layers.

    Returns ``{measure: {layer: value}}`` (python floats): ``cs`` (all-pairs per-channel CS;
    summed over layers it is the record's ``cs``), ``kernel_cosine``, ``fm_similarity``,
    ``fm_effective_rank`` (uncentred) and ``fm_similarity_centered`` (each averaged over layers is
    the record's value), from :class:`convsim.measure.FeatureMapSimilarity` on the fixed batch
    ``x`` (N, C, H, W), the model in eval mode.

    Example:
        >>> from convsim.models import build
        >>> result = layer_redundancy(build("cnn1", input_size=20), torch.randn(4, 1, 20, 20))
        >>> sorted(result), len(result["cs"])  # cnn1: four conv layers
        (['cs', 'fm_effective_rank', 'fm_similarity', 'fm_similarity_centered', 'kernel_cosine'], 4)
    """
    result: dict[str, dict[str, float]] = {}
    for centered in (False, True):
        metric = FeatureMapSimilarity(model, centered=centered, sync_on_compute=False)  # rank 0 alone measures
        metric.update(x)
        for layer, values in metric.compute().items():
            if centered:
                result.setdefault("fm_similarity_centered", {})[layer] = values["fm_abs_cos"]
                continue
            for key, name in _LAYER_KEYS.items():
                result.setdefault(name, {})[layer] = values[key]
    return result


def tensorboard_scalars(
    record: Mapping[str, Any], layers: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float]:
    """The scalars of one epoch: tag -> value (every number of the record but ``epoch``, then ``measure/layer``).

    Example:
        >>> tensorboard_scalars({"epoch": 2, "cs": 3.0, "es_solver": "exact", "kernel_norm": {"conv1": 0.5}},
        ...                     {"cs": {"conv1": 1.0, "conv2": 2.0}})
        {'cs': 3.0, 'kernel_norm/conv1': 0.5, 'cs/conv1': 1.0, 'cs/conv2': 2.0}
    """
    scalars = {
        tag: float(v)
        for tag, v in csv_row(record).items()
        if tag != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for measure, values in (layers or {}).items():
        scalars.update({f"{measure}/{layer}": float(v) for layer, v in values.items()})
    return scalars


class TensorBoardLogger:
    """``--log tensorboard``: event files in ``log_dir``, the epoch as the global step.

    The writer is opened at the first logged epoch with ``purge_step`` = that epoch, so the events
    an earlier session wrote for it and later epochs (a crash after the log, before the checkpoint;
    a fallback to the previous checkpoint) are hidden: TensorBoard shows each epoch once.
    """

    per_layer = True

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = _summary_writer_class()
        self._writer: Any = None
        self._next_epoch = 1

    def start(self, history: Sequence[Mapping[str, Any]]) -> None:
        self._next_epoch = int(history[-1]["epoch"]) + 1 if history else 1

    def log_epoch(self, record: Mapping[str, Any], layers: Mapping[str, Mapping[str, float]] | None) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=self._next_epoch)
        epoch = int(record["epoch"])
        for tag, value in tensorboard_scalars(record, layers).items():
            self._writer.add_scalar(tag, value, global_step=epoch)
        self._writer.flush()  # a killed run keeps every epoch it logged

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
