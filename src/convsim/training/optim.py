r"""The optimisation of a run: the optimizer, the per-epoch lr schedule and the CS initialisation.

The schedule is a pure function of the epoch (:func:`lr_factor`), so a checkpoint needs no
scheduler state beyond the epoch. The CS initialisation (spec §9.2) moves the conv weights by
``init_iters`` steps minimising :math:`L_{CS}` alone before the first epoch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsim._internal.files import atomic_write_text
from convsim.training.config import SCHEDULES, TrainConfig
from convsim.training.distributed import DistEnv


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (``momentum``) or Adam (betas ``(adam_beta1, 0.999)``) over every parameter, at ``lr`` with ``weight_decay``.

    Example:
        >>> type(make_optimizer(TrainConfig(optimizer="adam"), nn.Linear(2, 2))).__name__
        'Adam'
    """
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.adam_beta1, 0.999), weight_decay=config.weight_decay)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    r"""Learning-rate multiplier for ``epoch`` (1-based) of ``epochs``: a pure function of the epoch.

    * ``none``: 1.
    * ``cosine``: :math:`\tfrac12\,(1 + \cos(\pi\,(e-1)/E))`, from 1 at the first epoch towards 0.
    * ``step``: ×0.1 from the epoch past 50% of training and ×0.01 past 75% (the released
      CIFAR schedule's milestones 100 and 150 of 200, scaled to ``epochs``).

    Being stateless, the schedule needs no state in the checkpoint beyond the epoch.

    Example:
        >>> [lr_factor("step", e, 4) for e in (1, 2, 3, 4)]
        [1.0, 1.0, 0.1, 0.01]
    """
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "step":
        done = (epoch - 1) / epochs
        return 1.0 if done < 0.5 else (0.1 if done < 0.75 else 0.01)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> float:
    """Set every param group's lr to ``config.lr · lr_factor(schedule, epoch, epochs)`` and return it.

    Example:
        >>> config = TrainConfig(lr=0.1, epochs=4, schedule="step")
        >>> set_learning_rate(make_optimizer(config, nn.Linear(2, 2)), config, epoch=3)
        0.010000000000000002
    """
    lr = config.lr * lr_factor(config.schedule, epoch, config.epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def cs_options(config: TrainConfig) -> dict[str, Any]:
    """The CS options of ``config`` (``pairs``, ``channels``, ``normalize``, ``stride_aware``) as keyword arguments."""
    return dict(
        pairs=config.cs_pairs,
        channels=config.cs_channels,
        normalize=config.cs_normalize,
        stride_aware=config.cs_stride_aware,
    )


def cs_initialization(
    config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, out: Path, env: DistEnv
) -> dict[str, float] | None:
    """Run ``init_iters`` CS-minimisation steps on the conv weights and write ``init.jsonl``.

    ``init_optimizer="adam"``: a fresh Adam (lr ``init_lr``) that is thrown away afterwards (the
    paper's procedure, spec §9.2). ``"train"``: the training optimizer itself at lr ``init_lr``,
    so its momentum / moment estimates carry the CS direction into training (the coupling the
    paper names as future work). Returns ``{"first", "last"}`` CS values, or None when off.
    """
    if config.init_iters == 0:
        return None
    from convsim.similarity import ConvSimilarity, cs_initialize

    opts = cs_options(config)
    if config.init_optimizer == "train":
        for group in optimizer.param_groups:
            group["lr"] = config.init_lr
        history = cs_initialize(model, config.init_iters, config.init_lr, optimizer=optimizer, **opts)
    else:
        history = cs_initialize(
            model, config.init_iters, config.init_lr, progress=env.is_main and sys.stderr.isatty(), **opts
        )
    with torch.no_grad():
        history.append(float(ConvSimilarity(model, beta=1.0, **opts)()))
    if env.is_main:
        atomic_write_text(
            out / "init.jsonl", "".join(json.dumps({"step": s, "cs": v}) + "\n" for s, v in enumerate(history))
        )
    return {"first": history[0], "last": history[-1]}
