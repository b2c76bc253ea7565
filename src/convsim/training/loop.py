r"""Train one CNN with the CS regulariser, the CS initialisation or a baseline penalty: ``convsim train``.

Reading order: :func:`train` (device, threads, process group) → :func:`_train` (the run, top to
bottom) → its set-up (:func:`make_regularisers`, a fresh start or a resumption) → one epoch
(:func:`_run_epoch`: :func:`train_epoch` and :func:`train_step`, evaluation, early stopping,
checkpoint, log) → :func:`load_run`. Every hyperparameter is a field of
:class:`~convsim.training.config.TrainConfig`; the loop's other pieces live beside it, each
imported from its own module: :mod:`convsim.training.data` (the tensors),
:mod:`convsim.training.optim` (optimizer, lr schedule, CS initialisation),
:mod:`convsim.training.evaluation` (accuracy, redundancy measurements),
:mod:`convsim.training.early_stopping`, :mod:`convsim.training.checkpoint` (save, resume),
:mod:`convsim.training.summary` (``summary.json``), :mod:`convsim.training.loggers` (``--log``) and
:mod:`convsim.training.distributed` (device, threads, DDP).

The objective of one step on a batch :math:`(x, y)` is

.. math::
    \mathcal L = \mathrm{CE}(f(x), y) + \beta\,L_{CS}(\text{model}) + \beta_P\,P(\text{model})

with :math:`L_{CS}` the Convolutional Similarity (:class:`convsim.similarity.ConvSimilarity`,
only when :math:`\beta > 0`; ``cs_mode="decoupled"`` takes its gradient step apart, after the
optimizer's) and :math:`P` a baseline penalty (:class:`convsim.penalties.Penalty`, only when one is
chosen; :math:`\beta_P` is ``penalty_beta``). Optionally the conv weights are first moved by
``init_iters`` steps minimising :math:`L_{CS}` alone (the CS initialisation, spec §9.2).

Files written to ``config.out`` (by rank 0 only):

``metrics.jsonl``
    one JSON line per finished epoch: ``epoch, lr, train_loss`` (mean cross-entropy),
    ``train_acc, reg_loss`` (mean of the added regulariser terms), ``train_samples, test_loss, test_acc, cs``
    (all-pairs per-channel CS summed over conv layers, unweighted, unnormalised),
    ``kernel_cosine, fm_similarity`` (mean :math:`|\cos|` of uncentred feature maps on a fixed test
    batch), ``fm_similarity_centered, fm_effective_rank, seconds``, plus the early-stopping
    fields (``es_*``, ``val_*``).
``init.jsonl``
    ``{"step", "cs"}`` per CS-initialisation step: the CS before step ``s`` for
    ``s = 0..I-1`` and after the last one (``s = I``).
``checkpoint.pt``
    written atomically after every epoch: model, optimizer, RNG states (torch CPU/CUDA, numpy,
    python, the shuffling generator), epoch, early-stopping state, the metrics history and a
    checksum. The checkpoint it replaces is kept as ``checkpoint.prev.pt``.
``summary.json``
    config, seed, versions, device, wall time, status and the final metrics.
``metrics.csv`` or ``tensorboard/``
    the per-epoch log ``log`` chooses (:mod:`convsim.training.loggers`; ``none``: neither).

Resuming (``resume=True``) continues from ``checkpoint.pt`` to ``epochs``; one epoch, resume, one
epoch gives bit-identical metrics (except ``seconds``) to two epochs straight on CPU. When
``checkpoint.pt`` is unusable (unreadable, or its checksum fails) the run resumes from
``checkpoint.prev.pt`` with a warning (:func:`convsim.training.checkpoint.load_checkpoint`).
``metrics.jsonl`` is rebuilt from the history of the checkpoint used, so it holds exactly its
epochs (a torn last line is repaired); so is ``metrics.csv``, and TensorBoard hides the events of
epochs trained again. Ctrl-C or SIGKILL loses at most the running epoch.

Example:
    >>> from convsim.training import TrainConfig, train
    >>> summary = train(TrainConfig(dataset="synthetic", epochs=1, train_subset=200,
    ...                             test_subset=100, out="/tmp/convsim-doc-run", verbose=False))  # doctest: +SKIP
    >>> summary["status"]  # doctest: +SKIP
    'complete'
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convsim import data as _data
from convsim import models as _models
from convsim._internal.files import append_jsonl, atomic_write_json
from convsim.penalties import Penalty
from convsim.similarity import ConvSimilarity
from convsim.training import distributed
from convsim.training.checkpoint import (
    CHECKPOINT,
    FINAL_STATUSES,
    is_finished,
    load_checkpoint,
    load_weights,
    reset_run_files,
    restore_state,
    rewrite_metrics,
    save_checkpoint,
    set_aside_unusable,
)
from convsim.training.config import TrainConfig, config_from_dict
from convsim.training.data import load_data
from convsim.training.distributed import DistEnv, default_threads, resolve_device
from convsim.training.early_stopping import ChannelFreezer, EarlyStopping, make_early_stopping
from convsim.training.errors import ConfigError, RunDirectoryError
from convsim.training.evaluation import autocast_context, evaluate, measure_redundancy
from convsim.training.generative import Scorer, cs_target, generative_epoch, make_scorer
from convsim.training.loggers import RunLogger, layer_redundancy, make_logger
from convsim.training.optim import cs_initialization, cs_options, make_optimizer, set_learning_rate
from convsim.training.summary import make_summary, state_digest, tensor_digest

# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one model as ``config`` says and return its summary (also in ``config.out/summary.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process calls this; the model is wrapped in
    DistributedDataParallel, each global batch is split rank-strided, metrics are summed over
    ranks and only rank 0 writes files. See the module docstring for the files and resume rules.
    A script of your own launched by torchrun should end as :func:`convsim.cli.entry` does
    (``os._exit`` after flushing), or gloo may abort it at interpreter shutdown.

    Raises:
        ConfigError: (a ``ValueError``) ``out`` already holds a run and ``resume`` is off; a
            resumed run's stored config differs in a field other than
            :data:`~convsim.training.config.RESUMABLE_CHANGES`; the model cannot take the
            dataset's images; under DDP, ``batch_size`` is not a multiple of the number of processes.
        CheckpointError: ``out`` holds checkpoints but neither ``checkpoint.pt`` nor
            ``checkpoint.prev.pt`` is usable; (as ``CheckpointWriteError``) a checkpoint could not
            be written, the earlier ones are intact.
        KeyboardInterrupt: re-raised after marking the summary ``"interrupted"``; the last
            checkpoint stays valid.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    device = resolve_device(config.device)
    env = distributed.setup(device.type)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or default_threads(env))
    finished = False
    try:
        summary = _train(config, device, env)
        finished = True
        return summary
    finally:
        torch.set_num_threads(old_threads)
        distributed.teardown(env, drain=finished)


def _train(config: TrainConfig, device: torch.device, env: DistEnv) -> dict[str, Any]:
    """One run in this process: set up (or resume), train epoch by epoch until a final status, summarise."""
    t_start = time.perf_counter()
    out = Path(config.out)
    if config.batch_size % env.world_size:
        raise ConfigError(
            f"batch_size ({config.batch_size}) is the global batch and must be a multiple of the "
            f"number of processes ({env.world_size}) so that every rank gets an equal share"
        )
    if env.enabled and config.model == "dcgan":
        raise ConfigError(
            "dcgan trains in one process (its alternating steps are not wrapped for DDP); run it without torchrun"
        )
    logger = make_logger(config, env)  # before any file is written: a missing tensorboard fails at once
    ckpt = load_checkpoint(out, config, warn=_warn if env.is_main else None)
    distributed.barrier(env)  # every rank has looked for a checkpoint before rank 0 writes one
    if ckpt is not None and is_finished(ckpt, config):
        return _existing_summary(out, ckpt, config, env, device, logger)
    run = _set_up(config, device, env, ckpt, t_start, logger)
    _write_summary(run, "running")
    status = "running"
    try:
        for epoch in range(run.start_epoch + 1, config.epochs + 1):
            status = _run_epoch(run, epoch)
            if status in FINAL_STATUSES:  # the last epoch, or early stopping
                break
    except KeyboardInterrupt:
        _write_summary(run, "interrupted")
        raise
    except Exception as e:
        with contextlib.suppress(OSError):  # a full disk must not hide the error that stopped the run
            _write_summary(run, "failed", {"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        run.regularisers.remove()
        run.logger.close()
    ddp = None
    if env.enabled:  # every rank takes part in the weight comparison
        ddp = {
            "ddp": {
                "world_size": env.world_size,
                "backend": env.backend,
                "max_weight_difference": distributed.max_weight_difference(run.model, env),
            }
        }
    return _write_summary(run, status, ddp)


# ----------------------------------------------------------------------------------------------
# Set-up: seeds, model, regularisers, then a fresh start or a resumption
# (data, optimizer, CS initialisation: convsim.training.data, convsim.training.optim)
# ----------------------------------------------------------------------------------------------


@dataclass
class Regularisers:
    """The terms a run adds to cross-entropy.

    ``in_loss`` are added to every step's loss, each already weighted (the CS loss with
    ``cs_mode="loss"``, a baseline penalty). ``decoupled`` is the CS of ``cs_mode="decoupled"``:
    its own gradient step (:meth:`~convsim.similarity.ConvSimilarity.step`) follows each
    optimizer step, outside the optimizer's momentum.
    """

    in_loss: list[ConvSimilarity | Penalty] = field(default_factory=list)
    decoupled: ConvSimilarity | None = None

    def remove(self) -> None:
        """Remove the forward hooks some penalties keep on the model (``"decov"``)."""
        for reg in self.in_loss:
            if isinstance(reg, Penalty):
                reg.remove()


def make_regularisers(config: TrainConfig, model: nn.Module) -> Regularisers:
    """The CS regulariser of ``config`` (``beta > 0``; in the loss or decoupled, per ``cs_mode``) and its penalty.

    Both act on :func:`~convsim.training.generative.cs_target` of the model: the whole classifier,
    a VAE's decoder or a DCGAN's generator.

    Example:
        >>> regs = make_regularisers(TrainConfig(beta=0.1, cs_mode="decoupled"), _models.build("cnn1"))
        >>> regs.in_loss, type(regs.decoupled).__name__
        ([], 'ConvSimilarity')
    """
    regs = Regularisers()
    model = cs_target(model)  # a VAE's decoder, a DCGAN's generator
    if config.beta > 0:
        cs = ConvSimilarity(model, beta=config.beta, **cs_options(config))
        if config.cs_mode == "decoupled":
            regs.decoupled = cs
        else:
            regs.in_loss.append(cs)
    if config.penalty != "none":
        regs.in_loss.append(Penalty(model, config.penalty, beta=config.penalty_beta))
    return regs


@dataclass
class _Run:
    """Everything the epochs of one run share (set up by :func:`_set_up`)."""

    config: TrainConfig
    out: Path
    env: DistEnv
    device: torch.device
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper that training steps go through
    optimizer: torch.optim.Optimizer
    shuffle_gen: torch.Generator
    regularisers: Regularisers
    stopper: EarlyStopping | None
    data: dict[str, torch.Tensor]
    logger: RunLogger  # the per-epoch log of config.log (rank 0; others log nothing)
    scorer: Scorer | None  # vae, dcgan: the FD classifier and the test set's feature statistics
    t_start: float  # time.perf_counter() when this process started the run
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    initial: dict[str, Any] = field(default_factory=dict)  # measurements before the first epoch
    wall_before: float = 0.0  # wall time of earlier sessions of a resumed run
    start_epoch: int = 0  # epochs already done

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start


def _set_up(
    config: TrainConfig,
    device: torch.device,
    env: DistEnv,
    ckpt: dict[str, Any] | None,
    t_start: float,
    logger: RunLogger,
) -> _Run:
    """Seeds, data, model, optimizer, regularisers and early stopping; then a fresh start or the checkpoint's state."""
    # 1. Seed everything (the same on every rank: identical model init and shuffling order).
    seed_everything(config.seed)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    # 2. Data: whole splits as normalised float32 tensors on the device.
    fmt = _memory_format(config)
    data = load_data(config, device, fmt)
    # 3. Model, optimizer, regularisers, early stopping.
    model = build_model(config).to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    init_digest = state_digest(model)  # before any CS initialisation: pairs runs by seed
    optimizer = make_optimizer(config, model)
    run = _Run(
        config,
        Path(config.out),
        env,
        device,
        model,
        model,
        optimizer,
        shuffle_gen,
        make_regularisers(config, model),
        make_early_stopping(config, model),
        data,
        logger,
        make_scorer(config, model, data, device),
        t_start,
    )
    # 4. Fresh start (optional CS initialisation) or resumption from the checkpoint; the log follows.
    if ckpt is None:
        _start_fresh(run, init_digest)
    else:
        _resume(run, ckpt)
    logger.start(run.history)
    # 5. Data parallel: wrap after the CS init so DDP's start-up broadcast syncs every rank to rank 0.
    if env.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        run.net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return run


def _start_fresh(run: _Run, init_digest: str) -> None:
    """Clear old log files, run the CS initialisation, measure the initial model, write checkpoint epoch 0."""
    if run.env.is_main:
        reset_run_files(run.out)
    init_cs = cs_initialization(run.config, cs_target(run.model), run.optimizer, run.out, run.env)
    run.initial = _measure(run) if run.env.is_main else {}
    if run.scorer is not None:  # which classifier the run's FD values are measured with
        run.initial["fd_classifier"] = run.scorer.classifier.describe()
    run.initial["init_cs"] = init_cs
    run.initial["weights_sha256"] = init_digest
    if run.env.is_main:
        save_checkpoint(
            run.out,
            run.config,
            run.model,
            run.optimizer,
            run.shuffle_gen,
            run.stopper,
            run.history,
            run.initial,
            epoch=0,
            status="running",
            wall=run.wall(),
        )


def _resume(run: _Run, ckpt: dict[str, Any]) -> None:
    """Load the checkpoint's weights, optimizer, RNG and early-stopping state, history and wall time."""
    restore_state(ckpt, run.model, run.optimizer, run.shuffle_gen, run.stopper)
    run.history, run.initial, run.wall_before = ckpt["history"], ckpt["initial"], ckpt["wall_time"]
    run.start_epoch = ckpt["epoch"]
    if run.env.is_main:  # metrics.jsonl holds exactly the checkpoint's epochs
        set_aside_unusable(run.out, ckpt)
        rewrite_metrics(run.out, run.history)


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> nn.Module:
    """The (untrained) architecture of ``config`` for its dataset's channels, classes and image size.

    A combination the architecture cannot take (e.g. cnn1 on 8×8 digits) raises :class:`ConfigError`.
    """
    info = _data.DATASETS[config.dataset]
    try:
        return _models.build(
            config.model, in_channels=info.channels, num_classes=info.classes, width=config.width, input_size=info.size
        )
    except ValueError as e:
        raise ConfigError(f"model {config.model!r} (width {config.width}) on {config.dataset}: {e}") from e


# ----------------------------------------------------------------------------------------------
# One epoch of the run: train, evaluate, measure, early stopping, checkpoint, log
# ----------------------------------------------------------------------------------------------


def _run_epoch(run: _Run, epoch: int) -> str:
    """Train and score ``epoch``, apply early stopping, checkpoint and log it; returns the run's status after it."""
    t0 = time.perf_counter()
    config, stopper = run.config, run.stopper
    record = _train_and_score(run, epoch)
    # per-layer measurements for the log, of the weights the record scored (before any early-stop restore)
    layers = layer_redundancy(cs_target(run.model), run.data["fm_x"]) if run.logger.per_layer else None
    stop = False
    if stopper is not None:
        threads = torch.get_num_threads()
        stop = stopper.update(run.model, run.data, config, run.env, epoch, record)
        # numba's parallel NNK kernels (channel-wise early stopping) share OpenMP with torch and leave its
        # thread count at numba's default; the next epochs must train with the run's own, or a resumed run
        # (and a second run in one process) would not repeat an uninterrupted one bit for bit.
        torch.set_num_threads(threads)
        if stop and config.es_restore:
            stopper.restore(run.model)
    status = "stopped early" if stop else ("complete" if epoch == config.epochs else "running")
    record["seconds"] = time.perf_counter() - t0
    if run.env.is_main:
        # Checkpoint first, then the metrics line: metrics never run ahead of the checkpoint.
        save_checkpoint(
            run.out,
            config,
            run.model,
            run.optimizer,
            run.shuffle_gen,
            stopper,
            run.history + [record],
            run.initial,
            epoch=epoch,
            status=status,
            wall=run.wall(),
        )
        append_jsonl(run.out / "metrics.jsonl", record)
        run.logger.log_epoch(record, layers)
        _print_epoch(config, record)
    run.history.append(record)
    _write_summary(run, status)
    return status


def _train_and_score(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the shuffled training set, then the test metrics and (rank 0) the redundancy measurements."""
    config, d = run.config, run.data
    lr = set_learning_rate(run.optimizer, config, epoch)
    perm = torch.randperm(d["train_x"].shape[0], generator=run.shuffle_gen)
    desc = f"epoch {epoch}/{config.epochs}"
    if run.scorer is None:
        train_stats = train_epoch(
            run.net,
            d["train_x"],
            d["train_y"],
            perm,
            config,
            run.optimizer,
            run.regularisers.in_loss,
            run.stopper,
            run.env,
            run.device,
            desc=desc,
            decoupled=run.regularisers.decoupled,
        )
    else:
        train_stats = generative_epoch(
            run.net,
            d["train_x"],
            _progress(minibatches(perm, config, run.env, run.device), desc, _show_progress(run.env, config)),
            run.optimizer,
            run.regularisers.in_loss,
            lambda: autocast_context(config, run.device),
            run.env,
            run.regularisers.decoupled,
        )
    record = {"epoch": epoch, "lr": lr, **train_stats, "order_sha256": tensor_digest(perm)}
    if run.scorer is None:
        record.update(evaluate(run.model, d["test_x"], d["test_y"], config, run.env, prefix="test"))
    if run.env.is_main:
        record.update(_measure(run))
    return record


def _measure(run: _Run) -> dict[str, Any]:
    """Rank 0's measurements of the current weights: redundancy of the CS target; FD and NELBO of a generative model."""
    if run.scorer is not None:
        return run.scorer.score(run.model)
    return measure_redundancy(run.model, run.data["fm_x"])


def _write_summary(run: _Run, status: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's summary with ``status`` (plus ``extra`` keys), written to ``summary.json`` by rank 0."""
    summary = make_summary(run.config, status, run.history, run.initial, run.stopper, run.env, run.device, run.wall())
    summary.update(extra or {})
    if run.env.is_main:
        atomic_write_json(run.out / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------------------------
# One pass over the training set, one step
# ----------------------------------------------------------------------------------------------


def train_step(
    net: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    regularisers: Sequence[nn.Module],
    freezer: ChannelFreezer | None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    decoupled: ConvSimilarity | None = None,
) -> torch.Tensor:
    """One optimizer step on one (local) batch.

    Loss: mean cross-entropy + the sum of the regularisers' values (each already weighted).
    With ``decoupled`` (a :class:`convsim.similarity.ConvSimilarity`), its
    :meth:`~convsim.similarity.ConvSimilarity.step` follows the optimizer step at the optimizer's
    current lr, and its value counts as regulariser value.
    Frozen channels (channel-wise early stopping) get zero gradient before the step and their
    exact values back after it, so momentum, weight decay and decoupled CS cannot move them.

    Returns a detached float64 vector ``[sum of CE over the batch, number correct, batch size,
    regulariser value]``.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits = net(xb)
    ce = F.cross_entropy(logits.float(), yb)
    reg = torch.stack([r() for r in regularisers]).sum() if regularisers else ce.new_zeros(())
    (ce + reg).backward()
    if freezer is not None:
        freezer.zero_frozen_grads()
    optimizer.step()
    if decoupled is not None:
        reg = reg + decoupled.step(lr=optimizer.param_groups[0]["lr"])
    if freezer is not None:
        freezer.restore_frozen()
    n = yb.shape[0]
    correct = (logits.detach().argmax(1) == yb).sum()
    return torch.stack(
        [ce.detach().double() * n, correct.double(), ce.new_tensor(n, dtype=torch.float64), reg.detach().double()]
    )


def train_epoch(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    regularisers: Sequence[nn.Module],
    stopper: EarlyStopping | None,
    env: DistEnv,
    device: torch.device,
    desc: str = "",
    decoupled: ConvSimilarity | None = None,
) -> dict[str, float]:
    """One pass over the shuffled training set in global batches of ``batch_size``.

    Under DDP the permutation is cut to a multiple of the world size (at most world−1 samples of
    the epoch are skipped, different ones each epoch) and every global batch is split
    rank-strided; with ``drop_last`` a short last batch is skipped. The channels ``stopper``
    froze stay frozen through every step. Returns the epoch means
    ``train_loss`` (cross-entropy), ``train_acc`` and ``reg_loss`` (the added regulariser terms,
    per step), and ``train_samples`` (images seen this epoch), all reduced over ranks.
    """
    net.train()
    batches = minibatches(perm, config, env, device)
    freezer = stopper.freezer if stopper is not None else None
    autocast = lambda: autocast_context(config, device)  # noqa: E731
    fmt = _memory_format(config)
    show = _show_progress(env, config)
    bar = _progress(batches, desc, show)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for step, idx in enumerate(bar):
        idx = distributed.shard(idx, env)
        xb = x[idx].contiguous(memory_format=fmt)
        sums += train_step(net, xb, y[idx], optimizer, regularisers, freezer, autocast, decoupled)
        if show and step % 20 == 0:
            bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}")
    steps = torch.tensor([len(batches)], dtype=torch.float64, device=device)
    sums = distributed.all_reduce_sum(torch.cat([sums, steps]), env)
    ce_sum, correct, count, reg_sum, n_steps = sums.tolist()
    return {
        "train_loss": ce_sum / count,
        "train_acc": correct / count,
        "reg_loss": reg_sum / n_steps,
        "train_samples": int(count),
    }


def minibatches(perm: torch.Tensor, config: TrainConfig, env: DistEnv, device: torch.device) -> list[torch.Tensor]:
    """The epoch's global batches: ``perm`` (cut to a multiple of the world size under DDP) in
    pieces of ``batch_size``, without a short last one when ``drop_last``."""
    if env.enabled:
        perm = perm[: len(perm) - len(perm) % env.world_size]
    batches = list(torch.split(perm.to(device), config.batch_size))
    if config.drop_last and len(batches) > 1 and len(batches[-1]) < config.batch_size:
        batches.pop()
    return batches


def _show_progress(env: DistEnv, config: TrainConfig) -> bool:
    return env.is_main and config.verbose and sys.stderr.isatty()


def _progress(items: list[torch.Tensor], desc: str, show: bool) -> Any:
    """``items`` as they are, or (``show``) wrapped in a tqdm progress bar."""
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _print_epoch(config: TrainConfig, r: dict[str, Any]) -> None:
    if not config.verbose:
        return
    extra = ""
    if "es_frozen_count" in r:
        extra = f" frozen {r['es_frozen_count']}/{len(r['es_frozen'])}"
    elif "val_error" in r:
        extra = f" val_err {r['val_error']:.4f}"
    if "test_acc" in r:
        scores = f"loss {r['train_loss']:.4f}  acc {r['train_acc']:.4f}  test {r['test_acc']:.4f}"
    elif "test_nelbo" in r:
        scores = f"nelbo {r['train_nelbo']:.2f}  test {r['test_nelbo']:.2f}  fd {r['fd']:.4g}"
    else:
        scores = f"d {r['d_loss']:.4f}  g {r['g_loss']:.4f}  fd {r['fd']:.4g}"
    print(
        f"epoch {r['epoch']:>3}/{config.epochs}  {scores}  cs {r['cs']:.4g}  fm {r['fm_similarity']:.3f}{extra}  "
        f"{r['seconds']:.1f}s",
        flush=True,
    )


# ----------------------------------------------------------------------------------------------
# Finished runs
# ----------------------------------------------------------------------------------------------


def _existing_summary(
    out: Path, ckpt: dict[str, Any], config: TrainConfig, env: DistEnv, device: torch.device, logger: RunLogger
) -> dict[str, Any]:
    """The summary of a finished run (resumed with nothing left to train), rewritten if stale.

    ``metrics.jsonl`` (a torn last line, say) and the log (``metrics.csv``) are repaired from the
    checkpoint when they differ.
    """
    if env.is_main:
        set_aside_unusable(out, ckpt)
        rewrite_metrics(out, ckpt["history"])
    logger.start(ckpt["history"])
    logger.close()
    path = out / "summary.json"
    if path.exists():
        summary: dict[str, Any] = json.loads(path.read_text())
        if summary.get("epochs_run") == ckpt["epoch"] and summary.get("status") == ckpt["status"]:
            return summary
    stopper = make_early_stopping(config, build_model(config)) if ckpt["early_stop"] is not None else None
    if stopper is not None:  # rebuilt for its summary fields
        stopper.load_state_dict(ckpt["early_stop"])
    summary = make_summary(
        config, ckpt["status"], ckpt["history"], ckpt["initial"], stopper, env, device, ckpt["wall_time"]
    )
    if env.is_main:
        atomic_write_json(path, summary)
    return summary


def load_run(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild a trained model from a run directory, on CPU, in eval mode.

    Reads the config from ``RUN_DIR/summary.json`` (through :func:`~convsim.training.config.config_from_dict`,
    so runs stored with older field names load too), builds the architecture and loads the weights
    of ``RUN_DIR/checkpoint.pt`` (the delivered weights; see :func:`convsim.training.summary.make_summary`).

    Returns:
        ``(model, config, summary)``.

    Raises:
        RunDirectoryError: (a ``FileNotFoundError``) ``run_dir`` is missing, or is not a run
            (no ``summary.json`` or ``checkpoint.pt``, or a ``summary.json`` without a config).
        CheckpointError: ``checkpoint.pt`` is unreadable or fails its checksum.

    Example:
        >>> model, config, summary = load_run("runs/train")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise RunDirectoryError(f"{run_dir} {what}; expected a run directory written by `convsim train --out DIR`")
    for name in ("summary.json", CHECKPOINT):
        if not (run_dir / name).exists():
            raise RunDirectoryError(
                f"{run_dir} is not a training run: {name} is missing (finish it with `convsim train --resume --out "
                f"{run_dir}`, or pass the run directory itself)"
            )
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        stored = summary["config"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise RunDirectoryError(
            f"{run_dir / 'summary.json'} is unreadable or holds no config ({type(e).__name__}: {e}); "
            f"rewrite it with `convsim train --resume --out {run_dir}`"
        ) from e
    config = config_from_dict(stored)
    model = build_model(config)
    model.load_state_dict(load_weights(run_dir / CHECKPOINT))
    model.eval()
    return model, config, summary


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
