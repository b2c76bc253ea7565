"""The tensors of one training run: subsets, the validation / early-stopping splits, normalisation.

:func:`load_data` turns a :class:`~convsim.training.config.TrainConfig` into a dict of tensors on the
run's device (datasets themselves come from :func:`convsim.data.load`). Every stratified draw
(training and test subsets, the validation split, the early-stopping samples) is the library's
one sampler, :func:`convsim.data.subset_indices`, seeded with ``config.seed``.
"""

from __future__ import annotations

import torch

from convsim import data as _data
from convsim import models as _models
from convsim.training.config import TrainConfig
from convsim.training.errors import ConfigError


def validation_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held-out): ``round(fraction·N)`` held out, stratified, the rest kept.

    The held-out indices are ``convsim.data.subset_indices(labels, round(fraction·N), seed)``
    (class shares by largest remainder); both index tensors are sorted.

    Raises:
        ConfigError: nothing would be held out or kept, or a class would keep no training sample.

    Example:
        >>> keep, val = validation_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(keep), len(val)
        (6, 2)
    """
    total = labels.shape[0]
    n_held = round(fraction * total)
    if not 0 < n_held < total:
        raise ConfigError(
            f"val_fraction {fraction!r} of {total} training samples leaves no validation or no training sample"
        )
    held = _data.subset_indices(labels, n_held, seed)
    kept = torch.ones(total, dtype=torch.bool)
    kept[held] = False
    keep = torch.nonzero(kept).flatten()
    lost = sorted(set(torch.unique(labels).tolist()) - set(torch.unique(labels[keep]).tolist()))
    if lost:
        raise ConfigError(f"val_fraction {fraction!r} holds out every training sample of class(es) {lost}")
    return keep, held


def load_data(config: TrainConfig, device: torch.device, fmt: torch.memory_format) -> dict[str, torch.Tensor]:
    """The run's tensors, float32 on ``device`` in ``fmt``: normalised (classifiers) or in [0, 1] (vae, dcgan).

    Keys: ``train_x, train_y, test_x, test_y, fm_x`` (the first ``fm_batch`` test images), and
    ``val_x, val_y`` (``early_stop="validation"``: the stratified held-out share of the training
    subset) or ``es_x, es_y`` (``early_stop="cwnnk"``: a stratified ``es_samples`` subset of the
    training set).
    """
    train_x, train_y = _data.load(config.dataset, "train", root=config.data_dir, download=config.download)
    test_x, test_y = _data.load(config.dataset, "test", root=config.data_dir, download=config.download)
    if 0 < config.train_subset < len(train_y):
        train_x, train_y = _data.subset(train_x, train_y, config.train_subset, config.seed)
    if 0 < config.test_subset < len(test_y):
        test_x, test_y = _data.subset(test_x, test_y, config.test_subset, config.seed)
    out = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    if config.early_stop == "validation":
        keep, held = validation_split(train_y, config.val_fraction, config.seed)
        out.update(train_x=train_x[keep], train_y=train_y[keep], val_x=train_x[held], val_y=train_y[held])
    elif config.early_stop == "cwnnk":
        n = min(config.es_samples, len(train_y))
        idx = _data.subset_indices(train_y, n, config.seed) if n < len(train_y) else torch.arange(len(train_y))
        out.update(es_x=train_x[idx], es_y=train_y[idx])
        if config.es_k >= n:
            raise ConfigError(f"es_k ({config.es_k}) must be smaller than the number of early-stopping samples ({n})")
    out["fm_x"] = out["test_x"][: config.fm_batch]
    result: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        if key.endswith("_x"):
            value = _scale(value, config).to(device).contiguous(memory_format=fmt)
        else:
            value = value.to(device)
        result[key] = value
    return result


def _scale(images: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """uint8 images as the model takes them: normalised (classifiers) or pixel / 255 (the VAE's Bernoulli, the GAN)."""
    if config.model in _models.GENERATIVE_MODELS:
        return images.float() / 255
    return _data.normalize(images, config.dataset)
