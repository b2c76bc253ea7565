"""User errors on the command line: one line `convsim <command>: error: <what and how to fix it>`,
exit status 2, no traceback (unless --debug or CONVSIM_DEBUG=1); a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import faultlib
from convsim import cli, data
from convsim.cli import verify as verify_cli

TINY = ["--dataset", "synthetic", "--train-subset", "64", "--test-subset", "32", "--batch-size", "32"]
TINY += ["--fm-batch", "16", "--epochs", "1", "--device", "cpu", "--threads", "1", "--no-verbose"]


def error_line(err: str, command: str) -> str:
    """The one line of stderr, checked to be `convsim COMMAND: error: ...`."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"convsim {command}: error: "), err
    return lines[0]


def test_a_missing_run_directory(tmp_path, capsys):
    assert cli.main(["overlap", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ov")]) == 2
    line = error_line(capsys.readouterr().err, "overlap")
    assert f"{tmp_path / 'nowhere'} does not exist" in line and "convsim train --out" in line


def test_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert cli.main(["overlap", str(tmp_path / "run"), "--out", str(tmp_path / "ov")]) == 2
    assert "is not a training run: summary.json is missing" in error_line(capsys.readouterr().err, "overlap")


def test_a_missing_suite_folder(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "has no runs/ folder" in error_line(capsys.readouterr().err, "report")


def test_a_missing_dataset_lists_the_ways_to_get_it_after_the_first_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVSIM_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")]) == 2
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith("convsim train: error: fashion-mnist (train split) not found; ")
    assert "--download" in first and "--data-dir" in first
    assert "Ways to get it:" in rest and any("dataset-fashion-mnist" in line for line in rest)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_a_run_that_cannot_be_resumed(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert cli.main(["train", *TINY, *out]) == 0
    capsys.readouterr()
    assert cli.main(["train", *TINY, *out, "--resume", "--lr", "0.5", "--epochs", "2"]) == 2
    line = error_line(capsys.readouterr().err, "train")
    assert "cannot resume" in line and "lr: stored 0.01, given 0.5" in line and "only data_dir" in line
    assert cli.main(["train", *TINY, *out]) == 2  # an existing run without --resume
    assert "already holds a run" in error_line(capsys.readouterr().err, "train")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", *TINY],
        ["reproduce", "--suite", "smoke", "--no-report"],
        ["overlap", "RUN"],
        ["report", "RUN"],
    ],
    ids=["train", "reproduce", "overlap", "report"],
)
def test_an_out_below_a_file(tmp_path, capsys, argv):
    """--out under a regular file can never be created: refused before anything runs."""
    (tmp_path / "file").write_text("x")
    argv = [str(tmp_path) if a == "RUN" else a for a in argv] + ["--out", str(tmp_path / "file" / "out")]
    assert cli.main(argv) == 2
    line = error_line(capsys.readouterr().err, argv[0])
    assert f"--out {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_out_in_a_read_only_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert cli.main(["train", *TINY, "--out", str(locked / "run")]) == 2
    finally:
        locked.chmod(0o700)
    assert "is not writable" in error_line(capsys.readouterr().err, "train")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--epochs", "0"], "epochs must be >= 1, got 0"),
        (["train", "--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["reproduce", "--suite", "smoke", "--out", "OUT", "--only", "(", "--list"], "--only '(' is not a regular"),
        (
            ["reproduce", "--suite", "smoke", "--out", "OUT", "--jobs", "0"],
            "--jobs: expected an integer >= 1, got 0",
        ),
        (["verify", "--seeds", "0"], "argument --seeds: expected an integer >= 1, got 0"),
        (["verify", "--steps", "-1"], "argument --steps: expected an integer >= 0, got -1"),
        (["overlap", "RUN", "--out", "OUT", "-k", "0"], "argument -k: expected an integer >= 1, got 0"),
        (
            ["overlap", "RUN", "--out", "OUT", "--n-samples", "many"],
            "--n-samples: expected an integer >= 1, got 'many'",
        ),
        (
            ["analyze", "--model", "M", "--data", "D", "--out", "OUT", "--batch-size", "0"],
            "--batch-size: expected",
        ),
        (
            ["analyze", "--model", "M", "--data", "D", "--out", "OUT", "--image-size", "9", "0"],
            "--image-size: expected",
        ),
    ],
    ids=[
        "bad-value",
        "bad-choice",
        "bad-regex",
        "bad-jobs",
        "bad-seeds",
        "bad-steps",
        "overlap-k-0",
        "overlap-not-int",
        "analyze-batch-0",
        "analyze-image-size-0",
    ],
)
def test_bad_flags(tmp_path, capsys, argv, expected):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert expected in error_line(capsys.readouterr().err, argv[0])


def test_debug_shows_the_traceback(capsys):
    assert cli.main(["train", "--epochs", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.splitlines()[-1] == "convsim train: error: epochs must be >= 1, got 0"


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("an unexpected failure")

    monkeypatch.setattr(verify_cli, "run", bug)
    with pytest.raises(RuntimeError, match="an unexpected failure"):
        cli.main(["verify"])


@pytest.mark.parametrize("env, debug", [({}, False), ({"CONVSIM_DEBUG": "1"}, True)], ids=["plain", "CONVSIM_DEBUG"])
def test_from_a_real_process(env, debug):
    """What a user sees: `python -m convsim ...` with a user error, with and without CONVSIM_DEBUG=1."""
    res = faultlib.run_cli(["train", "--epochs", "0"], env=env)
    assert res.returncode == 2
    assert ("Traceback" in res.stderr) == debug
    assert res.stderr.splitlines()[-1] == "convsim train: error: epochs must be >= 1, got 0"
    if not debug:
        assert len(res.stderr.splitlines()) == 1


def test_a_bug_in_a_real_process_exits_1_with_a_traceback(tmp_path):
    script = tmp_path / "bug.py"
    script.write_text(
        "import sys\nfrom convsim import cli\nfrom convsim.cli import verify\n"
        "def bug(args):\n    raise RuntimeError('an unexpected failure')\n"
        "verify.run = bug\nsys.exit(cli.main(['verify']))\n"
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr and "RuntimeError: an unexpected failure" in res.stderr


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_a_usage_error_is_printed_by_rank_zero_only(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--optimizer", "rmsprop"])
    assert exit_info.value.code == 2
    assert ("invalid choice: 'rmsprop'" in capsys.readouterr().err) is printed
