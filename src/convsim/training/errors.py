"""The trainer's error types, in a module of their own so that every training module can raise them.

:class:`ConfigError` is a ``ValueError``: an invalid value in a
:class:`~convsim.training.config.TrainConfig`, a resume that does not match the stored run, or a
device the machine does not have (:func:`convsim.training.distributed.resolve_device`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid training configuration (bad value, or a resume that does not match the stored run)."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type."""
