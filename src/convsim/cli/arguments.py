"""Argument types shared by the commands: a bad count is argparse's one-line usage error (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer no smaller than ``minimum``; anything else is a usage error saying so.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument("-k", type=integer_at_least(1))
        >>> parser.parse_args(["-k", "3"]).k
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse


COUNT = integer_at_least(1)  # sizes, counts and thread numbers
