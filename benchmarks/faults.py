"""Fault injection, repeated: how many runs survive SIGKILL, corrupt checkpoints, failed writes and torn
lines, and what a user sees for bad inputs. Writes RELIABILITY.md.

    python benchmarks/faults.py                  # --repeat 5: about 7 minutes on a busy 2-core CPU
    python benchmarks/faults.py --repeat 1 --out /tmp/RELIABILITY.md   # a quick check

The scenarios are those of tests/test_faults.py (tests/faultlib.py), each run many times with
seeded random choices (kill moments, kill steps, bytes flipped, where a line is torn). A run counts
as *recovered* when, after the fault and as many resumes as it takes, its weights are bitwise and
its ``metrics.jsonl`` and ``init.jsonl`` (every field but ``seconds``) exactly those of the same run
trained without a fault; anything else counts as *lost*, with the reason. The script exits 1 when
a run is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the scenarios live beside the tests that use them

import torch  # noqa: E402

import faultlib  # noqa: E402
from convsim import __version__, cli  # noqa: E402
from convsim._internal.files import atomic_write_text  # noqa: E402
from convsim.training.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT  # noqa: E402
from convsim.training.loop import train  # noqa: E402
from convsim.training.summary import machine  # noqa: E402

# Four runs of the smoke suite: plain, CS initialisation, a penalty and channel-wise early stopping.
REPRODUCE_ONLY = "^cnn1-w1-(baseline|cs-init-I20|so|baseline-es-cwnnk)-s0$"


@dataclass
class Row:
    """One line of the table: a fault, how often it was injected, and what became of the runs."""

    fault: str
    injected: int = 0
    runs: int = 0
    recovered: int = 0
    lost: list[str] = field(default_factory=list)
    note: str = ""

    def attempt(self, fn: Callable[[], int | bool | None]) -> None:
        """One run under this fault: ``fn`` returns the faults it injected (or a bool), raises when not recovered."""
        self.runs += 1
        try:
            got = fn()
        except Exception as e:  # a lost run, whatever the reason (AssertionError, a hang's TimeoutError), counts
            self.lost.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            return
        self.recovered += 1
        self.injected += int(got) if got is not None else 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The scenarios, repeated
# ----------------------------------------------------------------------------------------------


def sigkill_rows(work: Path, finished: Path, repeat: int, rng: random.Random) -> list[Row]:
    stages = faultlib.write_stages(work / "stages")
    sweep = Row(
        f"SIGKILL at each of the {len(stages)} atomic-write stages of a run (temporary file written but not "
        "renamed; old checkpoint moved aside, new one not yet in place; renamed), then resume"
    )
    for n in range(1, len(stages) + 1):
        sweep.attempt(lambda n=n: faultlib.kill_at_write(finished, work / f"stage{n}", n))
    window = faultlib.reference_in_child(work / "timed")
    moments = Row(
        f"SIGKILL at random moments (up to 3 per run, uniform over the {window:.1f} s an uninterrupted run "
        "takes in its process), resuming after each"
    )
    for i in range(2 * repeat):
        moments.attempt(lambda i=i: faultlib.random_kills(finished, work / f"random{i}", rng, window))
    steps = Row("SIGKILL at a random training step (mid-epoch), then resume")
    total = faultlib.CONFIG["epochs"] * faultlib.STEPS_PER_EPOCH

    def step_kill(i: int) -> bool:
        out = work / f"step{i}"
        cfg = faultlib.config(out)
        assert faultlib.train_in_child(cfg, plan=("step", rng.randint(1, total))) == faultlib.KILLED
        assert faultlib.train_in_child(cfg) == 0
        faultlib.assert_recovered(finished, out)
        return True

    for i in range(2 * repeat):
        steps.attempt(lambda i=i: step_kill(i))
    return [sweep, moments, steps]


def checkpoint_rows(work: Path, finished: Path, partial: Path, repeat: int, rng: random.Random) -> list[Row]:
    rows = []
    for how, corrupt in faultlib.CORRUPTIONS.items():
        row = Row(f"latest checkpoint {how} (of a run 2 epochs into 3), then resume: falls back to the previous one")
        for i in range(repeat):
            out = work / f"corrupt-{how.replace(' ', '-')}-{i}"
            if how == "one byte flipped":  # a different byte each time
                faultlib.CORRUPTIONS[how] = lambda p: faultlib._flip_byte(p, rng)
            try:
                row.attempt(lambda out=out, how=how: bool(faultlib.corrupt_latest(finished, partial, out, how)))
            finally:
                faultlib.CORRUPTIONS[how] = corrupt
        if how == "one byte flipped":
            row.note = f"{row.injected} of {row.runs} flips were detected" + (
                "; the others changed nothing that `torch.load` reads (those runs also ended exact)"
                if row.injected < row.runs
                else ""
            )
        rows.append(row)
    both = Row(
        "both checkpoints unusable (each corruption above but 'missing'), then resume: refused with an error naming "
        "both files (nothing to recover from, by design; not counted as lost)"
    )
    for how in faultlib.CORRUPTIONS:
        if how != "missing":
            both.attempt(lambda how=how: bool(faultlib.corrupt_both(partial, work / f"both-{how.replace(' ', '-')}")))
    both.recovered = 0  # refused, not recovered
    return rows + [both]


def write_rows(work: Path, finished: Path, repeat: int) -> list[Row]:
    rows = []
    for code in (errno.ENOSPC, errno.EIO):
        for stage in ("write", "fsync"):
            where = "while writing its data" if stage == "write" else "from its fsync"
            row = Row(
                f"{errno.errorcode[code]} ({os.strerror(code)}) {where}, at the epoch-2 checkpoint: the error names "
                "the file and the reason, the epoch-1 checkpoint is intact; then resume"
            )
            for i in range(repeat):
                out = work / f"write-{errno.errorcode[code]}-{stage}-{i}"
                row.attempt(
                    lambda out=out, code=code, stage=stage: bool(faultlib.write_failure(finished, out, code, stage))
                )
            rows.append(row)
    return rows


def torn_rows(work: Path, finished: Path, partial: Path, repeat: int, rng: random.Random) -> list[Row]:
    rows = []
    for continue_training, what in ((True, "a run 2 epochs into 3"), (False, "a finished run")):
        row = Row(f"last line of metrics.jsonl torn at a random byte ({what}), then resume: every epoch once")
        for i in range(repeat):
            out = work / f"torn-{continue_training}-{i}"
            row.attempt(
                lambda out=out, c=continue_training: faultlib.torn_metrics(
                    finished, partial, out, rng, continue_training=c
                )
            )
        rows.append(row)
    return rows


def reproduce_rows(work: Path, repeat: int, rng: random.Random) -> list[Row]:
    reference = work / "reproduce-reference"
    t0 = time.monotonic()
    faultlib.reproduce_reference(reference, REPRODUCE_ONLY)
    seconds = time.monotonic() - t0
    row = Row(
        f"`convsim reproduce --suite smoke --only '{REPRODUCE_ONLY}'` (4 runs) killed during its second run, or at a "
        f"random moment of its {seconds:.0f} s, then run again: complete runs not retrained, every run complete "
        "once, the same report"
    )
    row.attempt(lambda: faultlib.reproduce_killed(reference, work / "reproduce-mid", only=REPRODUCE_ONLY)[0])
    for i in range(repeat - 1):
        after = rng.uniform(0.5, seconds)
        out = work / f"reproduce-{i}"
        row.attempt(
            lambda out=out, after=after: faultlib.reproduce_killed(
                reference, out, kill_after=after, only=REPRODUCE_ONLY
            )[0]
        )
    return [row]


def ddp_rows(work: Path, repeat: int, rng: random.Random) -> list[Row]:
    reference = work / "ddp-reference"
    faultlib.ddp_reference(reference)
    times: list[float] = []
    row = Row(
        "one rank of a 2-process torchrun job (gloo, CPU) SIGKILLed at a random step of epoch 2: the job ends "
        "non-zero without hanging, then `--resume`"
    )

    def once(i: int) -> bool:
        rank, step = rng.randint(0, 1), rng.randint(faultlib.STEPS_PER_EPOCH + 1, 2 * faultlib.STEPS_PER_EPOCH)
        times.append(faultlib.ddp_rank_killed(reference, work / f"ddp-{i}", rank=rank, step=step, bound=180.0))
        return True

    for i in range(repeat):
        row.attempt(lambda i=i: once(i))
    if times:
        row.note = f"the killed jobs ended after {min(times):.0f}-{max(times):.0f} s (bound 180 s)"
    return [row]


# ----------------------------------------------------------------------------------------------
# Bad inputs: the first line of what `convsim` prints
# ----------------------------------------------------------------------------------------------


def bad_inputs(work: Path, partial: Path) -> list[tuple[str, str, int, str]]:
    """(input, command, exit status, stderr) for each bad input, run through ``convsim.cli.main``."""
    (work / "a-file").write_text("x")
    (work / "empty-folder").mkdir()
    both = work / "bad-both"
    shutil.copytree(partial, both)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (both / name).write_bytes(b"")
    edited = work / "bad-edited"
    shutil.copytree(partial, edited)
    faultlib.CORRUPTIONS["weights edited, checksum stale"](edited / CHECKPOINT)
    tiny = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--epochs", "1", "--no-verbose"]
    cases = [
        ("missing run directory", ["overlap", str(work / "nowhere"), "--out", str(work / "ov")]),
        ("folder that is not a run", ["overlap", str(work / "empty-folder"), "--out", str(work / "ov")]),
        ("missing suite folder", ["report", str(work / "nowhere")]),
        ("both checkpoints unusable", ["train", "--out", str(both), "--resume"]),
        ("checkpoint fails its checksum", ["overlap", str(edited), "--out", str(work / "ov"), "--no-figures"]),
        ("missing dataset", ["train", "--dataset", "cifar10", "--out", str(work / "c10"), "--data-dir", str(work)]),
        ("run that cannot be resumed", ["train", "--out", str(partial), "--resume", "--lr", "0.5"]),
        ("run that exists, without --resume", ["train", *tiny, "--out", str(partial)]),
        ("--out below a file", ["train", *tiny, "--out", str(work / "a-file" / "run")]),
        ("--out below a file", ["reproduce", "--suite", "smoke", "--out", str(work / "a-file" / "x")]),
        ("bad value", ["train", "--epochs", "0"]),
        ("bad choice", ["train", "--optimizer", "rmsprop"]),
        ("bad regular expression", ["reproduce", "--suite", "smoke", "--out", str(work / "r"), "--only", "("]),
    ]
    out = []
    env = {"HOME": str(work / "home"), "CONVSIM_DATA": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for what, argv in cases:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli.main(argv)
                except SystemExit as e:
                    code = int(e.code or 0)
            out.append((what, "convsim " + " ".join(_short(a, work) for a in argv), code, err.getvalue()))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def _short(arg: str, work: Path) -> str:
    return arg.replace(str(work), "/tmp/x")


# ----------------------------------------------------------------------------------------------
# RELIABILITY.md
# ----------------------------------------------------------------------------------------------


def render(rows: list[Row], inputs: list[tuple[str, str, int, str]], args: argparse.Namespace, seconds: float) -> str:
    counted = [r for r in rows if not r.fault.startswith("both checkpoints")]
    host = machine()
    lines = [
        "# Reliability under faults",
        "",
        f"Written by `python benchmarks/faults.py --repeat {args.repeat} --seed {args.seed}` in {seconds / 60:.1f} min "
        f"on {host['cpu']} ({host['logical_cpus']} logical CPUs, shared with other jobs); convsim {__version__}, "
        f"torch {torch.__version__}, Python {platform.python_version()}. Nothing here is typed by hand.",
        "",
        "Every fault hits the same small run (cnn1 on 256 synthetic images: a 3-step CS initialisation, then "
        "3 epochs of 8 steps with the CS regulariser; tests/faultlib.py) unless the row says otherwise. A run "
        "counts as **recovered** when, after the fault and as many `--resume`s as it takes, its weights are "
        "bitwise equal, and its `metrics.jsonl` and `init.jsonl` (every field but `seconds`) exactly equal, to "
        "those of the same run trained without a fault, and no temporary file is left; anything else counts as "
        "**lost**. The same scenarios, a few cases each, are tests in `tests/test_faults.py`.",
        "",
        "| fault | runs | faults injected | recovered | lost |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        fault = _cell(r.fault + (f" — {r.note}" if r.note else ""))
        recovered = "—" if r.fault.startswith("both checkpoints") else str(r.recovered)
        lost = "—" if r.fault.startswith("both checkpoints") else str(len(r.lost))
        lines.append(f"| {fault} | {r.runs} | {r.injected} | {recovered} | {lost} |")
    total_runs = sum(r.runs for r in counted)
    lines.append(
        f"| **total** | **{total_runs}** | **{sum(r.injected for r in counted)}** | "
        f"**{sum(r.recovered for r in counted)}** | **{sum(len(r.lost) for r in counted)}** |"
    )
    lost = [(r.fault, reason) for r in counted for reason in r.lost]
    if lost:
        lines += ["", "## Lost runs", ""] + [f"- {fault}: {reason}" for fault, reason in lost]
    refused = [r for r in rows if r.fault.startswith("both checkpoints")]
    if refused and refused[0].lost:
        lines += ["", "Double faults not refused as they should be:", ""] + [f"- {x}" for x in refused[0].lost]
    lines += [
        "",
        "## Bad inputs",
        "",
        "What `convsim` prints for each (through `convsim.cli.main`, as a user would type it; paths shortened). "
        "Every user error is one line on stderr, `convsim <command>: error: <what went wrong and how to fix it>`, "
        "with exit status 2 and no traceback (`--debug` or `CONVSIM_DEBUG=1` adds it); a missing dataset lists the "
        "ways to get it on the lines after the first.",
        "",
        "| input | command | exit | stderr lines | first line of stderr |",
        "|---|---|---:|---:|---|",
    ]
    for what, command, code, err in inputs:
        first = err.splitlines()[0] if err else ""
        first = _short(first, Path(args.work)) if args.work else first
        lines.append(f"| {what} | `{_cell(command)}` | {code} | {len(err.splitlines())} | {_cell(first)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each randomised scenario (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices")
    parser.add_argument("--out", default=str(ROOT / "RELIABILITY.md"), help="where to write the table")
    parser.add_argument("--skip-slow", action="store_true", help="skip the reproduce and torchrun scenarios")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="convsim-faults-") as tmp:
        work = Path(tmp)
        args.work = str(work)
        finished, partial = work / "finished", work / "partial"
        train(faultlib.config(finished))
        train(faultlib.config(partial, epochs=2))
        rows: list[Row] = []
        for name, make in [
            ("SIGKILL", lambda: sigkill_rows(work, finished, args.repeat, rng)),
            ("checkpoints", lambda: checkpoint_rows(work, finished, partial, args.repeat, rng)),
            ("failed writes", lambda: write_rows(work, finished, max(1, args.repeat // 2))),
            ("torn lines", lambda: torn_rows(work, finished, partial, args.repeat, rng)),
            *(
                []
                if args.skip_slow
                else [
                    ("reproduce", lambda: reproduce_rows(work, max(2, args.repeat // 2 + 1), rng)),
                    ("torchrun", lambda: ddp_rows(work, max(1, args.repeat // 2), rng)),
                ]
            ),
        ]:
            t1 = time.monotonic()
            new = make()
            rows += new
            lost = sum(len(r.lost) for r in new)
            log(f"{name}: {sum(r.runs for r in new)} runs, {lost} lost ({time.monotonic() - t1:.0f} s)")
        inputs = bad_inputs(work, partial)
        text = render(rows, inputs, args, time.monotonic() - t0)
    atomic_write_text(args.out, text)
    log(f"wrote {args.out} ({(time.monotonic() - t0) / 60:.1f} min)")
    lost = sum(len(r.lost) for r in rows if not r.fault.startswith("both checkpoints"))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
