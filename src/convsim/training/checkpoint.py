"""The run directory's state on disk: ``checkpoint.pt`` (save, load for resuming, restore) and the log files' reset.

``checkpoint.pt`` is written atomically after every epoch and loads with
``torch.load(..., weights_only=True)``. It holds (format 1): ``epoch``, ``status`` (one of
:data:`STATUSES`; a finished run's is one of :data:`FINAL_STATUSES`), ``config`` (``asdict``;
read it back with :func:`convsim.training.config.config_from_dict`, which maps renamed fields),
``model`` and ``optimizer`` state dicts,
``scheduler`` (the epoch: the lr schedule is stateless), ``rng`` (torch CPU/CUDA, numpy, python
and the shuffling generator), ``early_stop`` (the stopper's state or None), ``history`` (every
epoch's metrics record), ``initial`` (measurements before epoch 1) and ``wall_time``.

Resuming is :func:`load_checkpoint` (refuses a config that changed beyond
:data:`convsim.training.config.RESUMABLE_CHANGES`), then :func:`restore_state` and
:func:`rewrite_metrics`, so that ``metrics.jsonl`` never holds an epoch the checkpoint does not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from convsim._internal.files import atomic_write, atomic_write_text
from convsim._internal.layers import unwrap
from convsim.training.config import CONFIG_FIELDS, RESUMABLE_CHANGES, TrainConfig, config_from_dict
from convsim.training.early_stopping import EarlyStopping
from convsim.training.errors import ConfigError

STATUSES = ("running", "complete", "stopped early", "interrupted", "failed")
# The statuses of a run that has delivered its weights: the trainer stops after the epoch that sets one.
# A "complete" run can still be continued to a larger `epochs` (resume); see is_finished.
FINAL_STATUSES = ("complete", "stopped early")


def reset_run_files(out: Path) -> None:
    """Create ``out`` and remove the log files of an earlier, abandoned start (fresh runs only)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "init.jsonl"):
        (out / name).unlink(missing_ok=True)


def save_checkpoint(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    stopper: EarlyStopping | None,
    history: list[dict[str, Any]],
    initial: dict[str, Any],
    *,
    epoch: int,
    status: str,
    wall: float,
) -> None:
    """Write ``out/checkpoint.pt`` atomically (loadable with ``torch.load(..., weights_only=True)``)."""
    np_state = cast(tuple[Any, ...], np.random.get_state())  # the legacy tuple form (the default)
    state = {
        "format": 1,
        "epoch": epoch,
        "status": status,
        "config": asdict(config),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        # The lr schedule is a pure function of the epoch (lr_factor): its state is `epoch`.
        "scheduler": {"schedule": config.schedule, "epoch": epoch},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
            "shuffle": shuffle_gen.get_state(),
        },
        "early_stop": stopper.state_dict() if stopper is not None else None,
        "history": history,
        "initial": initial,
        "wall_time": wall,
    }
    atomic_write(out / "checkpoint.pt", lambda f: torch.save(state, f))


def load_checkpoint(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint in ``out`` to resume from, or None for a fresh run.

    Raises :class:`ConfigError` when ``out`` holds a run but ``config.resume`` is off, or when the
    stored config differs from ``config`` in a field outside ``RESUMABLE_CHANGES`` (all such
    fields are named).
    """
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    if not config.resume:
        raise ConfigError(
            f"{out} already holds a run ({path.name}); pass resume=True (--resume) to continue it "
            f"or choose another out directory"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # a field added after the run was stored counts as its default, which the run trained with
    stored, given = asdict(config_from_dict(ckpt["config"])), asdict(config)
    diff = {k: (stored[k], given[k]) for k in CONFIG_FIELDS if k not in RESUMABLE_CHANGES and stored[k] != given[k]}
    if diff:
        detail = "; ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(
            f"cannot resume {out}: the config differs from the stored run ({detail}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )
    return ckpt


def is_finished(ckpt: Mapping[str, Any], config: TrainConfig) -> bool:
    """A stopped-early run is final; a complete (or running) one is finished once it reached ``epochs``.

    Example:
        >>> is_finished({"status": "complete", "epoch": 2}, TrainConfig(epochs=3))
        False
    """
    return ckpt["status"] == "stopped early" or ckpt["epoch"] >= config.epochs


def restore_state(
    ckpt: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    stopper: EarlyStopping | None,
) -> None:
    """Load weights, optimizer, early-stopping state and every RNG state from a checkpoint."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if stopper is not None:
        stopper.load_state_dict(ckpt["early_stop"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    shuffle_gen.set_state(rng["shuffle"])


def rewrite_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``out/metrics.jsonl`` from the checkpoint's history, dropping lines written after it."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def stored_config(out: str | Path) -> TrainConfig | None:
    """The config stored in ``out/checkpoint.pt``, or None when ``out`` holds no checkpoint."""
    path = Path(out) / "checkpoint.pt"
    if not path.exists():
        return None
    return config_from_dict(torch.load(path, map_location="cpu", weights_only=True)["config"])
