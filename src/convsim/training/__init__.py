"""The trainer: one CNN trained with the CS regulariser, the CS initialisation or a baseline penalty.

The public API is what a user of the trainer needs::

    from convsim.training import TrainConfig, train, load_run

    summary = train(TrainConfig(model="cnn1", beta=0.01, out="runs/cs"))
    model, config, summary = load_run("runs/cs")

Every other name lives in (and is imported from) its own module. Reading order:

1. :mod:`~convsim.training.config`: :class:`TrainConfig`, every hyperparameter in one place
   with its ``convsim train`` flag; :func:`config_from_dict` reads a stored config back
   (renamed fields mapped by :func:`~convsim.training.config.normalize_config_dict`).
2. :mod:`~convsim.training.loop`: :func:`train` and :func:`load_run`, the run top to bottom
   (set-up, one epoch, one step).
3. The loop's pieces: :mod:`~convsim.training.data` (the run's tensors),
   :mod:`~convsim.training.optim` (optimizer, lr schedule, CS initialisation),
   :mod:`~convsim.training.evaluation` (accuracy, redundancy measurements),
   :mod:`~convsim.training.early_stopping`, :mod:`~convsim.training.checkpoint` (save, resume,
   :data:`FINAL_STATUSES`), :mod:`~convsim.training.summary` (``summary.json``),
   :mod:`~convsim.training.distributed` (device, threads, torchrun) and
   :mod:`~convsim.training.errors` (:class:`ConfigError`).

Layer rule: this package imports the library (``convsim.similarity``, ``convsim.data``, ...)
and ``convsim._internal``, never ``convsim.reporting`` or ``convsim.cli``.
"""

from convsim.training.checkpoint import FINAL_STATUSES
from convsim.training.config import TrainConfig, config_from_dict
from convsim.training.errors import ConfigError
from convsim.training.loop import load_run, train

__all__ = ["FINAL_STATUSES", "ConfigError", "TrainConfig", "config_from_dict", "load_run", "train"]
