"""Atomic file writes: a temporary name in the same folder, fsync, then ``os.replace`` and an fsync of the folder.

Every file convsim writes goes through this module. New files get the permissions ``open()``
gives them (``0o666`` less the process umask: 0644 under umask 022), temporary files included.
A write that fails with an ``OSError`` (a full disk, an I/O error, no permission) raises
:class:`~convsim._internal.errors.FileWriteError`, which names the file and the reason and is still
an ``OSError``; the file's previous content is left as it was and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from convsim._internal.errors import FileWriteError

# Test-only fault injection: when set, called as ``_test_hook(stage, path)`` at each step of an atomic
# write: "written" (the temporary file ``path`` is written and fsynced, not yet renamed), "backed-up"
# (``path``, the old file, was renamed to the ``previous`` name; the new one is not in place yet) and
# "replaced" (the new file is at ``path``). Tests raise from it or kill the process there.
_test_hook: Callable[[str, Path], None] | None = None

_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # the names _create_temporary gives


class _Guarded:
    """A file object that remembers the first ``OSError`` of a write.

    ``torch.save`` turns a failed write into ``RuntimeError("... unexpected pos ...")``, losing the
    reason (ENOSPC, EIO); :func:`atomic_write` reports the remembered one instead.
    """

    def __init__(self, f: IO[Any]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _fault(stage: str, path: Path) -> None:
    if _test_hook is not None:
        _test_hook(stage, path)


def _create_temporary(path: Path, mode: str) -> tuple[IO[Any], Path]:
    """A new, empty file beside ``path`` opened with ``mode``, created like ``open()`` does (umask honoured)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return os.fdopen(fd, mode), tmp
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows: folders cannot be opened, and renames need no fsync there
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems without directory fsync
            raise
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Any], None],
    mode: str = "wb",
    *,
    previous: str | os.PathLike | None = None,
) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` and rename it into place.

    The temporary file is fsynced before the rename and the folder after it, so after a crash
    ``path`` holds either the old or the new content, complete. With ``previous``, the old file
    (if any) is first renamed to ``previous``: a crash between the two renames leaves the old
    content at ``previous`` and nothing at ``path``. On error the temporary file is removed and the
    old file is left as it was; an ``OSError`` is raised as
    :class:`~convsim._internal.errors.FileWriteError` (naming ``path`` and the reason).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f, tmp = _create_temporary(path, mode)
    except OSError as e:
        raise FileWriteError.wrap(path, e) from e
    guarded = _Guarded(f)
    try:
        with f:
            try:
                write(guarded)
            except BaseException as e:  # the writer's own errors (a failed download) pass unchanged
                if guarded.error is not None:  # the reason a writer such as torch.save hid
                    raise FileWriteError.wrap(path, guarded.error) from e
                raise
            _wrapped(path, f.flush)
            _wrapped(path, lambda: os.fsync(f.fileno()))
        _fault("written", tmp)
        _wrapped(path, lambda: _replace(tmp, path, Path(previous) if previous is not None else None))
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def _wrapped(path: Path, step: Callable[[], None]) -> None:
    """Run one step of writing ``path``; its ``OSError`` becomes a :class:`FileWriteError` naming ``path``."""
    try:
        step()
    except FileWriteError:
        raise
    except OSError as e:
        raise FileWriteError.wrap(path, e) from e


def _replace(tmp: Path, path: Path, previous: Path | None) -> None:
    """Rename ``tmp`` to ``path`` (after moving ``path`` to ``previous``), then fsync the folder."""
    moved = False
    if previous is not None and path.exists():
        os.replace(path, previous)
        moved = True
        _fault("backed-up", path)
    try:
        os.replace(tmp, path)
    except OSError:
        if moved and not path.exists():  # put the old file back where readers look first
            with contextlib.suppress(OSError):
                os.replace(previous, path)  # type: ignore[arg-type]
        raise
    fsync_dir(path.parent)
    _fault("replaced", path)


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder``; returns them.

    Only for a folder no other process is writing into (a run directory at the start of a run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk (a crash loses at most this line).

    An ``OSError`` is raised as :class:`~convsim._internal.errors.FileWriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise FileWriteError.wrap(path, e) from e


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete JSON lines of a file (a torn last line from a crash is ignored)."""
    out: list[dict] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
