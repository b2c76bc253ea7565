"""The tensors of one training run: subsets, the validation / early-stopping splits, normalisation.

:func:`load_data` turns a :class:`~convsim.training.config.TrainConfig` into a dict of tensors on the
run's device (datasets themselves come from :func:`convsim.data.load`).
"""
from __future__ import annotations

import torch

from convsim import data as _data
from convsim.training.config import ConfigError, TrainConfig


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held-out) with ``round(fraction·N_c)`` held out of each class ``c``.

    Within a class the held-out samples are a uniform draw from ``torch.Generator().manual_seed(seed)``;
    both index tensors are sorted. Every class keeps at least one training sample.

    Example:
        >>> keep, val = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(keep), len(val)
        (6, 2)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    g = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = min(int(round(fraction * idx.numel())), idx.numel() - 1)
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def load_data(config: TrainConfig, device: torch.device, fmt: torch.memory_format) -> dict[str, torch.Tensor]:
    """The run's tensors, normalised float32 on ``device`` in ``fmt``.

    Keys: ``train_x, train_y, test_x, test_y, fm_x`` (the first ``fm_batch`` test images), and
    ``val_x, val_y`` (``early_stop="validation"``: the stratified held-out share of the training
    subset) or ``es_x, es_y`` (``early_stop="cwnnk"``: a stratified ``es_samples`` subset of the
    training set).
    """
    kw = dict(root=config.data_dir, download=config.download)
    train_x, train_y = _data.load(config.dataset, "train", **kw)
    test_x, test_y = _data.load(config.dataset, "test", **kw)
    if 0 < config.train_subset < len(train_y):
        train_x, train_y = _data.subset(train_x, train_y, config.train_subset, config.seed)
    if 0 < config.test_subset < len(test_y):
        test_x, test_y = _data.subset(test_x, test_y, config.test_subset, config.seed)
    out = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    if config.early_stop == "validation":
        keep, held = stratified_split(train_y, config.val_fraction, config.seed)
        out.update(train_x=train_x[keep], train_y=train_y[keep], val_x=train_x[held], val_y=train_y[held])
    elif config.early_stop == "cwnnk":
        n = min(config.es_samples, len(train_y))
        idx = _data.subset_indices(train_y, n, config.seed) if n < len(train_y) else torch.arange(len(train_y))
        out.update(es_x=train_x[idx], es_y=train_y[idx])
        if config.es_k >= n:
            raise ConfigError(f"es_k ({config.es_k}) must be smaller than the number of early-stopping samples ({n})")
    out["fm_x"] = out["test_x"][: config.fm_batch]
    result = {}
    for key, value in out.items():
        if key.endswith("_x"):
            value = _data.normalize(value, config.dataset).to(device).contiguous(memory_format=fmt)
        else:
            value = value.to(device)
        result[key] = value
    return result
