"""The `convsim` dispatcher: every command is reachable and documented."""
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
