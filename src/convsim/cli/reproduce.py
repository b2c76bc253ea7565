"""``convsim reproduce``: train the missing runs of a suite and write its report."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from convsim._internal.errors import UserError
from convsim.cli.arguments import COUNT
from convsim.reporting.suites import SUITES, reproduce, run_status
from convsim.training.config import LOGS, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick", help="which suite (default quick)")
    parser.add_argument("--out", required=True, help="output folder: runs/, report.md, figures/, results.json")
    parser.add_argument("--data-dir", default=None, help="folder searched first for dataset files")
    parser.add_argument("--download", action="store_true", help="download missing dataset files (checksum-verified)")
    parser.add_argument("--device", default=None, help="torch device for training (default: the trainer's)")
    parser.add_argument("--jobs", type=COUNT, default=1, help="runs trained in parallel processes (default 1)")
    parser.add_argument("--threads", type=COUNT, default=None, help="torch threads per run")
    parser.add_argument(
        "--log",
        choices=LOGS,
        default=None,
        help=f"per-epoch log of every run trained, as `convsim train --log` (default: {TrainConfig.log})",
    )
    parser.add_argument("--only", default=None, metavar="REGEX", help="train only runs whose name matches")
    parser.add_argument("--list", action="store_true", help="list the suite's runs and their status, then exit")
    parser.add_argument("--no-report", action="store_true", help="train only; do not write the report")


def run(args: argparse.Namespace) -> int:
    try:
        pattern = re.compile(args.only) if args.only else None
    except re.error as e:
        raise UserError(f"--only {args.only!r} is not a regular expression ({e}); e.g. --only '^cnn1-w1-'") from e
    if args.list:
        runs_dir = Path(args.out) / "runs"
        for s in SUITES[args.suite]:
            if pattern is None or pattern.search(s.name):
                print(f"{s.name:48s} {run_status(runs_dir / s.name):12s} {','.join(s.studies)}")
        return 0
    res = reproduce(
        args.suite,
        args.out,
        data_dir=args.data_dir,
        device=args.device,
        jobs=args.jobs,
        only=args.only,
        threads=args.threads,
        download=args.download,
        train_log=args.log,
        report=not args.no_report,
    )
    if res["failed"]:
        print(f"{len(res['failed'])} runs failed: {', '.join(sorted(res['failed']))}", file=sys.stderr)
        return 1
    return 0
