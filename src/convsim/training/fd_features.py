"""The feature extractor of convsim's ``fd`` metric: a classifier convsim trains once and caches.

No pretrained Inception network can be fetched here, so the Fréchet distance of generated images
(:mod:`convsim.frechet`) is measured in the penultimate layer (global average pool, 64 features) of
a ``cnn2`` that ``convsim train`` fits to the dataset with a fixed recipe (:data:`RECIPE`, seed 0).
The run lives in ``$CONVSIM_CACHE/fd-classifier/<dataset>-<recipe digest>/`` (default
``~/.cache/convsim``); ``fd-classifier.json`` beside it records the weights' SHA-256, which every
later load checks and every generative run stores in its summary. A file lock lets parallel runs
share one training. FD values are comparable only between runs with the same classifier digest,
never with the Inception FID of the literature.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convsim import data as _data
from convsim._internal.errors import UserError
from convsim._internal.files import atomic_write_json
from convsim._internal.modes import eval_mode
from convsim.frechet import gaussian_statistics
from convsim.training.config import TrainConfig
from convsim.training.summary import state_digest

CACHE_ENV = "CONVSIM_CACHE"
#: How the classifier is trained (a TrainConfig's fields; the dataset, out and threads are added).
RECIPE: dict[str, Any] = dict(
    model="cnn2", epochs=5, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=128, schedule="cosine", seed=0
)


class FDClassifierError(UserError, RuntimeError):
    """The cached FD classifier does not match its recorded checksum."""


@dataclass
class FDClassifier:
    """A trained classifier cut before its last layer: :meth:`features` of images in [0, 1]."""

    body: nn.Module
    dataset: str
    sha256: str
    test_acc: float
    path: Path

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Penultimate features (N, d), float32, of images (N, C, H, W) in [0, 1] (normalised here)."""
        info = _data.DATASETS[self.dataset]
        mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1)
        with eval_mode(self.body):
            return torch.cat([self.body((chunk.float() - mean) / std) for chunk in images.split(batch)])

    def statistics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance (float64) of the features of ``images``."""
        return gaussian_statistics(self.features(images))

    def describe(self) -> dict[str, Any]:
        """What a run records about the classifier it was scored with."""
        return {"dataset": self.dataset, "sha256": self.sha256, "test_acc": self.test_acc, "recipe": RECIPE}


def cache_root() -> Path:
    """``$CONVSIM_CACHE`` or ``~/.cache/convsim``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else _data.cache_dir()


def classifier_dir(dataset: str, root: Path | None = None) -> Path:
    """The cached run's folder: named by the dataset and a digest of :data:`RECIPE`."""
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    return (root or cache_root()) / "fd-classifier" / f"{dataset}-{digest}"


def fd_classifier(
    dataset: str, *, root: Path | None = None, data_dir: str | None = None, threads: int = 0
) -> FDClassifier:
    """The dataset's FD classifier: loaded from the cache, or trained there first (minutes on a CPU).

    Raises :class:`FDClassifierError` when the cached weights no longer match their recorded SHA-256.
    """
    folder = classifier_dir(dataset, root)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs wait for one training
        record = folder / "fd-classifier.json"
        if not record.exists():
            _train_classifier(dataset, folder, data_dir, threads)
        return _load_classifier(dataset, folder)


def _train_classifier(dataset: str, folder: Path, data_dir: str | None, threads: int) -> None:
    from convsim.training.loop import load_run, train  # the loop imports this module

    config = TrainConfig(
        **RECIPE, dataset=dataset, data_dir=data_dir, out=str(folder / "run"), resume=True, threads=threads
    )
    config.verbose = False
    summary = train(config)
    model, _, _ = load_run(folder / "run")
    atomic_write_json(
        folder / "fd-classifier.json",
        {"sha256": state_digest(model), "test_acc": summary["final"]["test_acc"], "recipe": RECIPE},
    )


def _load_classifier(dataset: str, folder: Path) -> FDClassifier:
    from convsim.training.loop import load_run

    record = json.loads((folder / "fd-classifier.json").read_text())
    model, _, _ = load_run(folder / "run")
    digest = state_digest(model)
    if digest != record["sha256"]:
        raise FDClassifierError(
            f"the cached FD classifier in {folder} has weights {digest[:12]}…, not the recorded "
            f"{record['sha256'][:12]}…; delete {folder} to train it again"
        )
    body = nn.Sequential(*list(model.children())[:-1])  # cnn2 without its final Linear
    return FDClassifier(body, dataset, digest, float(record["test_acc"]), folder)
