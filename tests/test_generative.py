"""Training the generative models: the run-directory contract, exact resume, the GAN's alternating
steps, CS on the decoder / generator, and the cached FD classifier."""

import contextlib
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from convsim import models
from convsim.training import TrainConfig, fd_features, train
from convsim.training.config import ConfigError
from convsim.training.generative import cs_target, gan_step, generate
from convsim.training.loop import make_regularisers

TINY_GEN = dict(
    dataset="synthetic",
    train_subset=128,
    test_subset=64,
    batch_size=32,
    fm_batch=16,
    fd_samples=64,
    epochs=2,
    optimizer="adam",
    lr=1e-3,
    threads=1,
    verbose=False,
)


@pytest.fixture(scope="module")
def fd_cache(tmp_path_factory):
    """A private cache with a 1-epoch FD classifier (the real recipe trains 5 epochs)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv(fd_features.CACHE_ENV, str(root))
    mp.setitem(fd_features.RECIPE, "epochs", 1)
    yield root
    mp.undo()


def _config(out, model, **kw):
    return TrainConfig(**{**TINY_GEN, "model": model, "out": str(out), **kw})


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize(("model", "keys"), [("vae", {"train_nelbo", "test_nelbo"}), ("dcgan", {"d_loss", "g_loss"})])
def test_a_generative_run_logs_fd_its_losses_and_the_decoders_redundancy(fd_cache, tmp_path, model, keys):
    summary = train(_config(tmp_path / "run", model))
    records = _records(tmp_path / "run")
    assert summary["status"] == "complete" and [r["epoch"] for r in records] == [1, 2]
    assert keys | {"fd", "cs", "fm_similarity", "kernel_norm", "reg_loss"} <= set(records[-1])
    assert summary["fd"] == records[-1]["fd"] and summary["test_acc"] is None


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_resuming_a_generative_run_repeats_the_uninterrupted_one(fd_cache, tmp_path, model):
    train(_config(tmp_path / "straight", model, beta=0.01))
    train(_config(tmp_path / "split", model, beta=0.01, epochs=1))
    train(_config(tmp_path / "split", model, beta=0.01, resume=True))
    assert _without_seconds(_records(tmp_path / "split")) == _without_seconds(_records(tmp_path / "straight"))


def test_the_cs_regulariser_acts_on_the_decoder_alone(fd_cache):
    vae = models.build("vae")
    regs = make_regularisers(TrainConfig(model="vae", beta=1.0), vae)
    (cs,) = regs.in_loss
    decoder_names = {name for name, _ in vae.decoder.named_modules()}
    assert cs.layers and set(cs.layers) <= decoder_names
    cs().backward()
    assert all(p.grad is None for p in vae.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.decoder.parameters())


def test_gan_step_equals_a_discriminator_adam_then_a_generator_adam():
    torch.manual_seed(0)
    gan = models.build("dcgan", width=0.25).double()  # float64: Adam's g / (|g| + eps) magnifies rounding
    twin = copy.deepcopy(gan)
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    adam = dict(lr=1e-2, betas=(0.5, 0.999))
    one = torch.optim.Adam(gan.parameters(), **adam)
    opt_d = torch.optim.Adam(twin.discriminator.parameters(), **adam)
    opt_g = torch.optim.Adam(twin.generator.parameters(), **adam)
    for step in range(2):
        torch.manual_seed(step)
        gan_step(gan, x, one, [], contextlib.nullcontext)
        torch.manual_seed(step)
        _reference_gan_step(twin, x, opt_d, opt_g)
    for p, q in zip(gan.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def _reference_gan_step(gan, x, opt_d, opt_g):
    z = torch.randn(len(x), gan.latent_dim, dtype=x.dtype)
    fake = gan(z)
    opt_d.zero_grad()
    real, fake_logit = gan.discriminator(x), gan.discriminator(fake.detach())
    d_loss = F.softplus(-real).mean() + F.softplus(fake_logit).mean()  # -log σ(r) - log(1 - σ(f))
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad()
    g_loss = F.softplus(-gan.discriminator(fake)).mean()  # non-saturating: -log σ(D(G(z)))
    g_loss.backward()
    opt_g.step()


def test_scoring_leaves_the_training_random_stream_alone(fd_cache, tmp_path):
    vae = models.build("vae")
    state = torch.get_rng_state()
    images = generate(vae, 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert images.shape == (10, 1, 28, 28) and torch.equal(images, generate(vae, 10, seed=3))


def test_the_fd_classifier_is_trained_once_and_its_checksum_checked(fd_cache):
    first = fd_features.fd_classifier("synthetic", threads=1)
    stamp = (first.path / "run" / "checkpoint.pt").stat().st_mtime_ns
    again = fd_features.fd_classifier("synthetic", threads=1)
    assert again.sha256 == first.sha256 and (first.path / "run" / "checkpoint.pt").stat().st_mtime_ns == stamp
    record = first.path / "fd-classifier.json"
    saved = record.read_text()
    record.write_text(json.dumps({**json.loads(saved), "sha256": "0" * 64}))
    try:
        with pytest.raises(fd_features.FDClassifierError, match="delete"):
            fd_features.fd_classifier("synthetic", threads=1)
    finally:
        record.write_text(saved)


def test_fd_features_normalise_images_as_the_classifier_was_trained(fd_cache):
    clf = fd_features.fd_classifier("synthetic", threads=1)
    images = torch.rand(5, 1, 28, 28)
    info = fd_features._data.DATASETS["synthetic"]
    expected = clf.body((images - info.mean[0]) / info.std[0])
    torch.testing.assert_close(clf.features(images), expected)


def test_cs_target_is_the_decoder_the_generator_or_the_classifier():
    vae, gan, cnn = models.build("vae"), models.build("dcgan"), models.build("cnn1")
    assert cs_target(vae) is vae.decoder and cs_target(gan) is gan.generator and cs_target(cnn) is cnn


def test_a_generative_model_refuses_early_stopping():
    with pytest.raises(ConfigError, match="needs a classifier"):
        TrainConfig(model="vae", early_stop="validation")


def test_cs_stride_aware_reaches_the_regulariser_and_changes_its_value():
    vae = models.build("vae")
    plain = make_regularisers(TrainConfig(model="vae", beta=1.0), vae).in_loss[0]
    aware = make_regularisers(TrainConfig(model="vae", beta=1.0, cs_stride_aware=True), vae).in_loss[0]
    assert aware.stride_aware and not plain.stride_aware
    assert float(aware()) != float(plain())
