"""Decoupled CS (``ConvSimilarity.step``, ``cs_mode="decoupled"``) and the pairing of runs by seed."""

import copy

import pytest
import torch
from torch import nn

from convsim._internal.files import read_jsonl
from convsim.reporting.suites import CNN1_HP, SUITES, method_overrides
from convsim.similarity import ConvSimilarity
from convsim.training.errors import ConfigError
from convsim.training.loop import train
from test_train import assert_same_state, checkpoint_model, make_config, without_seconds


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 3, 2))


def test_step_equals_plain_sgd_on_cs_alone():
    net, ref = small_net(), small_net()
    reg = ConvSimilarity(net, beta=0.3, normalize=True)
    ref_reg = ConvSimilarity(ref, beta=0.3, normalize=True)
    ref_opt = torch.optim.SGD([m.weight for _, m in ref_reg._selected], lr=0.05)
    for _ in range(3):
        value = reg.step(lr=0.05)
        ref_opt.zero_grad()
        expected = ref_reg()
        expected.backward()
        ref_opt.step()
        torch.testing.assert_close(value, expected.detach())
    assert_same_state(net.state_dict(), ref.state_dict())


def test_step_leaves_grad_and_optimizer_state_untouched():
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    grads = [p.grad.clone() for p in net.parameters()]
    state = copy.deepcopy(opt.state_dict())
    ConvSimilarity(net, beta=1.0).step(lr=0.1)
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))
    after = opt.state_dict()
    for k, v in state["state"].items():
        assert torch.equal(after["state"][k]["momentum_buffer"], v["momentum_buffer"])


def test_step_lowers_cs_and_returns_the_value_before():
    net = small_net()
    reg = ConvSimilarity(net, beta=2.0)
    before = reg().detach()
    assert torch.equal(reg.step(lr=1e-3), before)
    assert reg().detach() < before


def test_step_with_zero_lr_changes_nothing():
    net = small_net()
    state = copy.deepcopy(net.state_dict())
    ConvSimilarity(net).step(lr=0.0)
    assert_same_state(net.state_dict(), state)


@pytest.mark.parametrize("lr", [-1.0, float("nan"), "0.1", True])
def test_step_rejects_a_bad_lr(lr):
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        ConvSimilarity(small_net()).step(lr=lr)


def test_decoupled_equals_loss_mode_under_plain_sgd(tmp_path):
    # Without momentum or weight decay, w - lr*(g_CE + beta*g_CS) is the same step either way.
    common = dict(optimizer="sgd", momentum=0.0, lr=0.05, beta=0.01, epochs=1)
    loss = train(make_config(tmp_path / "loss", **common))
    dec = train(make_config(tmp_path / "dec", cs_mode="decoupled", **common))
    a, b = checkpoint_model(tmp_path / "loss"), checkpoint_model(tmp_path / "dec")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert dec["final"]["reg_loss"] == pytest.approx(loss["final"]["reg_loss"], rel=1e-3)


def test_decoupled_differs_from_loss_mode_under_momentum(tmp_path):
    common = dict(optimizer="sgd", momentum=0.9, lr=0.05, beta=1.0, epochs=1)
    train(make_config(tmp_path / "loss", **common))
    train(make_config(tmp_path / "dec", cs_mode="decoupled", **common))
    a, b = checkpoint_model(tmp_path / "loss"), checkpoint_model(tmp_path / "dec")
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])


def test_decoupled_resume_is_bit_identical(tmp_path):
    common = dict(optimizer="sgd", momentum=0.9, lr=0.02, beta=0.1, cs_mode="decoupled")
    train(make_config(tmp_path / "straight", epochs=2, **common))
    train(make_config(tmp_path / "resumed", epochs=1, **common))
    train(make_config(tmp_path / "resumed", epochs=2, resume=True, **common))
    assert_same_state(checkpoint_model(tmp_path / "straight"), checkpoint_model(tmp_path / "resumed"))
    assert without_seconds(read_jsonl(tmp_path / "straight" / "metrics.jsonl")) == without_seconds(
        read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    )


def test_cs_mode_must_be_known(tmp_path):
    with pytest.raises(ConfigError, match="cs_mode must be one of loss, decoupled"):
        make_config(tmp_path, cs_mode="fused")


def test_runs_with_one_seed_start_alike_and_see_the_same_batches(tmp_path):
    # Pairing by seed: the same initial weights (before any CS initialisation) and minibatch order,
    # whatever the method.
    summaries = []
    for i, method in enumerate(("baseline", "cs-reg", "cs-init", "so", "cs-decoupled")):
        o = method_overrides(method, CNN1_HP)
        o["init_iters"] = min(o["init_iters"], 3)
        summaries.append(train(make_config(tmp_path / str(i), optimizer="sgd", lr=0.05, seed=3, **o)))
    digests = {s["initial"]["weights_sha256"] for s in summaries}
    orders = {
        tuple(r["order_sha256"] for r in read_jsonl(tmp_path / str(i) / "metrics.jsonl")) for i in range(len(summaries))
    }
    assert len(digests) == 1 and len(orders) == 1
    other = train(make_config(tmp_path / "other", optimizer="sgd", lr=0.05, seed=4))
    assert other["initial"]["weights_sha256"] not in digests


def test_metrics_log_kernel_norms_per_conv_layer(tmp_path):
    train(make_config(tmp_path, epochs=1))
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert sorted(record["kernel_norm"]) == ["conv1", "conv2", "conv3", "conv4"]
    w = checkpoint_model(tmp_path)["conv2.weight"]
    assert record["kernel_norm"]["conv2"] == pytest.approx(float(w.flatten(1).norm(dim=1).mean()), rel=1e-6)
    assert record["cs_normalized"] > 0


def test_fmnist_suite_is_powered_and_paired():
    specs = SUITES["fmnist"]
    groups: dict[str, set] = {}
    for s in specs:
        groups.setdefault(s.group, set()).add(s.seed)
        assert s.overrides["train_subset"] == 0 and s.overrides["test_subset"] == 0
        assert s.overrides["epochs"] >= 30
    assert all(len(seeds) >= 5 for seeds in groups.values())
    assert len({frozenset(v) for v in groups.values()}) == 1  # every group has the same seeds
