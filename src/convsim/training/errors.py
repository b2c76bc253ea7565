"""The trainer's error types, in a module of their own so that every training module can raise them.

Each is a :class:`~convsim._internal.errors.UserError`: ``convsim`` prints its message as one line
(``convsim train: error: ...``) and exits with status 2. :class:`ConfigError` is a ``ValueError``:
an invalid value in a :class:`~convsim.training.config.TrainConfig`, a resume that does not match
the stored run, or a device the machine does not have
(:func:`convsim.training.distributed.resolve_device`). :class:`CheckpointError`: a run
directory's checkpoints cannot be read (neither ``checkpoint.pt`` nor its previous copy) or written.
:class:`RunDirectoryError` (a ``FileNotFoundError``): a folder that is not a training run.
"""

from __future__ import annotations

from convsim._internal.errors import FileWriteError, UserError


class ConfigError(UserError, ValueError):
    """An invalid training configuration (bad value, or a resume that does not match the stored run)."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type."""


class CheckpointError(UserError):
    """No usable checkpoint to resume from or to load weights from; the message names the files and why."""


class CheckpointWriteError(CheckpointError, FileWriteError):
    """A checkpoint could not be written (full disk, I/O error); the previous checkpoints are intact."""


class RunDirectoryError(UserError, FileNotFoundError):
    """A folder that is not a training run (missing, or without ``summary.json`` / ``checkpoint.pt``)."""
