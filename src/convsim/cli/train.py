"""``convsim train``: train one model; every flag is a field of :class:`convsim.training.config.TrainConfig`."""

from __future__ import annotations

import argparse
import sys

from convsim.training import distributed
from convsim.training.checkpoint import stored_config
from convsim.training.config import TrainConfig, add_arguments, config_from_args
from convsim.training.loop import train
from convsim.training.summary import headline

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """``convsim train``: build the config (with ``--resume``, the stored run's config plus the flags given), train.

    Returns 0 on success, 130 when interrupted (Ctrl-C; the last checkpoint is intact). User
    errors (an invalid configuration, missing data, unusable checkpoints, a full disk) are raised
    for :func:`convsim.cli.main` to report (one line, status 2).
    """
    out = getattr(args, "out", TrainConfig.out)
    try:
        base = stored_config(out) if getattr(args, "resume", False) else None
        config = config_from_args(args, base)
        summary = train(config)
    except KeyboardInterrupt:
        if distributed.detect().is_main:
            print(f"\nconvsim train: interrupted; continue with --resume --out {out}", file=sys.stderr)
        return 130
    if distributed.detect().is_main and config.verbose:
        print(
            f"{summary['status']}: {headline(summary)} after {summary['epochs_run']} epochs "
            f"({summary['wall_time']:.1f}s) -> {config.out}"
        )
    return 0
