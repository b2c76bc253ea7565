r"""The epochs of the generative models (``convsim train --model vae|dcgan``).

The run itself (set-up, checkpoints, resume, summary) is the classifier's
(:mod:`convsim.training.loop`); what differs is one training pass and its scores, here.

* **VAE** (:class:`convsim.models.VAE`): one Adam step per batch on the mean negative ELBO plus
  the regularisers of the decoder: :math:`\mathcal L = \overline{\mathrm{NELBO}} + \beta\,L_{CS}(\text{decoder})`.
* **DCGAN** (:class:`convsim.models.DCGAN`): per batch, a discriminator step on the logistic loss
  of real against generated images, then a generator step on the non-saturating loss
  :math:`-\log D(G(z))` plus the regularisers of the generator. One optimizer holds both
  networks; each step gives gradients to one network only (the other's are set to ``None``, so
  Adam leaves its weights and moments alone), which is exactly two separate Adams.

Per epoch (:meth:`Scorer.score`): ``fd``, the Fréchet distance between ``fd_samples``
generated images (codes from a fixed, seed-derived generator, so epochs are comparable) and the
test set, in the features of the cached classifier of :mod:`convsim.training.fd_features`; for the
VAE ``test_nelbo`` (nats per image); and the redundancy measurements
(:func:`convsim.training.evaluation.measure_redundancy`) of the decoder or generator on a fixed
batch of codes. Scoring runs under its own RNG (``torch.random.fork_rng``), so it never changes
the training stream, and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convsim import models as _models
from convsim.frechet import frechet_distance
from convsim.similarity import ConvSimilarity
from convsim.training import distributed
from convsim.training.config import TrainConfig
from convsim.training.distributed import DistEnv
from convsim.training.evaluation import measure_redundancy
from convsim.training.fd_features import FDClassifier, fd_classifier

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
_SCORE_SEED = 7919  # added to the run's seed: the scoring codes differ from any training draw


def is_generative(model_name: str) -> bool:
    """Whether ``model_name`` is one of :data:`convsim.models.GENERATIVE_MODELS`."""
    return model_name in _models.GENERATIVE_MODELS


def cs_target(model: nn.Module) -> nn.Module:
    """The part of ``model`` that CS, penalties and the redundancy measurements act on.

    The decoder of a VAE, the generator of a DCGAN, the whole model otherwise.

    Example:
        >>> gan, vae = _models.build("dcgan"), _models.build("vae")
        >>> cs_target(gan) is gan.generator, cs_target(vae) is vae.decoder
        (True, True)
    """
    if isinstance(model, _models.VAE):
        return model.decoder
    if isinstance(model, _models.DCGAN):
        return model.generator
    return model


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32: losses of bf16 autocast outputs are taken in float32, float64 stays."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _regularise(
    loss: torch.Tensor, regularisers: Sequence[nn.Module], optimizer: torch.optim.Optimizer
) -> torch.Tensor:
    """Add the regularisers to ``loss``, back-propagate; returns their (detached) value."""
    reg = torch.stack([r() for r in regularisers]).sum() if regularisers else loss.new_zeros(())
    (loss + reg).backward()
    return reg.detach()


def vae_step(
    net: nn.Module,
    xb: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    regularisers: Sequence[nn.Module],
    autocast: Autocast,
    decoupled: ConvSimilarity | None = None,
) -> torch.Tensor:
    """One step on the mean negative ELBO; returns ``[NELBO summed over the batch, batch size, regulariser value]``."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits, mu, logvar = net(xb)
    nelbo = _models.vae_nelbo(xb, _fp32(logits), _fp32(mu), _fp32(logvar))
    reg = _regularise(nelbo.mean(), regularisers, optimizer)
    optimizer.step()
    if decoupled is not None:
        reg = reg + decoupled.step(lr=optimizer.param_groups[0]["lr"])
    return torch.stack([nelbo.detach().sum().double(), xb.new_tensor(len(xb), dtype=torch.float64), reg.double()])


def _only(optimizer: torch.optim.Optimizer, keep: nn.Module) -> None:
    """Drop every gradient outside ``keep``, so the next step moves ``keep`` alone."""
    mine = {id(p) for p in keep.parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in mine:
                p.grad = None


def gan_step(
    model: _models.DCGAN,
    xb: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    regularisers: Sequence[nn.Module],
    autocast: Autocast,
    decoupled: ConvSimilarity | None = None,
) -> torch.Tensor:
    """A discriminator step, then a generator step; returns ``[D loss·n, G loss·n, n, regulariser value]``."""
    n = len(xb)
    z = torch.randn(n, model.latent_dim, device=xb.device, dtype=xb.dtype)
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        fake = model(z)
        real_logit, fake_logit = _fp32(model.discriminator(xb)), _fp32(model.discriminator(fake.detach()))
    d_loss = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + (
        F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    )
    d_loss.backward()
    _only(optimizer, model.discriminator)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        gen_logit = _fp32(model.discriminator(fake))
    g_loss = F.binary_cross_entropy_with_logits(gen_logit, torch.ones_like(gen_logit))
    reg = _regularise(g_loss, regularisers, optimizer)
    _only(optimizer, model.generator)
    optimizer.step()
    if decoupled is not None:
        reg = reg + decoupled.step(lr=optimizer.param_groups[0]["lr"])
    return torch.stack(
        [d_loss.detach().double() * n, g_loss.detach().double() * n, xb.new_tensor(n).double(), reg.double()]
    )


def generative_epoch(
    net: nn.Module,
    x: torch.Tensor,
    batches: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    regularisers: Sequence[nn.Module],
    autocast: Autocast,
    env: DistEnv,
    decoupled: ConvSimilarity | None = None,
) -> dict[str, float]:
    """One pass over ``batches`` (index tensors into ``x``); returns the epoch's means.

    VAE: ``train_nelbo`` (nats per image) and ``reg_loss``; DCGAN: ``d_loss``, ``g_loss`` and
    ``reg_loss``; both ``train_samples``. Sums are reduced over DDP ranks.
    """
    model = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    net.train()
    gan = isinstance(model, _models.DCGAN)
    sums = torch.zeros(4, dtype=torch.float64, device=x.device)
    for idx in batches:
        xb = x[distributed.shard(idx, env)]
        if gan:
            assert isinstance(model, _models.DCGAN)
            sums += gan_step(model, xb, optimizer, regularisers, autocast, decoupled)
        else:
            sums[1:] += vae_step(net, xb, optimizer, regularisers, autocast, decoupled)
    steps = torch.tensor([len(batches)], dtype=torch.float64, device=x.device)
    a, b, count, reg, n_steps = distributed.all_reduce_sum(torch.cat([sums, steps]), env).tolist()
    if gan:
        return {"d_loss": a / count, "g_loss": b / count, "reg_loss": reg / n_steps, "train_samples": int(count)}
    return {"train_nelbo": b / count, "reg_loss": reg / n_steps, "train_samples": int(count)}


@torch.no_grad()
def generate(model: _models.VAE | _models.DCGAN, n: int, seed: int, batch: int = 1000) -> torch.Tensor:
    """``n`` images in [0, 1] from codes z ~ N(0, I) drawn by a generator seeded with ``seed`` (eval mode)."""
    latent = model.latent_dim
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent, generator=gen)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        decode = model.decode if isinstance(model, _models.VAE) else model
        return torch.cat([decode(chunk.to(device)) for chunk in z.split(batch)])
    finally:
        model.train(was)


@torch.no_grad()
def test_nelbo(model: _models.VAE, x: torch.Tensor, seed: int, batch: int = 1000) -> float:
    """Mean negative ELBO (nats per image) on ``x``, one posterior sample each, under its own RNG."""
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            total = sum(float(model.nelbo(chunk).double().sum()) for chunk in x.split(batch))
    finally:
        model.train(was)
    return total / len(x)


@dataclass
class Scorer:
    """What a generative run is scored with: the FD classifier, the test set and its feature statistics,
    and the fixed latent codes (fm_batch, latent, 1, 1) the decoder's / generator's redundancy is measured on."""

    config: TrainConfig
    classifier: FDClassifier
    test_x: torch.Tensor
    test_stats: tuple[torch.Tensor, torch.Tensor]
    codes: torch.Tensor

    def score(self, model: nn.Module) -> dict[str, Any]:
        """``fd``, ``test_nelbo`` (VAE) and the redundancy measurements of :func:`cs_target` on the codes."""
        if not isinstance(model, (_models.VAE, _models.DCGAN)):
            raise TypeError(f"a Scorer scores a VAE or a DCGAN, got {type(model).__name__}")
        seed = self.config.seed + _SCORE_SEED
        images = generate(model, self.config.fd_samples, seed)
        record: dict[str, Any] = {"fd": frechet_distance(*self.classifier.statistics(images), *self.test_stats)}
        if isinstance(model, _models.VAE):
            record["test_nelbo"] = test_nelbo(model, self.test_x, seed)
        record.update(measure_redundancy(cs_target(model), self.codes))
        return record


def make_scorer(
    config: TrainConfig, model: nn.Module, data: dict[str, torch.Tensor], device: torch.device
) -> Scorer | None:
    """The :class:`Scorer` of a generative run (None for a classifier); ``data["fm_x"]`` becomes its codes.

    Loads (or first trains and caches) the dataset's FD classifier
    (:func:`convsim.training.fd_features.fd_classifier`).
    """
    if not isinstance(model, (_models.VAE, _models.DCGAN)):
        return None
    classifier = fd_classifier(config.dataset, data_dir=config.data_dir, threads=torch.get_num_threads())
    classifier.body.to(device)
    gen = torch.Generator().manual_seed(config.seed + _SCORE_SEED)
    codes = torch.randn(config.fm_batch, model.latent_dim, generator=gen)[:, :, None, None].to(device)
    data["fm_x"] = codes
    return Scorer(config, classifier, data["test_x"], classifier.statistics(data["test_x"]), codes)
