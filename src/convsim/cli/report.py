"""``convsim report DIR [--out DIR]``: rebuild a suite's report from its committed run files alone.

Reads ``DIR/suite.json`` (the suite's name) and ``DIR/runs/<name>/{spec.json, summary.json,
metrics.jsonl, init.jsonl, cwnnk.json}``; writes ``report.md``, ``results.json``, ``summary.csv`` and
the figures into ``--out`` (default ``DIR``). No training and no checkpoints are needed: the
channel-wise NNK overlap section comes from ``DIR/overlap/cache.json`` when it matches the runs,
else from each run's stored record (``cwnnk.json``, written by ``reproduce`` after the run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convsim._internal.errors import UserError
from convsim.reporting.runs import read_json
from convsim.reporting.suites import SUITES, report_suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a suite folder written by convsim reproduce (suite.json, runs/)")
    parser.add_argument("--out", default=None, help="output folder (default: DIR)")


def run(args: argparse.Namespace) -> int:
    source = Path(args.dir)
    if not (source / "runs").is_dir():
        raise UserError(f"{source} has no runs/ folder; expected a folder written by `convsim reproduce --out DIR`")
    stored = read_json(source / "suite.json")
    found = stored.get("suite") if isinstance(stored, dict) else None  # suite.json may hold any JSON value
    if not isinstance(found, str) or found not in SUITES:
        raise UserError(
            f"{source / 'suite.json'} is missing or names no known suite (found {found!r}; "
            f"known: {', '.join(sorted(SUITES))})"
        )
    out = Path(args.out) if args.out else source
    res = report_suite(out, found, source=source)
    for c in res["claims"]:
        print(f"({c['id']}) {c['verdict']}: {c['claim']}")
    written = [out / name for name in ("report.md", "results.json", "summary.csv") if (out / name).exists()]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
