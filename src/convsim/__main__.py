from convsim.cli import entry

entry()
