"""The `convsim` command line: one subcommand per module, each module exposing
``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> (module, one-line help). Modules are imported only when their command runs,
# so `convsim verify` does not pay for matplotlib or the trainer.
COMMANDS = {
    "verify": ("convsim.cli.verify", "check the feature-map/kernel identity and the CS-vs-orthogonality toy"),
    "train": ("convsim.cli.train", "train one model (CS regulariser / initialisation / baselines)"),
    "reproduce": ("convsim.cli.reproduce", "run a suite of trainings and write report.md with figures"),
    "overlap": ("convsim.cli.overlap", "channel-wise NNK overlap analysis of trained runs"),
    "report": ("convsim.cli.report", "rebuild a suite's report from its committed run files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convsim", description="Measure and reduce feature-map redundancy in CNNs.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments come from the module; importing it here keeps --help complete.
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the requested subcommand's parser when possible (fast start-up).
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        parser = argparse.ArgumentParser(prog=f"convsim {argv[0]}", description=COMMANDS[argv[0]][1])
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from convsim import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2


def entry() -> None:
    """Process entry point of ``convsim`` and ``python -m convsim``: run :func:`main`, then exit.

    Under torchrun (``WORLD_SIZE > 1``) the process ends with ``os._exit`` once stdout and
    stderr are flushed, skipping interpreter shutdown. DistributedDataParallel keeps gloo's
    worker threads alive past ``destroy_process_group``, and a worker still releasing a tensor
    while the interpreter finalises aborts a run that succeeded (see
    :func:`convsim.training.distributed.teardown`). Nothing is lost: every file convsim writes is closed
    and renamed into place before :func:`main` returns.
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
