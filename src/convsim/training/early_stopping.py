r"""Early stopping for the trainer: channel-wise (CW-DeepNNK, no validation set) or on a held-out split.

:func:`make_early_stopping` picks the rule of ``config.early_stop``. Both rules share the
interface of :class:`EarlyStopping` that the training loop relies on: :meth:`~EarlyStopping.update`
after every epoch (score, log into the epoch's record, say whether to stop),
:meth:`~EarlyStopping.restore` on stop, ``freezer`` applied at every optimizer step, and
``state_dict``/``load_state_dict``/``summary`` for the checkpoint and ``summary.json``.

Example:
    >>> es = make_early_stopping(TrainConfig(early_stop="validation", patience=1), nn.Conv2d(1, 2, 3))
    >>> [es.step(e, i + 1) for i, e in enumerate([0.5, 0.6])]
    [(True, False), (False, True)]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from convsim._internal.hooks import capture
from convsim._internal.layers import CONV_TYPES, ConvLayer, unwrap
from convsim._internal.modes import eval_mode
from convsim.training import distributed
from convsim.training.config import TrainConfig
from convsim.training.distributed import DistEnv
from convsim.training.evaluation import evaluate


def last_conv_layer(model: nn.Module) -> tuple[str, ConvLayer]:
    """The last Conv1d/2d/3d of ``model`` in module-registration order (its name and module)."""
    convs = [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, CONV_TYPES)]
    if not convs:
        raise ValueError("the model has no conv layer; channel-wise early stopping needs one")
    return convs[-1]


class ChannelFreezer:
    """Keeps chosen output channels of one conv layer bit-identical through optimizer steps.

    Call :meth:`zero_frozen_grads` after ``backward()`` and :meth:`restore_frozen` after
    ``optimizer.step()``: the first keeps the gradient (hence Adam/momentum statistics) of frozen
    filters at zero, the second writes back their exact values, which also undoes weight decay
    and the momentum buffer's inertia.

    Example:
        >>> conv = nn.Conv2d(1, 3, 3)
        >>> fr = ChannelFreezer(conv); fr.freeze(torch.tensor([True, False, False]))
        >>> before = conv.weight[0].clone()
        >>> opt = torch.optim.SGD(conv.parameters(), lr=0.1, weight_decay=0.1)
        >>> conv(torch.randn(1, 1, 5, 5)).sum().backward()
        >>> fr.zero_frozen_grads(); opt.step(); fr.restore_frozen()
        >>> bool(torch.equal(conv.weight[0], before))
        True
    """

    def __init__(self, conv: ConvLayer) -> None:
        self.conv = conv
        self.mask = torch.zeros(conv.out_channels, dtype=torch.bool, device=conv.weight.device)
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None

    def freeze(self, mask: torch.Tensor) -> None:
        """Freeze the channels where ``mask`` is True (in addition to those already frozen) at their current values."""
        mask = mask.to(self.mask.device, torch.bool)
        if bool(mask.any()):
            self.mask |= mask
            self._weight = self.conv.weight.detach().clone()
            self._bias = None if self.conv.bias is None else self.conv.bias.detach().clone()

    def zero_frozen_grads(self) -> None:
        """Zero the gradient of the frozen channels' weights and biases (call after ``backward()``)."""
        if self._weight is None:
            return
        for p in (self.conv.weight, self.conv.bias):
            if p is not None and p.grad is not None:
                p.grad[self.mask] = 0

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Write back the frozen channels' exact values (call after ``optimizer.step()``)."""
        if self._weight is None:
            return
        self.conv.weight[self.mask] = self._weight[self.mask]
        if self._bias is not None and self.conv.bias is not None:
            self.conv.bias[self.mask] = self._bias[self.mask]


class EarlyStopping(ABC):
    """The interface of an early-stopping rule, as the training loop and the summary use it.

    ``mode`` names the rule (``config.early_stop``); ``best_epoch`` and ``best_state`` (CPU copy
    of the weights, or None) are what :meth:`restore` goes back to; ``stop_epoch`` is the epoch
    that stopped training (0 while running); ``freezer`` is a :class:`ChannelFreezer` applied at
    every optimizer step, or None.
    """

    mode: str = ""
    freezer: ChannelFreezer | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stop_epoch: int = 0

    @abstractmethod
    def update(
        self,
        model: nn.Module,
        d: dict[str, torch.Tensor],
        config: TrainConfig,
        env: DistEnv,
        epoch: int,
        record: dict[str, Any],
    ) -> bool:
        """Score ``model`` after ``epoch`` on ``d`` (:func:`~convsim.training.data.load_data`), log into ``record``.

        Returns True when training should stop.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The rule's state for the checkpoint (tensors, numbers, the best weights)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (on resume)."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """The rule's own fields of ``summary.json``'s ``early_stop``."""

    def restore(self, model: nn.Module) -> None:
        """Load ``best_state`` into ``model`` (nothing to do when no epoch improved)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class ChannelEarlyStopping(EarlyStopping):
    """Channel-wise early stopping without a validation set (CW-DeepNNK; spec nnk §3).

    After each epoch the last conv layer's output on a fixed training subset is computed once (one
    forward pass, channels sliced) and :func:`convsim.nnk.channel_loo_error` gives each channel's
    leave-one-out NNK label-interpolation error. A channel that does not improve on its best error
    (strictly lower; a non-finite error never counts as an improvement) loses one unit of
    patience; at zero its filter (weight slice and bias of the last conv) is frozen. Training stops
    when every channel is frozen. Earlier layers keep training, so a frozen channel's features
    still drift (as in the released code). ``best_state`` holds the weights of the last epoch at
    which any channel improved (what the released code restores for evaluation).

    ``solver`` is the NNK solver (``config.es_solver``): ``"exact"`` (default), or ``"pruning"``
    for the released one-way solver of CW-DeepNNK; the NNK settings are in :meth:`summary`
    (``nnk``) and the solver in every epoch's record (``es_solver``).
    """

    mode = "cwnnk"
    freezer: ChannelFreezer

    def __init__(self, model: nn.Module, patience: int, k: int, solver: str = "exact") -> None:
        from convsim.nnk.options import NNKOptions

        self.layer, conv = last_conv_layer(model)
        self.channels = conv.out_channels
        self.patience = patience
        self.k = k
        # what channel_loo_error(..., k=k, solver=solver) resolves to (duplicates="drop")
        self.nnk = NNKOptions(k=k, solver=solver, duplicates="drop")
        self.freezer = ChannelFreezer(conv)
        self.best = torch.full((self.channels,), math.inf, dtype=torch.float64)
        self.left = torch.full((self.channels,), patience, dtype=torch.int64)
        self.frozen_epoch = torch.zeros(self.channels, dtype=torch.int64)  # 0 = not frozen
        self.best_epoch = 0
        self.best_state = None
        self.stop_epoch = 0

    @property
    def frozen(self) -> torch.Tensor:
        return self.frozen_epoch > 0

    def errors(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-channel LOO error (C,) of the last conv layer's output on ``(x, y)``."""
        from convsim import nnk

        parts = []
        with eval_mode(model), torch.no_grad(), capture(model, [self.layer]) as acts:
            for chunk in torch.split(torch.arange(len(y), device=y.device), batch):
                model(x[chunk])
                parts.append(acts[self.layer].float().cpu())
        return nnk.channel_loo_error(torch.cat(parts), y.cpu(), options=self.nnk).to(torch.float64).cpu()

    def update(
        self,
        model: nn.Module,
        d: dict[str, torch.Tensor],
        config: TrainConfig,
        env: DistEnv,
        epoch: int,
        record: dict[str, Any],
    ) -> bool:
        """Score the channels after ``epoch``, update patience, freeze, log into ``record``; True = stop."""
        errors = torch.zeros(self.channels, dtype=torch.float64)
        if env.is_main:  # rank 0 scores, every rank applies the same decision
            errors = self.errors(model, d["es_x"], d["es_y"], config.eval_batch)
        dev = d["es_y"].device if env.backend == "nccl" else torch.device("cpu")
        errors = distributed.broadcast(errors.to(dev), env).cpu()
        active = ~self.frozen
        improved = active & (errors < self.best)  # NaN < x is False: no improvement
        self.best[improved] = errors[improved]
        self.left[improved] = self.patience
        self.left[active & ~improved] -= 1
        newly = active & (self.left <= 0)
        self.frozen_epoch[newly] = epoch
        if bool(improved.any()):
            self.best_epoch = epoch
            self.best_state = _state_copy(model)
        self.freezer.freeze(newly)
        stop = bool(self.frozen.all())
        if stop:
            self.stop_epoch = epoch
        record.update(
            es_errors=[float(e) for e in errors],
            es_patience=self.left.tolist(),
            es_frozen=self.frozen.tolist(),
            es_frozen_count=int(self.frozen.sum()),
            es_solver=self.nnk.solver,
        )
        if self.nnk.solver == "pruning":
            record["es_pruning_tol"] = self.nnk.pruning_tol
        return stop

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "best": self.best,
            "left": self.left,
            "frozen_epoch": self.frozen_epoch,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "stop_epoch": self.stop_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.left = state["best"].clone(), state["left"].clone()
        self.frozen_epoch = state["frozen_epoch"].clone()
        self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]
        self.stop_epoch = state["stop_epoch"]
        self.freezer.freeze(self.frozen)  # the loaded weights are the frozen values

    def summary(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "channels": self.channels,
            "frozen_epoch": self.frozen_epoch.tolist(),
            "best_error": [float(b) for b in self.best],
            "nnk": self.nnk.summary(),
        }


class ValidationEarlyStopping(EarlyStopping):
    """Classic early stopping on a held-out stratified share of the training set.

    After each epoch the validation error (1 − accuracy) is computed; training stops when it has
    not improved (strictly) for ``patience`` epochs. ``best_state`` holds the weights of the best
    epoch, restored on stop when ``es_restore`` is set.
    """

    mode = "validation"

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.bad = 0
        self.best_state = None
        self.stop_epoch = 0

    def step(self, error: float, epoch: int) -> tuple[bool, bool]:
        """Record ``error`` of ``epoch``; returns ``(improved, stop)``.

        Example:
            >>> es = ValidationEarlyStopping(patience=2)
            >>> [es.step(e, i + 1)[1] for i, e in enumerate([0.5, 0.4, 0.4, 0.45])]
            [False, False, False, True]
        """
        improved = error < self.best
        if improved:
            self.best, self.best_epoch, self.bad = error, epoch, 0
        else:
            self.bad += 1
        stop = self.bad >= self.patience
        if stop:
            self.stop_epoch = epoch
        return improved, stop

    def update(
        self,
        model: nn.Module,
        d: dict[str, torch.Tensor],
        config: TrainConfig,
        env: DistEnv,
        epoch: int,
        record: dict[str, Any],
    ) -> bool:
        """Evaluate on ``d["val_x"], d["val_y"]``, count patience, log into ``record``; True = stop."""
        val = evaluate(model, d["val_x"], d["val_y"], config, env, prefix="val")
        val["val_error"] = 1.0 - val["val_acc"]
        improved, stop = self.step(val["val_error"], epoch)
        if improved:
            self.best_state = _state_copy(model)
        record.update(val, es_patience=self.patience - self.bad)
        return stop

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad": self.bad,
            "best_state": self.best_state,
            "stop_epoch": self.stop_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.bad = state["best"], state["best_epoch"], state["bad"]
        self.best_state, self.stop_epoch = state["best_state"], state["stop_epoch"]

    def summary(self) -> dict[str, Any]:
        return {"best_val_error": self.best}


def make_early_stopping(config: TrainConfig, model: nn.Module) -> EarlyStopping | None:
    """The early-stopping rule of ``config.early_stop`` for ``model``, or None for ``"none"``.

    Example:
        >>> make_early_stopping(TrainConfig(), nn.Conv2d(1, 2, 3)) is None
        True
    """
    if config.early_stop == "cwnnk":
        return ChannelEarlyStopping(model, config.patience, config.es_k, config.es_solver)
    if config.early_stop == "validation":
        return ValidationEarlyStopping(config.patience)
    return None


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, detached from later training (what ``best_state`` holds)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
