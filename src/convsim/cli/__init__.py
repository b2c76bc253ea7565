"""The `convsim` command line: one subcommand per module, each module exposing
``add_arguments(parser)`` and ``run(args) -> int``.

Errors: :func:`main` is the one place that reports them. A user error (any
:class:`~convsim._internal.errors.UserError`: a bad flag value, a missing dataset, an unusable run
directory or checkpoint, an ``--out`` that cannot be written, a full disk) prints
``convsim <command>: error: <what went wrong and how to fix it>`` as one line on stderr (a missing
dataset's ways to get it follow on the next lines) and exits with status 2, without a traceback;
``--debug`` or ``CONVSIM_DEBUG=1`` prints the traceback first. Any other exception is a bug and
ends with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from convsim._internal.errors import UserError

DEBUG_ENV = "CONVSIM_DEBUG"  # CONVSIM_DEBUG=1: tracebacks for user errors too, as --debug

# subcommand -> (module, one-line help). Modules are imported only when their command runs,
# so `convsim verify` does not pay for matplotlib or the trainer.
COMMANDS = {
    "verify": ("convsim.cli.verify", "check the feature-map/kernel identity and the CS-vs-orthogonality toy"),
    "train": ("convsim.cli.train", "train one model (CS regulariser / initialisation / baselines)"),
    "reproduce": ("convsim.cli.reproduce", "run a suite of trainings and write report.md with figures"),
    "overlap": ("convsim.cli.overlap", "channel-wise NNK overlap analysis of trained runs"),
    "report": ("convsim.cli.report", "rebuild a suite's report from its committed run files"),
    "analyze": ("convsim.cli.analyze", "channel redundancy of any conv net on your data: tables and figures"),
}


class Parser(argparse.ArgumentParser):
    """argparse's parser, with its usage errors on one line like every other user error.

    Under torchrun every rank parses the same command line, so a usage error is the same on all of
    them: only rank 0 prints it (the others exit with the same status, silently).
    """

    def error(self, message: str) -> NoReturn:
        if os.environ.get("RANK", "0") != "0":
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error too (or set {DEBUG_ENV}=1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="convsim", description="Measure and reduce feature-map redundancy in CNNs.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        # Arguments come from the module; importing it here keeps --help complete.
        importlib.import_module(module_name).add_arguments(p)
        _add_debug(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if argv[:1] == ["--debug"]:  # `convsim --debug COMMAND ...`
        debug, argv = True, argv[1:]
    # Build only the requested subcommand's parser when possible (fast start-up).
    if argv and argv[0] in COMMANDS:
        command = argv[0]
        module = importlib.import_module(COMMANDS[command][0])
        command_parser = Parser(prog=f"convsim {command}", description=COMMANDS[command][1])
        module.add_arguments(command_parser)
        _add_debug(command_parser)
        args = command_parser.parse_args(argv[1:])
        try:
            check_out(args)
            return int(module.run(args) or 0)
        except UserError as e:
            if debug or args.debug:
                traceback.print_exc()
            report_error(command, e)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from convsim import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2


def report_error(command: str, error: BaseException) -> None:
    """``convsim COMMAND: error: MESSAGE`` on stderr: the message's first line, then any further lines as they are."""
    first, *rest = str(error).splitlines() or [type(error).__name__]
    print("\n".join([f"convsim {command}: error: {first}", *rest]), file=sys.stderr, flush=True)


def check_out(args: argparse.Namespace) -> None:
    """Raise :class:`UserError` when ``args.out`` (a command's output folder) cannot be created or written.

    Checked before the command runs, without creating anything: the folder, or its nearest
    existing parent, must be a folder this process may write into.
    """
    out = getattr(args, "out", None)
    if not isinstance(out, str):
        return
    path = Path(out).absolute()
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as e:  # a parent we may not even look into
        raise UserError(f"--out {out}: cannot be reached ({e.strerror or e}); choose a folder you can write to") from e
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out}: {existing} is not writable (no permission, or a read-only file system); "
            f"choose a folder you can write to"
        )


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
