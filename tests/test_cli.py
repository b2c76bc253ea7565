"""The `convsim` dispatcher: every command is reachable and documented."""

import os
import subprocess
import sys

import pytest

from convsim import __version__, cli


def test_help_lists_every_command(capsys):
    """`convsim` with no command prints help naming each subcommand and exits 0."""
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_module_follows_the_protocol(command):
    """Each command module exposes add_arguments(parser) and run(args)."""
    import importlib

    module = importlib.import_module(cli.COMMANDS[command][0])
    assert callable(module.add_arguments) and callable(module.run)


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point_runs():
    """`python -m convsim --version` works (torchrun launches `-m convsim train`)."""
    out = subprocess.run([sys.executable, "-m", "convsim", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == __version__


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_entry_skips_interpreter_shutdown_only_under_torchrun(world_size):
    """Under torchrun `entry` ends with os._exit (atexit handlers do not run) yet keeps the output and code."""
    script = (
        "import atexit, sys; atexit.register(print, 'atexit ran'); "
        "sys.argv = ['convsim', '--version']; from convsim.cli import entry; entry()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"WORLD_SIZE": world_size}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0
    # Piped stdout is block-buffered (PYTHONUNBUFFERED removed above): lost unless flushed before os._exit.
    assert out.stdout.split()[:1] == [__version__]
    assert ("atexit ran" in out.stdout) == (world_size == "1")
