"""The one base class of the errors a user can fix, and the file-write error every writer raises.

:class:`UserError` marks an exception whose message is for the person at the keyboard: a bad
value, a missing dataset, an unusable run directory or checkpoint, a folder that cannot be written.
``convsim`` (:func:`convsim.cli.main`) prints such an error as ``convsim <command>: error: <message>``
(the first line; further lines, such as the ways to get a dataset, follow) and exits with status 2,
without a traceback unless ``--debug`` or ``CONVSIM_DEBUG=1``. Any other exception is a bug and
keeps its traceback. The library's and the trainer's error types derive from it as well as from
the built-in type they always were (``ConfigError`` is a ``ValueError``, ``DatasetNotFoundError`` a
``FileNotFoundError``), so code that catches the built-in types still works.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """An error the user can fix; its message says what went wrong and how to fix it."""


class FileWriteError(UserError, OSError):
    """A file could not be written (full disk, I/O error, no permission, a file where a folder should be).

    The message names the file and the operating system's reason; ``errno`` is the original one.
    The file's previous content, if any, is left as it was.
    """

    @classmethod
    def wrap(cls, path: str | os.PathLike[str], cause: OSError, hint: str = "") -> FileWriteError:
        """``cannot write PATH: [Errno n] reason`` (plus ``; hint``), keeping ``cause``'s errno."""
        code = f"[Errno {cause.errno}] " if cause.errno is not None else ""
        err = cls(f"cannot write {os.fspath(path)}: {code}{cause.strerror or cause}" + (f"; {hint}" if hint else ""))
        err.errno, err.strerror, err.filename = cause.errno, cause.strerror, os.fspath(path)
        return err

    def __str__(self) -> str:  # OSError's own __str__ prints "[Errno n] strerror" when errno is set
        return str(self.args[0]) if self.args else ""
