"""A run's ``summary.json``: config, environment, status and the metrics of the delivered weights.

:func:`make_summary` is called after every epoch (status ``"running"``), at the end
(``"complete"`` / ``"stopped early"``) and on failure (``"interrupted"`` / ``"failed"``), so
the file follows the checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convsim.training.config import TrainConfig
from convsim.training.distributed import DistEnv
from convsim.training.early_stopping import EarlyStopping

FINAL_KEYS = (
    "test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "cs",
    "kernel_cosine",
    "fm_similarity",
    "fm_similarity_centered",
    "fd",  # the generative models' scores
    "test_nelbo",
)


def make_summary(
    config: TrainConfig,
    status: str,
    history: list[dict[str, Any]],
    initial: dict[str, Any],
    stopper: EarlyStopping | None,
    env: DistEnv,
    device: torch.device,
    wall: float,
) -> dict[str, Any]:
    """The run's ``summary.json``.

    Top-level metrics (``test_acc, test_loss, train_acc, train_loss, cs, kernel_cosine,
    fm_similarity, fm_similarity_centered``) describe the delivered weights (those in
    ``checkpoint.pt``): the last epoch's record, or the restored epoch's after early stopping with
    ``es_restore``. ``final`` is always the last epoch's record; ``initial`` the measurements
    before the first epoch (after the CS initialisation).

    Example:
        >>> s = make_summary(TrainConfig(), "running", [], {}, None, DistEnv(), torch.device("cpu"), 0.0)
        >>> s["epochs_run"], s["test_acc"], s["early_stop"]
        (0, None, None)
    """
    delivered_epoch = history[-1]["epoch"] if history else 0
    early = None
    if stopper is not None:
        stopped = status == "stopped early"
        restored = stopped and config.es_restore and stopper.best_state is not None
        if restored:
            delivered_epoch = stopper.best_epoch
        early = {
            "mode": stopper.mode,
            "stopped": stopped,
            "stop_epoch": stopper.stop_epoch if stopped else None,
            "best_epoch": stopper.best_epoch,
            "restored": restored,
            "restore_epoch": stopper.best_epoch if restored else None,
            "test_acc_at_stop": history[-1]["test_acc"] if stopped else None,
            **stopper.summary(),
        }
    delivered = next((r for r in history if r["epoch"] == delivered_epoch), {})
    if early is not None and early["restored"]:
        early["test_acc_restored"] = delivered.get("test_acc")
    scored = [r for r in history if "test_acc" in r]  # a generative model has no accuracy
    best = max(scored, key=lambda r: r["test_acc"]) if scored else {}
    summary = {
        "status": status,
        "epochs_run": history[-1]["epoch"] if history else 0,
        "delivered_epoch": delivered_epoch,
        "config": asdict(config),
        "seed": config.seed,
        "versions": versions(),
        "git": _git_revision(),
        "device": _device_name(device),
        "machine": machine(),
        "world_size": env.world_size,
        "threads": torch.get_num_threads(),
        "wall_time": wall,
        "initial": initial,
        "final": history[-1] if history else None,
        "best_test_acc": best.get("test_acc"),
        "best_test_epoch": best.get("epoch"),
        "early_stop": early,
    }
    summary.update({k: delivered.get(k) for k in FINAL_KEYS})
    return summary


def headline(summary: Mapping[str, Any]) -> str:
    """A run's score in a few words: its test accuracy, or a generative model's FD.

    Example:
        >>> headline({"test_acc": 0.8512}), headline({"test_acc": None, "fd": 12.345})
        ('test_acc 0.8512', 'fd 12.35')
    """
    if summary.get("test_acc") is not None:
        return f"test_acc {summary['test_acc']:.4f}"
    fd = summary.get("fd")
    return f"fd {fd:.4g}" if fd is not None else "no score yet"


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes in standard layout (any dtype, any device).

    Logged per epoch for the shuffling order, so two runs can be shown to have seen the same batches.

    Example:
        >>> tensor_digest(torch.arange(3)) == tensor_digest(torch.arange(3)), len(tensor_digest(torch.zeros(1)))
        (True, 64)
    """
    return hashlib.sha256(_bytes(t)).hexdigest()


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names and bytes, in order): shows two runs started alike.

    Example:
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> state_digest(a) == state_digest(a), state_digest(a) == state_digest(b)
        (True, False)
    """
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(_bytes(value))
    return h.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """The host: CPU model (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), logical CPUs, OS.

    Example:
        >>> sorted(machine())
        ['cpu', 'logical_cpus', 'platform']
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict[str, str]:
    """Versions of convsim, Python and the libraries a run depends on."""
    from convsim import __version__

    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "convsim": __version__,
    }


@functools.lru_cache(maxsize=1)
def _git_revision() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
