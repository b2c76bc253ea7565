"""Nothing is lost under faults: two verified checkpoints, SIGKILL anywhere, failed writes, torn lines.

Each test injects one fault into a tiny run (tests/faultlib.py: 3 epochs on 256 synthetic images)
and checks that the run recovers exactly: weights bitwise and metrics (all but ``seconds``) equal to
an uninterrupted run. benchmarks/faults.py repeats the same scenarios many times (RELIABILITY.md).
"""

from __future__ import annotations

import errno
import random
import shutil

import pytest
import torch

import faultlib
from convsim import cli
from convsim.training.checkpoint import (
    CHECKPOINT,
    FORMAT,
    PREVIOUS_CHECKPOINT,
    UNUSABLE_CHECKPOINT,
    state_checksum,
    verify_checkpoint,
)
from convsim.training.config import to_argv
from convsim.training.errors import CheckpointError, RunDirectoryError
from convsim.training.loop import load_run, train


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The uninterrupted reference: three epochs."""
    out = tmp_path_factory.mktemp("faults") / "finished"
    train(faultlib.config(out))
    return out


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The same run stopped after two of its three epochs (checkpoint.pt: epoch 2, checkpoint.prev.pt: epoch 1)."""
    out = tmp_path_factory.mktemp("faults") / "partial"
    train(faultlib.config(out, epochs=2))
    return out


def _one_error_line(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"convsim {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------- two checkpoints, verified


def test_a_run_keeps_its_last_two_checkpoints_each_with_a_checksum(finished):
    latest, previous = verify_checkpoint(finished / CHECKPOINT), verify_checkpoint(finished / PREVIOUS_CHECKPOINT)
    assert (latest["epoch"], previous["epoch"]) == (3, 2)
    assert latest["format"] == FORMAT and latest["sha256"] == state_checksum(latest)
    assert sorted(p.name for p in finished.iterdir()) == sorted(
        [CHECKPOINT, PREVIOUS_CHECKPOINT, "init.jsonl", "metrics.csv", "metrics.jsonl", "summary.json"]
    )


@pytest.mark.parametrize("how", sorted(faultlib.CORRUPTIONS))
def test_unusable_latest_checkpoint_falls_back_to_the_previous_one(finished, partial, tmp_path, how):
    """Resuming from a corrupt or missing checkpoint.pt warns, naming both files, retrains the lost epoch
    from checkpoint.prev.pt and ends bit-identical to the uninterrupted run."""
    warning = faultlib.corrupt_latest(finished, partial, tmp_path / "run", how)
    if how != "one byte flipped":  # (a flipped byte in the zip's padding is harmless and goes unnoticed)
        assert warning.startswith("warning: ") and "(epoch 1)" in warning and len(warning.splitlines()) == 1
    if how not in ("missing", "one byte flipped"):
        assert (tmp_path / "run" / UNUSABLE_CHECKPOINT).exists()  # kept for inspection, out of the rotation


def test_a_checksum_mismatch_is_named_as_such(partial, tmp_path):
    shutil.copytree(partial, tmp_path / "run")
    faultlib.CORRUPTIONS["weights edited, checksum stale"](tmp_path / "run" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_checkpoint(tmp_path / "run" / CHECKPOINT)
    verify_checkpoint(tmp_path / "run" / PREVIOUS_CHECKPOINT)


def test_the_command_line_warns_and_continues(partial, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(partial, out)
    faultlib.CORRUPTIONS["truncated to half"](out / CHECKPOINT)
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {out / CHECKPOINT}: unreadable" in err and str(out / PREVIOUS_CHECKPOINT) in err


def test_neither_checkpoint_usable_is_a_clear_error(partial, tmp_path, capsys):
    message = faultlib.corrupt_both(partial, tmp_path / "lib")
    assert message.startswith(f"no usable checkpoint in {tmp_path / 'lib'}: ")
    out = tmp_path / "cli"
    shutil.copytree(partial, out)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).write_bytes(b"")
    assert cli.main(["train", "--out", str(out), "--resume"]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert str(out / CHECKPOINT) in line and str(out / PREVIOUS_CHECKPOINT) in line and "delete both" in line


def test_load_run_refuses_a_corrupt_checkpoint_and_says_how_to_fix_it(finished, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    faultlib.CORRUPTIONS["weights edited, checksum stale"](out / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checksum mismatch.*--resume"):
        load_run(out)
    assert cli.main(["overlap", str(out), "--out", str(tmp_path / "ov"), "--no-figures"]) == 2
    assert "checksum mismatch" in _one_error_line(capsys.readouterr().err, "overlap")


def test_resuming_a_finished_run_with_a_corrupt_latest_checkpoint_restores_its_weights(finished, tmp_path):
    """The fallback retrains the last epoch, and checkpoint.pt holds the delivered weights again."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    faultlib.CORRUPTIONS["truncated to half"](out / CHECKPOINT)
    faultlib.resume_capturing(faultlib.config(out))
    faultlib.assert_recovered(finished, out)
    model = load_run(out)[0]
    reference = torch.load(finished / CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_a_channel_wise_early_stopping_run_resumes_bit_identically(tmp_path):
    """The NNK kernels of CW-NNK early stopping (numba, sharing OpenMP with torch) must not change the
    threads the next epochs train with: one epoch + resume equals the uninterrupted run bit for bit."""
    es = dict(early_stop="cwnnk", patience=1, es_samples=128, es_k=5, init_iters=0, beta=0.0)
    train(faultlib.config(tmp_path / "straight", **es))
    train(faultlib.config(tmp_path / "resumed", epochs=1, **es))
    train(faultlib.config(tmp_path / "resumed", resume=True, **es))
    faultlib.assert_recovered(tmp_path / "straight", tmp_path / "resumed")


# ---------------------------------------------------------------- failed writes


@pytest.mark.parametrize(
    "code, stage", [(errno.ENOSPC, "write"), (errno.EIO, "fsync")], ids=["ENOSPC-in-write", "EIO-in-fsync"]
)
def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(finished, tmp_path, code, stage):
    """(benchmarks/faults.py tries every combination.)"""
    message = faultlib.write_failure(finished, tmp_path / "run", code, stage)
    assert "the checkpoint of epoch 1 is intact" in message and "--resume" in message


def test_a_failed_write_is_one_line_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *to_argv(faultlib.config(out))]
    with faultlib.failing_writes(errno.ENOSPC, "write", occurrence=2):
        assert cli.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"cannot write {out / CHECKPOINT}: [Errno {errno.ENOSPC}] No space left on device" in line
    assert verify_checkpoint(out / CHECKPOINT)["epoch"] == 0


# ---------------------------------------------------------------- torn metrics.jsonl


@pytest.mark.parametrize("continue_training", [True, False], ids=["mid-run", "finished"])
def test_a_torn_last_metrics_line_is_repaired_on_resume(finished, partial, tmp_path, continue_training):
    faultlib.torn_metrics(finished, partial, tmp_path / "run", random.Random(0), continue_training=continue_training)


# ---------------------------------------------------------------- SIGKILL


@pytest.fixture(scope="module")
def kill_window(tmp_path_factory):
    """Seconds an uninterrupted run takes in a child process (the window random kills are drawn from)."""
    return faultlib.reference_in_child(tmp_path_factory.mktemp("faults") / "timed")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    return faultlib.write_stages(tmp_path_factory.mktemp("faults") / "counted")


@pytest.mark.parametrize("stage", ["written", "backed-up", "replaced"])
def test_sigkill_inside_a_checkpoint_write_loses_nothing(finished, stages, tmp_path, stage):
    """Killed after the epoch-2 checkpoint's temporary file is written (before its rename), between
    moving checkpoint.pt aside and renaming the new one in, or right after: resuming is exact."""
    n = [i for i, (s, name) in enumerate(stages, 1) if s == stage and CHECKPOINT in name][2]
    assert faultlib.kill_at_write(finished, tmp_path / "run", n)


def test_sigkill_at_random_moments_loses_nothing(finished, kill_window, tmp_path):
    rng = random.Random(12)
    hits = sum(faultlib.random_kills(finished, tmp_path / f"run{i}", rng, kill_window) for i in range(2))
    assert hits >= 1  # at least one kill landed in a running process


@pytest.mark.slow
def test_reproduce_killed_midway_and_rerun_trains_every_run_once(tmp_path):
    faultlib.reproduce_reference(tmp_path / "reference")
    killed, complete_at_kill = faultlib.reproduce_killed(tmp_path / "reference", tmp_path / "killed")
    assert killed and complete_at_kill == 1


@pytest.mark.slow
def test_a_torchrun_rank_killed_mid_epoch_ends_the_job_and_resume_is_exact(tmp_path):
    faultlib.ddp_reference(tmp_path / "reference")
    seconds = faultlib.ddp_rank_killed(tmp_path / "reference", tmp_path / "killed", bound=120.0)
    assert seconds < 120.0


def test_a_missing_run_directory_is_a_run_directory_error(tmp_path):
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_run(tmp_path / "nowhere")
