"""Fault injection for convsim runs, shared by tests/test_faults.py (a few cases each, in `make test`) and
benchmarks/faults.py (many repetitions, written to RELIABILITY.md).

The faults: SIGKILL of a training process at random moments or at a chosen step of an atomic write
(through the test-only hook ``convsim._internal.files._test_hook``), a corrupt or missing latest
checkpoint, an ``OSError`` (ENOSPC, EIO) from a checkpoint write, a torn last line of
``metrics.jsonl``, ``convsim reproduce`` killed between runs, and one rank of a two-process
``torchrun`` job killed mid-epoch. Each scenario returns what it did and raises ``AssertionError``
when the run was not recovered exactly: weights and metrics (all but ``seconds``) bit-identical
to an uninterrupted run.

Killed processes come from a forkserver that has imported torch and the trainer once, so a kill
and a resume cost the training time, not the interpreter's start-up (seconds on a busy machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from convsim import cli
from convsim._internal import files
from convsim.training import loop
from convsim.training.checkpoint import CHECKPOINT, FINAL_STATUSES, PREVIOUS_CHECKPOINT, verify_checkpoint
from convsim.training.config import TrainConfig, to_argv
from convsim.training.errors import CheckpointError, CheckpointWriteError
from convsim.training.loop import train
from test_train import TINY_RUN

# A tiny run: 3 epochs of 8 steps after a 3-step CS initialisation, with the CS regulariser.
CONFIG = {**TINY_RUN, "epochs": 3, "init_iters": 3, "beta": 1e-3}
STEPS_PER_EPOCH = 8  # 256 images in batches of 32
KILLED = -signal.SIGKILL  # multiprocessing's exit code of a process killed by SIGKILL


def config(out: str | os.PathLike[str], **kw: Any) -> TrainConfig:
    return TrainConfig(**{**CONFIG, **kw, "out": str(out)})


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------

_context: Any = None


def context() -> Any:
    """The forkserver context; its server imports torch, the trainer and this module once."""
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(["torch._dynamo", "convsim.training.loop", "convsim.cli", __name__])
    return _context


def _install_kill(plan: tuple[str, int] | None) -> None:
    """In a child: SIGKILL this process at the n-th atomic-write stage (``("write", n)``) or step (``("step", n)``)."""
    if plan is None:
        return
    kind, n = plan
    seen = [0]

    def tick(*_: Any) -> None:
        seen[0] += 1
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if kind == "write":
        files._test_hook = tick
    elif kind == "step":
        step = loop.train_step

        def counted(*args: Any, **kw: Any) -> torch.Tensor:
            tick()
            return step(*args, **kw)

        loop.train_step = counted  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown kill plan {plan!r}")


def _noop() -> None:
    pass


def _train_child(fields: dict[str, Any], plan: tuple[str, int] | None) -> None:
    _install_kill(plan)
    train(TrainConfig(**fields))


def _cli_child(argv: list[str], plan: tuple[str, int] | None) -> None:
    _install_kill(plan)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        code = cli.main(argv)
    sys.exit(code)


def run_child(
    target: Callable[..., None],
    args: tuple[Any, ...],
    *,
    kill_after: float | None = None,
    kill_when: Callable[[], bool] | None = None,
    timeout: float = 300.0,
) -> int:
    """Run ``target(*args)`` in a child process; SIGKILL it after ``kill_after`` seconds or once ``kill_when()``.

    Returns the exit code (``KILLED`` when killed). Raises ``TimeoutError`` (after killing it) when
    the child is still running after ``timeout`` seconds: a hang.
    """
    p = context().Process(target=target, args=args)
    start = time.monotonic()
    p.start()
    if kill_after is not None:
        p.join(kill_after)
    elif kill_when is not None:
        while p.is_alive() and not kill_when() and time.monotonic() - start < timeout:
            time.sleep(0.02)
    if (kill_after is not None or kill_when is not None) and p.is_alive() and p.pid is not None:
        os.kill(p.pid, signal.SIGKILL)
    p.join(max(0.0, timeout - (time.monotonic() - start)))
    if p.is_alive():
        p.kill()
        p.join()
        raise TimeoutError(f"{target.__name__}{args!r} still running after {timeout:.0f} s")
    assert p.exitcode is not None
    return p.exitcode


def train_in_child(cfg: TrainConfig, *, plan: tuple[str, int] | None = None, kill_after: float | None = None) -> int:
    """Train ``cfg`` (``resume=True``: a fresh run or the continuation of a killed one) in a child process."""
    fields = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__} | {"resume": True}
    return run_child(_train_child, (fields, plan), kill_after=kill_after)


# ----------------------------------------------------------------------------------------------
# Comparing a recovered run with an uninterrupted one
# ----------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def differences(reference: Path, run: Path) -> list[str]:
    """What differs between two run directories: weights (bitwise), metrics and CS-init lines (all but
    ``seconds``, parsed strictly: a torn line is a difference), status and the checkpoint's epoch;
    also leftover temporary files. Empty when ``run`` is an exact recovery of ``reference``."""
    out = []
    a, b = (torch.load(d / CHECKPOINT, map_location="cpu", weights_only=True) for d in (reference, run))
    if a["model"].keys() != b["model"].keys() or not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]):
        out.append("weights differ")
    if (a["epoch"], a["status"]) != (b["epoch"], b["status"]):
        out.append(f"checkpoint epoch/status {(b['epoch'], b['status'])} != {(a['epoch'], a['status'])}")
    for name in ("metrics.jsonl", "init.jsonl"):
        try:
            got = [{k: v for k, v in r.items() if k != "seconds"} for r in _jsonl(run / name)]
        except json.JSONDecodeError as e:
            out.append(f"{name} has a torn line ({e})")
            continue
        want = [{k: v for k, v in r.items() if k != "seconds"} for r in _jsonl(reference / name)]
        if got != want:
            out.append(f"{name}: epochs {[r.get('epoch', r.get('step')) for r in got]} differ from the reference")
    summary = json.loads((run / "summary.json").read_text())
    if summary["status"] != a["status"]:
        out.append(f"summary status {summary['status']!r}")
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if leftovers:
        out.append(f"temporary files left: {leftovers}")
    return out


def assert_recovered(reference: Path, run: Path) -> None:
    diff = differences(reference, run)
    assert not diff, f"{run} is not an exact recovery of {reference}: " + "; ".join(diff)


# ----------------------------------------------------------------------------------------------
# Scenarios: SIGKILL
# ----------------------------------------------------------------------------------------------


def reference_in_child(out: Path) -> float:
    """Train :data:`CONFIG` into ``out`` uninterrupted, in a child process; returns its seconds (a kill window).

    The forkserver is started first, so its start-up is not counted.
    """
    assert run_child(_noop, ()) == 0
    t0 = time.monotonic()
    assert train_in_child(config(out)) == 0
    return time.monotonic() - t0


def random_kills(reference: Path, out: Path, rng: random.Random, window: float, kills: int = 3) -> int:
    """SIGKILL the training of ``out`` at up to ``kills`` random moments (uniform in ``[0, window]`` s
    after its process starts), resuming after each, then let it finish; returns the kills that hit a
    running process. Raises ``AssertionError`` unless the result equals ``reference`` exactly."""
    cfg = config(out)
    hits = 0
    for _ in range(kills):
        code = train_in_child(cfg, kill_after=rng.uniform(0.0, window))
        if code == 0:
            break  # finished before the kill
        assert code == KILLED, f"exit code {code}"
        hits += 1
    assert train_in_child(cfg) == 0
    assert_recovered(reference, out)
    return hits


def write_stages(out: Path) -> list[tuple[str, str]]:
    """The atomic-write stages (the hook's calls: stage, file name) of an uninterrupted run of :data:`CONFIG`."""
    seen: list[tuple[str, str]] = []
    old = files._test_hook
    files._test_hook = lambda stage, path: seen.append((stage, path.name))
    try:
        train(config(out))
    finally:
        files._test_hook = old
    return seen


def kill_at_write(reference: Path, out: Path, n: int) -> bool:
    """SIGKILL the run at the ``n``-th atomic-write stage (e.g. between a checkpoint's temporary file and
    its rename), then resume to the end; returns whether the kill happened. Asserts an exact recovery."""
    cfg = config(out)
    code = train_in_child(cfg, plan=("write", n))
    assert code in (0, KILLED), f"exit code {code}"
    assert train_in_child(cfg) == 0
    assert_recovered(reference, out)
    return code == KILLED


# ----------------------------------------------------------------------------------------------
# Scenarios: corrupt checkpoints, torn metrics, failed writes (in this process)
# ----------------------------------------------------------------------------------------------


def _edit_weights(path: Path) -> None:
    """Change one weight and save without updating the checksum (what silent corruption looks like)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    key = next(iter(ckpt["model"]))
    ckpt["model"][key].view(-1)[0] += 1.0
    torch.save(ckpt, path)


def _flip_byte(path: Path, rng: random.Random | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = (rng or random.Random(0)).randrange(len(data) // 4, len(data))
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated to half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "not a checkpoint": lambda p: p.write_bytes(b"not a zip file\n" * 100),
    "one byte flipped": _flip_byte,
    "weights edited, checksum stale": _edit_weights,
    "missing": lambda p: p.unlink(),
}


def resume_capturing(cfg: TrainConfig) -> str:
    """Train ``cfg`` with ``resume=True`` in this process; returns what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(dataclasses.replace(cfg, resume=True))
    return err.getvalue()


def corrupt_latest(finished: Path, partial: Path, out: Path, how: str) -> str:
    """Corrupt the latest checkpoint of a copy of ``partial`` (a run stopped after its second epoch)
    and resume it to the end; returns the warning. Asserts that it names both checkpoint files
    (unless nothing was unusable) and that the run equals ``finished`` exactly."""
    shutil.copytree(partial, out)
    CORRUPTIONS[how](out / CHECKPOINT)
    warning = resume_capturing(config(out))
    if how != "one byte flipped" or warning:  # a flipped byte can land in the zip's padding: harmless
        assert str(out / CHECKPOINT) in warning and str(out / PREVIOUS_CHECKPOINT) in warning, warning
    assert_recovered(finished, out)
    verify_checkpoint(out / CHECKPOINT)
    verify_checkpoint(out / PREVIOUS_CHECKPOINT)
    return warning.strip()


def corrupt_both(partial: Path, out: Path, how: str = "truncated to half") -> str:
    """Corrupt both checkpoints of a copy of ``partial``: resuming must raise CheckpointError naming both."""
    shutil.copytree(partial, out)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        CORRUPTIONS[how](out / name)
    try:
        resume_capturing(config(out))
    except CheckpointError as e:
        message = str(e)
    else:
        raise AssertionError("resuming from two unusable checkpoints did not fail")
    assert str(out / CHECKPOINT) in message and str(out / PREVIOUS_CHECKPOINT) in message, message
    return message


def tear_last_line(path: Path, rng: random.Random) -> None:
    """Cut the last line of ``path`` somewhere inside it (a write interrupted by a crash)."""
    text = path.read_bytes()
    start = text.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(text[: rng.randrange(start + 1, len(text) - 1)])


def torn_metrics(finished: Path, partial: Path, out: Path, rng: random.Random, *, continue_training: bool) -> None:
    """Tear the last line of ``metrics.jsonl`` and resume: the file must come back with every epoch once.

    ``continue_training``: tear a copy of ``partial`` (2 of 3 epochs) and train on; else tear a copy
    of ``finished``, whose resume trains nothing but must still repair the file (byte for byte).
    """
    shutil.copytree(partial if continue_training else finished, out)
    tear_last_line(out / "metrics.jsonl", rng)
    resume_capturing(config(out))
    assert_recovered(finished, out)
    if not continue_training:
        assert (out / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes()


class _FailingFile:
    """A temporary file whose write raises ``OSError(code)`` once ``budget`` bytes were written."""

    def __init__(self, f: Any, code: int, budget: int) -> None:
        self._f, self._code, self._budget = f, code, budget

    def write(self, data: Any) -> int:
        if len(data) > self._budget:
            self._f.write(data[: self._budget])
            raise OSError(self._code, os.strerror(self._code))
        self._budget -= len(data)
        return self._f.write(data)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def failing_writes(code: int, stage: str, name: str = CHECKPOINT, occurrence: int = 1) -> Iterator[None]:
    """Make the ``occurrence``-th atomic write of a file called ``name`` fail with ``OSError(code)``:
    in the middle of writing its data (``stage="write"``) or at its fsync (``stage="fsync"``)."""
    create, fsync = files._create_temporary, os.fsync
    seen, doomed = [0], set()

    def create_failing(path: Path, mode: str) -> tuple[Any, Path]:
        f, tmp = create(path, mode)
        if path.name == name:
            seen[0] += 1
            if seen[0] == occurrence:
                if stage == "write":
                    return _FailingFile(f, code, budget=4096), tmp
                doomed.add(f.fileno())
        return f, tmp

    def failing_fsync(fd: int) -> None:
        if fd in doomed:
            doomed.discard(fd)
            raise OSError(code, os.strerror(code))
        fsync(fd)

    files._create_temporary = create_failing  # type: ignore[assignment]
    os.fsync = failing_fsync
    try:
        yield
    finally:
        files._create_temporary = create  # type: ignore[assignment]
        os.fsync = fsync


def write_failure(finished: Path, out: Path, code: int, stage: str) -> str:
    """Fail the third checkpoint write (epoch 2) of a fresh run with ``OSError(code)``; returns the error.

    Asserts: the error is a CheckpointWriteError naming the file and the reason; the checkpoint of
    epoch 1 is intact (it verifies) and no temporary file is left; resuming ends equal to ``finished``.
    """
    with failing_writes(code, stage, occurrence=3):
        try:
            train(config(out))
        except CheckpointWriteError as e:
            error = e
        else:
            raise AssertionError("the failed checkpoint write went unnoticed")
    message = str(error)
    assert error.errno == code and os.strerror(code) in message and str(out / CHECKPOINT) in message, message
    assert verify_checkpoint(out / CHECKPOINT)["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    resume_capturing(config(out))
    assert_recovered(finished, out)
    return message


# ----------------------------------------------------------------------------------------------
# Scenarios: convsim reproduce killed between runs, a torchrun rank killed mid-epoch
# ----------------------------------------------------------------------------------------------

SMOKE_ONLY = "^cnn1-w1-(baseline|so)-s0$"  # two runs of the smoke suite


def reproduce_argv(out: Path, only: str | None = SMOKE_ONLY) -> list[str]:
    return ["reproduce", "--suite", "smoke", "--out", str(out), "--threads", "1"] + (["--only", only] if only else [])


def _statuses(out: Path) -> dict[str, str | None]:
    res = {}
    for d in sorted((out / "runs").iterdir()) if (out / "runs").is_dir() else []:
        try:
            res[d.name] = json.loads((d / "summary.json").read_text()).get("status")
        except (OSError, json.JSONDecodeError):
            res[d.name] = None
    return res


def _stamp(d: Path) -> tuple[int, int]:
    return (d / "summary.json").stat().st_mtime_ns, (d / CHECKPOINT).stat().st_mtime_ns


def stable_report(out: Path) -> tuple[dict[str, Any], list[str]]:
    """``results.json`` without timings and ``report.md`` with its wall-time cells blanked."""
    results = json.loads((out / "results.json").read_text().replace(str(out), "OUT"))
    results.pop("report_seconds", None)
    for r in results.get("runs", []):
        r.pop("wall_time", None)
    lines, column = [], None
    for line in (out / "report.md").read_text().splitlines():
        line = re.sub(r"training time:? [0-9.]+ (min|h)", r"training time _ \1", line)
        cells = line.split("|")
        if line.startswith("|") and any("wall time" in c for c in cells):
            column = next(i for i, c in enumerate(cells) if "wall time" in c)
        elif (
            line.startswith("|") and column is not None and len(cells) > column and not set(cells[column]) <= set("-: ")
        ):
            cells[column] = " _ "
            line = "|".join(cells)
        elif not line.startswith("|"):
            column = None
        lines.append(line)
    return results, lines


def reproduce_killed(
    reference: Path, out: Path, *, kill_after: float | None = None, only: str = SMOKE_ONLY
) -> tuple[bool, int]:
    """Kill ``convsim reproduce`` (SIGKILL) during its second run, or after ``kill_after`` seconds, and run it
    again; returns whether it was killed (it may finish first) and how many runs were complete then.
    Asserts that the runs complete at the kill are not trained again, that every run ends complete with
    each epoch once, and that the report equals the uninterrupted ``reference``'s (timings aside)."""
    argv = reproduce_argv(out, only)
    if kill_after is None:

        def second_run_started() -> bool:
            st = _statuses(out)
            return sum(s in FINAL_STATUSES for s in st.values()) >= 1 and any(
                (out / "runs" / n / "metrics.jsonl").exists() for n, s in st.items() if s not in FINAL_STATUSES
            )

        code = run_child(_cli_child, (argv, None), kill_when=second_run_started)
    else:
        code = run_child(_cli_child, (argv, None), kill_after=kill_after)
    assert code in (0, KILLED), f"exit code {code}"
    done = {n for n, s in _statuses(out).items() if s in FINAL_STATUSES}
    stamps = {n: _stamp(out / "runs" / n) for n in done}
    assert run_child(_cli_child, (argv, None)) == 0
    assert {n: _stamp(out / "runs" / n) for n in done} == stamps, "a complete run was trained again"
    for name, status in _statuses(out).items():
        assert status in FINAL_STATUSES, f"{name}: {status}"
        assert_recovered(reference / "runs" / name, out / "runs" / name)
    assert _statuses(out).keys() == _statuses(reference).keys()
    assert stable_report(out) == stable_report(reference), "the report differs from the uninterrupted suite's"
    return code == KILLED, len(done)


def reproduce_reference(out: Path, only: str = SMOKE_ONLY) -> None:
    assert run_child(_cli_child, (reproduce_argv(out, only), None)) == 0


_RANK_KILLER = """\
import os, signal, sys
from convsim.training import loop
step, seen = loop.train_step, [0]
def counted(*args, **kw):
    seen[0] += 1
    if os.environ.get("RANK") == "{rank}" and seen[0] == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(*args, **kw)
loop.train_step = counted
sys.argv = ["convsim", "train"] + {argv!r}
from convsim.cli import entry
entry()
"""


def torchrun(argv: list[str], timeout: float = 300.0, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2`` of ``convsim train ARGV`` (or of ``script``) on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    target = [str(script)] if script is not None else ["-m", "convsim", "train", *argv]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def ddp_rank_killed(
    reference: Path, out: Path, *, rank: int = 1, step: int | None = None, bound: float = 120.0
) -> float:
    """Kill ``rank`` of a two-process torchrun job mid-epoch (at its ``step``-th training step; default
    the middle of epoch 2), then ``--resume``; returns the seconds the killed job took to end.

    Asserts: the job ends non-zero within ``bound`` seconds (no hang) and the resumed run equals the
    uninterrupted two-process ``reference`` exactly.
    """
    cfg = config(out, init_iters=0, beta=0.0, epochs=2)
    step = step if step is not None else STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2
    script = out.parent / f"{out.name}-kill-rank.py"
    script.write_text(_RANK_KILLER.format(rank=rank, step=step, argv=to_argv(cfg)))
    t0 = time.monotonic()
    try:
        res = torchrun([], timeout=bound, script=script)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the job with a killed rank was still running after {bound:.0f} s") from e
    seconds = time.monotonic() - t0
    assert res.returncode != 0, "the job with a killed rank exited 0"
    res = torchrun(to_argv(cfg) + ["--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_recovered(reference, out)
    return seconds


def ddp_reference(out: Path) -> None:
    res = torchrun(to_argv(config(out, init_iters=0, beta=0.0, epochs=2)))
    assert res.returncode == 0, res.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# Bad inputs: what the command line says
# ----------------------------------------------------------------------------------------------


def run_cli(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """``python -m convsim ARGV`` in a fresh process (the way a user runs it)."""
    full_env = {k: v for k, v in os.environ.items() if k != "CONVSIM_DEBUG"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "convsim", *argv], capture_output=True, text=True, timeout=timeout, env=full_env
    )
