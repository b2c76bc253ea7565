"""The run directory's state on disk: two checkpoints (save, verify, load to resume, restore), the log files' reset.

``checkpoint.pt`` is written atomically after every epoch (temporary file, fsync, rename, fsync of
the folder; :func:`convsim._internal.files.atomic_write`); the one it replaces is kept as
``checkpoint.prev.pt``. Both load with ``torch.load(..., weights_only=True)``. A checkpoint holds
(format 2): ``format``, ``epoch``, ``status`` (one of :data:`STATUSES`; a finished run's is one of
:data:`FINAL_STATUSES`), ``config`` (``asdict``; read it back with
:func:`convsim.training.config.config_from_dict`, which maps renamed fields), ``model`` and
``optimizer`` state dicts, ``scheduler`` (the epoch: the lr schedule is stateless), ``rng`` (torch
CPU/CUDA, numpy, python and the shuffling generator), ``early_stop`` (the stopper's state or None),
``history`` (every epoch's metrics record), ``initial`` (measurements before epoch 1),
``wall_time`` and ``sha256`` (:func:`state_checksum` of everything else). Format 1 (before the
checksum) still loads.

Resuming is :func:`load_checkpoint`: it verifies ``checkpoint.pt`` (:func:`verify_checkpoint`:
it loads, has the format's keys, matches its checksum) and falls back to ``checkpoint.prev.pt``
with a warning naming both files when it does not; with neither usable it raises
:class:`~convsim.training.errors.CheckpointError`. It refuses a config that changed beyond
:data:`convsim.training.config.RESUMABLE_CHANGES`. Then :func:`restore_state` and
:func:`rewrite_metrics`, so that ``metrics.jsonl`` holds exactly the epochs of the checkpoint used.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from convsim._internal.errors import FileWriteError
from convsim._internal.files import atomic_write, atomic_write_text, fsync_dir, remove_temporaries
from convsim._internal.layers import unwrap
from convsim.training.config import CONFIG_FIELDS, RESUMABLE_CHANGES, TrainConfig, config_from_dict
from convsim.training.early_stopping import EarlyStopping
from convsim.training.errors import CheckpointError, CheckpointWriteError, ConfigError

STATUSES = ("running", "complete", "stopped early", "interrupted", "failed")
# The statuses of a run that has delivered its weights: the trainer stops after the epoch that sets one.
# A "complete" run can still be continued to a larger `epochs` (resume); see is_finished.
FINAL_STATUSES = ("complete", "stopped early")

CHECKPOINT = "checkpoint.pt"  # the latest checkpoint: the run's delivered weights once it is finished
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before it, the fallback when the latest is unusable
FORMAT = 2  # 2: with the sha256 checksum; 1: without (still loads)
# The keys every format has; format 2 adds "sha256" (and "format" tells them apart).
REQUIRED_KEYS = (
    "epoch",
    "status",
    "config",
    "model",
    "optimizer",
    "rng",
    "early_stop",
    "history",
    "initial",
    "wall_time",
)
UNUSABLE_CHECKPOINT = "checkpoint.unusable.pt"  # where a resumed run moves a latest checkpoint that failed to verify


def checkpoint_paths(out: str | Path) -> tuple[Path, Path]:
    """``(out/checkpoint.pt, out/checkpoint.prev.pt)``: the latest checkpoint and the one before it."""
    return Path(out) / CHECKPOINT, Path(out) / PREVIOUS_CHECKPOINT


def has_checkpoint(out: str | Path) -> bool:
    """Whether ``out`` holds a checkpoint (the latest or the previous one), usable or not."""
    return any(p.exists() for p in checkpoint_paths(out))


def reset_run_files(out: Path) -> None:
    """Create ``out`` and remove the log files of an earlier, abandoned start (fresh runs only)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "init.jsonl", UNUSABLE_CHECKPOINT):
        (out / name).unlink(missing_ok=True)
    remove_temporaries(out)


def set_aside_unusable(out: Path, ckpt: Mapping[str, Any]) -> None:
    """After a fallback to ``checkpoint.prev.pt`` (``ckpt`` was loaded from it): make it ``checkpoint.pt`` again.

    An unusable ``checkpoint.pt`` is moved to ``checkpoint.unusable.pt`` (for inspection), so the
    next checkpoint cannot push the good one out and a finished run's weights are where
    :func:`~convsim.training.loop.load_run` reads them. Also removes the temporary files of an
    interrupted write. Call on one process only, once every process has read its checkpoint.
    """
    remove_temporaries(out)
    latest, previous = checkpoint_paths(out)
    if Path(ckpt.get("loaded_from", latest)).name != PREVIOUS_CHECKPOINT:
        return
    if latest.exists():
        os.replace(latest, out / UNUSABLE_CHECKPOINT)
    os.replace(previous, latest)
    fsync_dir(out)


def save_checkpoint(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    stopper: EarlyStopping | None,
    history: list[dict[str, Any]],
    initial: dict[str, Any],
    *,
    epoch: int,
    status: str,
    wall: float,
) -> None:
    """Write ``out/checkpoint.pt`` atomically, keeping the one it replaces as ``checkpoint.prev.pt``.

    Raises :class:`~convsim.training.errors.CheckpointWriteError` (naming the file and the reason:
    a full disk, an I/O error) when it cannot be written; the earlier checkpoints are then intact.
    """
    np_state = cast(tuple[Any, ...], np.random.get_state())  # the legacy tuple form (the default)
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "status": status,
        "config": asdict(config),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        # The lr schedule is a pure function of the epoch (lr_factor): its state is `epoch`.
        "scheduler": {"schedule": config.schedule, "epoch": epoch},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
            "shuffle": shuffle_gen.get_state(),
        },
        "early_stop": stopper.state_dict() if stopper is not None else None,
        "history": history,
        "initial": initial,
        "wall_time": wall,
    }
    state["sha256"] = state_checksum(state)
    latest, previous = checkpoint_paths(out)
    try:
        atomic_write(latest, lambda f: torch.save(state, f), previous=previous)
    except FileWriteError as e:
        kept = f"the checkpoint of epoch {epoch - 1} is intact" if epoch > 0 else "no epoch was lost"
        hint = f"{kept}; fix the cause (free space), then continue with `convsim train --resume --out {out}`"
        raise CheckpointWriteError.wrap(latest, e, hint) from e


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's content: every value but ``sha256``, tensors by dtype, shape and bytes.

    Computed from the values, not the file's bytes, so it checks what :func:`torch.load` returns.

    Example:
        >>> state_checksum({"a": torch.zeros(2)}) == state_checksum({"a": torch.zeros(2), "sha256": "x"})
        True
        >>> state_checksum({"a": torch.zeros(2)}) == state_checksum({"a": torch.ones(2)})
        False
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    """Add ``obj`` to the hash ``h``: containers element by element, in order, with their type and length."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:  # numbers, strings, None (repr is exact for floats)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def _reason(e: BaseException) -> str:
    """One line saying why a file did not load (torch's messages span several lines)."""
    text = str(e)
    unpickler = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.S)
    if unpickler:  # not the advice to load with weights_only=False: what went wrong
        text = f"not a torch checkpoint: {unpickler.group(1)}"
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded and checked: its format, its keys and (format 2) its checksum.

    Raises :class:`~convsim.training.errors.CheckpointError` (``"PATH: why"``) when it is missing,
    unreadable, not a convsim checkpoint, or its checksum does not match its content.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or corrupt file fails in many ways (zip, pickle, OSError)
        raise CheckpointError(f"{path}: unreadable ({_reason(e)})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (1, FORMAT):
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a convsim checkpoint (format {found!r}, expected 1 or {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    if ckpt["format"] >= 2 and ckpt.get("sha256") != state_checksum(ckpt):
        raise CheckpointError(f"{path}: checksum mismatch (the content changed after it was written)")
    return ckpt


def read_checkpoint(out: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest usable checkpoint in ``out``: ``checkpoint.pt``, else ``checkpoint.prev.pt``; None without either.

    The returned dict also holds ``loaded_from``, the path it was read from. Falling back to the
    previous checkpoint calls ``warn`` with a message naming both files.
    Raises :class:`~convsim.training.errors.CheckpointError`, naming both files and why each is
    unusable, when ``out`` holds a checkpoint but neither verifies (:func:`verify_checkpoint`).
    """
    latest, previous = checkpoint_paths(out)
    if not has_checkpoint(out):
        return None
    problems = []
    for path in (latest, previous):
        try:
            ckpt = verify_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if path == previous and warn is not None:
            warn(
                f"warning: {problems[0]}; resuming from the previous checkpoint {previous} "
                f"(epoch {ckpt['epoch']}), so the epochs after it are trained again"
            )
        ckpt["loaded_from"] = str(path)
        return ckpt
    raise CheckpointError(
        f"no usable checkpoint in {out}: {problems[0]}; {problems[1]}; restore them from a backup, or "
        f"delete both to train the run again from the start"
    )


def load_checkpoint(out: Path, config: TrainConfig, warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The checkpoint in ``out`` to resume from (see :func:`read_checkpoint`), or None for a fresh run.

    Raises :class:`ConfigError` when ``out`` holds a run but ``config.resume`` is off, or when the
    stored config differs from ``config`` in a field outside ``RESUMABLE_CHANGES`` (all such
    fields are named); :class:`~convsim.training.errors.CheckpointError` when neither checkpoint
    is usable.
    """
    if not has_checkpoint(out):
        return None
    if not config.resume:
        raise ConfigError(
            f"{out} already holds a run ({CHECKPOINT}); pass resume=True (--resume) to continue it "
            f"or choose another out directory"
        )
    ckpt = read_checkpoint(out, warn)
    assert ckpt is not None  # has_checkpoint
    # a field added after the run was stored counts as its default, which the run trained with
    stored, given = asdict(config_from_dict(ckpt["config"])), asdict(config)
    diff = {k: (stored[k], given[k]) for k in CONFIG_FIELDS if k not in RESUMABLE_CHANGES and stored[k] != given[k]}
    if diff:
        detail = "; ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(
            f"cannot resume {out}: the config differs from the stored run ({detail}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )
    return ckpt


def is_finished(ckpt: Mapping[str, Any], config: TrainConfig) -> bool:
    """A stopped-early run is final; a complete (or running) one is finished once it reached ``epochs``.

    Example:
        >>> is_finished({"status": "complete", "epoch": 2}, TrainConfig(epochs=3))
        False
    """
    return ckpt["status"] == "stopped early" or ckpt["epoch"] >= config.epochs


def restore_state(
    ckpt: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle_gen: torch.Generator,
    stopper: EarlyStopping | None,
) -> None:
    """Load weights, optimizer, early-stopping state and every RNG state from a checkpoint."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if stopper is not None:
        stopper.load_state_dict(ckpt["early_stop"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    shuffle_gen.set_state(rng["shuffle"])


def rewrite_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Make ``out/metrics.jsonl`` the checkpoint's history, one line per epoch.

    Drops lines written after the checkpoint and repairs a torn last line; the file is left alone
    when it already matches.
    """
    path = out / "metrics.jsonl"
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)


def stored_config(out: str | Path) -> TrainConfig | None:
    """The config stored in ``out``'s checkpoint (the previous one when the latest is unusable), or None without one.

    Raises :class:`~convsim.training.errors.CheckpointError` when ``out`` holds checkpoints but
    neither is usable.
    """
    ckpt = read_checkpoint(out)
    return None if ckpt is None else config_from_dict(ckpt["config"])


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of the checkpoint at ``path`` (a run's delivered weights), checksum verified.

    Raises :class:`~convsim.training.errors.CheckpointError` when it is unreadable, has no
    ``model`` or fails its checksum; resuming the run rebuilds it from the previous checkpoint.
    """
    path = Path(path)
    fix = f"resume the run (`convsim train --resume --out {path.parent}`) to rebuild it from {PREVIOUS_CHECKPOINT}"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or corrupt file fails in many ways (zip, pickle, OSError)
        raise CheckpointError(f"{path}: unreadable ({_reason(e)}); {fix}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: holds no model weights; {fix}")
    if "sha256" in ckpt and ckpt["sha256"] != state_checksum(ckpt):
        raise CheckpointError(f"{path}: checksum mismatch (the content changed after it was written); {fix}")
    return ckpt["model"]
