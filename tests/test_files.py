"""convsim._internal.files: atomic writes that honour the umask, and write errors that say what failed."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import faultlib
from convsim._internal import files
from convsim._internal.errors import FileWriteError, UserError
from convsim._internal.files import append_jsonl, atomic_write, atomic_write_json, atomic_write_text
from convsim.training.loop import train


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after it)."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_mode_open_gives_them(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    append_jsonl(tmp_path / "c.jsonl", {"a": 1})
    with open(tmp_path / "reference", "w"):  # what open() gives under this umask
        pass
    assert mode(tmp_path / "reference") == expected
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(
        ["a.txt", "b.bin", "c.jsonl", "reference"], expected
    )


def test_every_file_of_a_training_run_is_0644_under_umask_022(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "run"
    train(faultlib.config(out, epochs=2))
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "checkpoint.prev.pt",
        "checkpoint.pt",
        "init.jsonl",
        "metrics.csv",
        "metrics.jsonl",
        "summary.json",
    ]
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(written, 0o644)
    assert mode(out) == 0o755


def test_a_report_figure_is_0644_under_umask_022(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from convsim.reporting.figures import _save

    umask(0o022)
    fig = plt.figure()
    _save(fig, tmp_path / "fig.png")
    plt.close(fig)
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG" and mode(tmp_path / "fig.png") == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"old": True})
    no_space = faultlib.failing_writes(errno.ENOSPC, "write", name="summary.json")
    with no_space, pytest.raises(FileWriteError) as err:
        atomic_write_text(path, "y" * 10_000)
    assert str(err.value) == f"cannot write {path}: [Errno {errno.ENOSPC}] No space left on device"
    assert isinstance(err.value, OSError) and isinstance(err.value, UserError) and err.value.errno == errno.ENOSPC
    assert path.read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_fsync_is_reported_too(tmp_path):
    path = tmp_path / "a.txt"
    io_error = faultlib.failing_writes(errno.EIO, "fsync", name="a.txt")
    with io_error, pytest.raises(FileWriteError, match=r"cannot write .*a\.txt: \[Errno 5\] Input/output error"):
        atomic_write_text(path, "x")
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_write_below_a_file_names_the_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileWriteError, match=f"cannot write {tmp_path / 'file' / 'out.json'}: ") as err:
        atomic_write_json(tmp_path / "file" / "out.json", {})
    assert err.value.errno in (errno.ENOTDIR, errno.EEXIST)
    with pytest.raises(FileWriteError, match="metrics.jsonl"):
        append_jsonl(tmp_path / "file" / "metrics.jsonl", {})


def test_a_writers_own_errors_pass_unchanged(tmp_path):
    """A download that fails is the writer's error, not a write error: it keeps its type and message."""

    def fails(exc):
        def write(f):
            f.write(b"partial")
            raise exc

        return write

    with pytest.raises(ConnectionResetError, match="^connection reset$"):
        atomic_write(tmp_path / "a", fails(ConnectionResetError("connection reset")))
    with pytest.raises(ValueError, match="^checksum mismatch$"):
        atomic_write(tmp_path / "a", fails(ValueError("checksum mismatch")))
    assert not list(tmp_path.iterdir())


def test_previous_keeps_the_replaced_file(tmp_path):
    path, previous = tmp_path / "c.pt", tmp_path / "c.prev.pt"
    atomic_write_text(path, "1")
    atomic_write(path, lambda f: f.write("2"), mode="w", previous=previous)
    atomic_write(path, lambda f: f.write("3"), mode="w", previous=previous)
    assert (path.read_text(), previous.read_text()) == ("3", "2")


def test_remove_temporaries_removes_only_interrupted_writes(tmp_path):
    def killed(stage, path):
        if stage == "written":
            raise KeyboardInterrupt  # stands in for a crash before the rename: the temporary stays

    files._test_hook = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write_text(tmp_path / "metrics.jsonl", "x")
    finally:
        files._test_hook = None
    (tmp_path / ".hidden.tmp").write_text("not ours")
    assert not (tmp_path / "metrics.jsonl").exists()
    assert [p.name for p in files.remove_temporaries(tmp_path)] == []  # atomic_write cleaned up after itself
    (tmp_path / ".metrics.jsonl.0123456789ab.tmp").write_text("left by a SIGKILL")
    assert [p.name for p in files.remove_temporaries(tmp_path)] == [".metrics.jsonl.0123456789ab.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp"]
