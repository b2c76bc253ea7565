"""The trainer: loop, files, resume, interruption, CLI, load_run, early stopping.

Runs are tiny (cnn1, 256 synthetic training images, one thread) so the file stays fast; runs that
several tests read are module fixtures.
"""

import argparse
import json
import math

import pytest
import torch
from torch import nn

from convsim import data
from convsim._internal.files import read_jsonl
from convsim.cli import train as train_cli
from convsim.training import loop
from convsim.training.checkpoint import FINAL_STATUSES, STATUSES, is_finished
from convsim.training.config import (
    CONFIG_FIELDS,
    LEGACY_FIELDS,
    TrainConfig,
    add_arguments,
    config_from_args,
    config_from_dict,
    normalize_config_dict,
    to_argv,
)
from convsim.training.data import load_data, validation_split
from convsim.training.distributed import DistEnv
from convsim.training.early_stopping import ChannelFreezer, ValidationEarlyStopping
from convsim.training.errors import ConfigError
from convsim.training.evaluation import evaluate
from convsim.training.loop import load_run, train
from convsim.training.optim import lr_factor

METRIC_KEYS = {
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "reg_loss",
    "train_samples",
    "test_loss",
    "test_acc",
    "cs",
    "kernel_cosine",
    "fm_similarity",
    "fm_similarity_centered",
    "fm_effective_rank",
    "seconds",
    "cs_normalized",
    "kernel_norm",
    "order_sha256",
}
SUMMARY_KEYS = {
    "status",
    "machine",
    "epochs_run",
    "delivered_epoch",
    "config",
    "seed",
    "versions",
    "git",
    "device",
    "world_size",
    "threads",
    "wall_time",
    "initial",
    "final",
    "best_test_acc",
    "best_test_epoch",
    "early_stop",
    "test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "cs",
    "kernel_cosine",
    "fm_similarity",
    "fm_similarity_centered",
}


# The tiny run the trainer tests share (also tests/test_ddp.py and tests/faultlib.py).
TINY_RUN = dict(
    model="cnn1",
    dataset="synthetic",
    train_subset=256,
    test_subset=128,
    batch_size=32,
    fm_batch=64,
    epochs=2,
    optimizer="adam",
    lr=3e-3,
    device="cpu",
    threads=1,
    verbose=False,
)


def make_config(out, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY_RUN, "out": str(out), **kw})


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def checkpoint_model(out):
    return torch.load(f"{out}/checkpoint.pt", map_location="cpu", weights_only=True)["model"]


def store_as_old_run(ckpt: dict, out) -> None:
    """Write ``ckpt`` as a run stored by an older convsim left it: format 1 (no checksum), no previous checkpoint."""
    ckpt = {k: v for k, v in ckpt.items() if k != "sha256"}
    ckpt["format"] = 1
    torch.save(ckpt, f"{out}/checkpoint.pt")
    (out / "checkpoint.prev.pt").unlink(missing_ok=True)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Two epochs in one go: the reference for the resume and interruption tests."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(make_config(out))
    return out, summary


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Three epochs with a 3-step CS initialisation and the CS regulariser."""
    out = tmp_path_factory.mktemp("finished")
    summary = train(make_config(out, epochs=3, init_iters=3, beta=1e-3))
    return out, summary


# ---------------------------------------------------------------- the loop and its files


def test_training_lowers_the_loss(finished):
    """Three epochs of Adam lower the mean training cross-entropy."""
    out, _ = finished
    losses = [r["train_loss"] for r in read_jsonl(out / "metrics.jsonl")]
    assert losses[-1] < losses[0]


def test_metrics_lines_have_documented_keys(finished):
    """metrics.jsonl: one line per epoch 1..E with every documented key, finite numbers."""
    out, _ = finished
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert r.keys() >= METRIC_KEYS
        assert all(math.isfinite(r[k]) for k in METRIC_KEYS - {"kernel_norm", "order_sha256"})
        assert all(math.isfinite(v) for v in r["kernel_norm"].values())


def test_summary_has_documented_keys(finished):
    """summary.json: documented keys, status complete, the config round-trips, versions recorded."""
    out, summary = finished
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk.keys() >= SUMMARY_KEYS
    assert on_disk["status"] == "complete" and on_disk["epochs_run"] == 3
    assert TrainConfig(**on_disk["config"]) == make_config(out, epochs=3, init_iters=3, beta=1e-3)
    assert {"torch", "numpy", "python", "convsim"} <= on_disk["versions"].keys()
    assert on_disk["test_acc"] == read_jsonl(out / "metrics.jsonl")[-1]["test_acc"] == summary["test_acc"]


def test_regulariser_value_is_logged(finished):
    """With beta > 0 the mean regulariser term is positive and equals beta times a CS of the order logged."""
    out, _ = finished
    r = read_jsonl(out / "metrics.jsonl")[0]
    assert r["reg_loss"] > 0
    assert r["reg_loss"] == pytest.approx(1e-3 * r["cs"], rel=0.5)


def test_init_file_records_every_step(finished):
    """init.jsonl: steps 0..I, CS falls, and its last value is the CS measured before epoch 1."""
    out, summary = finished
    lines = read_jsonl(out / "init.jsonl")
    assert [r["step"] for r in lines] == [0, 1, 2, 3]
    assert lines[-1]["cs"] < lines[0]["cs"]
    assert lines[-1]["cs"] == pytest.approx(summary["initial"]["cs"], rel=1e-6)


def test_load_run_reconstructs_the_model(finished):
    """load_run's model reproduces the run's final test accuracy and loss exactly."""
    out, summary = finished
    model, config, loaded = load_run(out)
    assert config.epochs == 3 and loaded["status"] == "complete"
    d = load_data(config, torch.device("cpu"), torch.contiguous_format)
    res = evaluate(model, d["test_x"], d["test_y"], config, DistEnv())
    assert res["test_acc"] == summary["test_acc"]
    assert res["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def test_load_run_rejects_a_folder_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json is missing"):
        load_run(tmp_path)


def test_beta_lowers_cs(tmp_path, straight):
    """The CS regulariser (large beta) ends with lower all-pairs CS than plain training, same seed."""
    _, plain = straight
    summary = train(make_config(tmp_path, beta=1.0))
    assert summary["cs"] < plain["cs"]


@pytest.mark.parametrize("penalty", ["so", "decov"])
def test_penalty_enters_the_loss(tmp_path, penalty):
    """A baseline penalty (weight-based or activation-based) is added: reg_loss > 0."""
    summary = train(make_config(tmp_path, epochs=1, penalty=penalty, penalty_beta=0.1))
    assert summary["final"]["reg_loss"] > 0


def test_channels_last_matches_contiguous(tmp_path, straight):
    """channels_last changes the memory layout, not the training: metrics agree to float tolerance."""
    _, ref = straight
    got = train(make_config(tmp_path, epochs=1, channels_last=True))
    first = read_jsonl(straight[0] / "metrics.jsonl")[0]
    assert got["final"]["train_loss"] == pytest.approx(first["train_loss"], rel=1e-4)
    assert got["final"]["cs"] == pytest.approx(first["cs"], rel=1e-4)


def test_bf16_autocast_trains(tmp_path):
    """bf16 autocast runs end to end with finite losses."""
    summary = train(make_config(tmp_path, epochs=1, bf16=True))
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["test_loss"])


# ---------------------------------------------------------------- resume and interruption


def test_resume_is_bit_identical(tmp_path, straight):
    """1 epoch + resume + 1 epoch gives the same metrics (but seconds) and weights as 2 epochs straight."""
    ref_out, _ = straight
    train(make_config(tmp_path, epochs=1))
    train(make_config(tmp_path, epochs=2, resume=True))
    assert without_seconds(read_jsonl(tmp_path / "metrics.jsonl")) == without_seconds(
        read_jsonl(ref_out / "metrics.jsonl")
    )
    assert_same_state(checkpoint_model(tmp_path), checkpoint_model(ref_out))


def test_interrupted_run_resumes_exactly(tmp_path, straight, monkeypatch):
    """Ctrl-C mid-epoch 2 keeps checkpoint and metrics at epoch 1; resuming matches the straight run."""
    ref_out, _ = straight
    real_step, calls = loop.train_step, []

    def interrupting_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8 + 3:  # 256 / 32 = 8 steps per epoch: 3 steps into epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupting_step)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(tmp_path))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(loop, "train_step", real_step)
    train(make_config(tmp_path, resume=True))
    assert without_seconds(read_jsonl(tmp_path / "metrics.jsonl")) == without_seconds(
        read_jsonl(ref_out / "metrics.jsonl")
    )
    assert_same_state(checkpoint_model(tmp_path), checkpoint_model(ref_out))


def test_failed_run_records_the_error_and_removes_penalty_hooks(tmp_path, monkeypatch):
    """An exception mid-run: summary.json says "failed" with the error, the checkpoint stays at the last epoch."""
    real_step, calls, penalties = loop.train_step, [], []

    def failing_step(net, xb, yb, optimizer, regularisers, *args, **kwargs):
        penalties.extend(r for r in regularisers if r not in penalties)
        calls.append(1)
        if len(calls) == 8 + 1:  # the first step of epoch 2
            raise RuntimeError("boom")
        return real_step(net, xb, yb, optimizer, regularisers, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        train(make_config(tmp_path, penalty="decov", penalty_beta=0.1))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["error"], summary["epochs_run"]) == ("failed", "RuntimeError: boom", 1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [type(r).__name__ for r in penalties] == ["Penalty"] and penalties[0]._handles == []


def test_resume_drops_metrics_lines_beyond_the_checkpoint(tmp_path):
    """A metrics line without a checkpoint behind it (torn write) is dropped on resume."""
    train(make_config(tmp_path, epochs=1))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")
    train(make_config(tmp_path, epochs=2, resume=True))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and "stale" not in records[1]


def test_resume_of_a_finished_run_does_nothing(straight):
    """Resuming a complete run with the same epochs trains nothing and returns its summary."""
    out, summary = straight
    before = (out / "metrics.jsonl").read_text(), (out / "checkpoint.pt").stat().st_mtime_ns
    again = train(make_config(out, resume=True))
    assert again == json.loads((out / "summary.json").read_text())
    assert again["epochs_run"] == summary["epochs_run"] and again["test_acc"] == summary["test_acc"]
    assert ((out / "metrics.jsonl").read_text(), (out / "checkpoint.pt").stat().st_mtime_ns) == before


def test_existing_run_needs_resume(straight):
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_config(straight[0]))


def test_resume_rejects_a_changed_config(straight):
    with pytest.raises(ConfigError, match=r"config differs.*lr: stored 0.003, given 0.1"):
        train(make_config(straight[0], epochs=3, lr=0.1, resume=True))


def test_resume_accepts_a_run_stored_before_a_field_existed(tmp_path):
    """A checkpoint whose config lacks a newer field resumes when that field keeps its default."""
    out = tmp_path / "old"
    train(make_config(out, epochs=1))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    del ckpt["config"]["drop_last"]
    store_as_old_run(ckpt, out)
    assert train(make_config(out, epochs=2, resume=True))["epochs_run"] == 2
    with pytest.raises(ConfigError, match="drop_last: stored False, given True"):
        train(make_config(out, epochs=3, resume=True, drop_last=True))


@pytest.mark.parametrize("drop_last, seen", [(False, 250), (True, 224)])
def test_drop_last_skips_only_a_short_last_batch(tmp_path, drop_last, seen):
    """250 images in batches of 32: seven full batches and one of 26, which drop_last skips."""
    summary = train(make_config(tmp_path, train_subset=250, epochs=1, drop_last=drop_last))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_samples"] for r in records if r["epoch"] == 1] == [seen]
    assert summary["status"] == "complete"


def test_run_stored_with_penalty_weight_resumes_bit_identically(tmp_path):
    """A checkpoint stored before penalty_weight became penalty_beta resumes (LEGACY_FIELDS) like a straight run."""
    straight_out, old_out = tmp_path / "straight", tmp_path / "old"
    train(make_config(straight_out, penalty="so", penalty_beta=0.1))
    train(make_config(old_out, epochs=1, penalty="so", penalty_beta=0.1))
    ckpt = torch.load(old_out / "checkpoint.pt", weights_only=True)
    ckpt["config"]["penalty_weight"] = ckpt["config"].pop("penalty_beta")
    store_as_old_run(ckpt, old_out)
    summary = json.loads((old_out / "summary.json").read_text())
    summary["config"]["penalty_weight"] = summary["config"].pop("penalty_beta")
    (old_out / "summary.json").write_text(json.dumps(summary))
    assert load_run(old_out)[1].penalty_beta == 0.1
    train(make_config(old_out, penalty="so", penalty_beta=0.1, resume=True))
    assert without_seconds(read_jsonl(old_out / "metrics.jsonl")) == without_seconds(
        read_jsonl(straight_out / "metrics.jsonl")
    )
    assert_same_state(checkpoint_model(old_out), checkpoint_model(straight_out))
    assert json.loads((old_out / "summary.json").read_text())["config"]["penalty_beta"] == 0.1


def test_legacy_field_names_map_to_the_new_ones():
    assert LEGACY_FIELDS == {"penalty_weight": "penalty_beta"}
    assert normalize_config_dict({"penalty_weight": 0.3, "beta": 1.0}) == {"penalty_beta": 0.3, "beta": 1.0}
    assert normalize_config_dict({"penalty_weight": 0.3, "penalty_beta": 0.5}) == {"penalty_beta": 0.5}
    assert config_from_dict({"penalty_weight": 0.3, "gone": 1}) == TrainConfig(penalty_beta=0.3)
    assert config_from_args(parser().parse_args(["--penalty-weight", "0.2"])).penalty_beta == 0.2
    assert "--penalty-weight" not in parser().format_help()


def test_final_statuses_are_what_finished_runs_end_with(finished, tmp_path):
    """A complete run and an early-stopped one end in FINAL_STATUSES; a stopped run is finished for good."""
    assert set(FINAL_STATUSES) < set(STATUSES)
    assert finished[1]["status"] in FINAL_STATUSES
    stopped = train(make_config(tmp_path, early_stop="validation", patience=1, epochs=30, lr=0.05))
    assert stopped["status"] == "stopped early" and stopped["epochs_run"] < 30
    assert stopped["status"] in FINAL_STATUSES
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert is_finished(ckpt, make_config(tmp_path, epochs=40))


# ---------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_cli_flags_round_trip_to_the_config():
    """to_argv -> parse -> config_from_args gives back a config with every field changed."""
    config = TrainConfig(
        model="cnn2",
        width=0.5,
        dataset="mnist",
        data_dir="/data",
        download=True,
        train_subset=512,
        test_subset=100,
        epochs=3,
        batch_size=64,
        drop_last=True,
        optimizer="adam",
        lr=0.1,
        momentum=0.5,
        weight_decay=1e-4,
        schedule="cosine",
        beta=0.01,
        cs_pairs="adjacent",
        cs_channels="cross",
        cs_normalize=True,
        cs_mode="decoupled",
        init_iters=7,
        init_lr=0.01,
        init_optimizer="train",
        penalty="srip",
        penalty_beta=0.5,
        early_stop="validation",
        patience=3,
        es_k=10,
        es_samples=300,
        es_solver="pruning",
        val_fraction=0.1,
        es_restore=False,
        seed=5,
        device="cpu",
        out="x/y",
        resume=True,
        channels_last=True,
        bf16=True,
        threads=1,
        eval_batch=50,
        fm_batch=32,
        verbose=False,
        log="tensorboard",
        cs_stride_aware=True,
        fd_samples=500,
        adam_beta1=0.5,
    )
    default = TrainConfig()
    assert all(getattr(config, f) != getattr(default, f) for f in CONFIG_FIELDS)
    assert config_from_args(parser().parse_args(to_argv(config))) == config


def test_cli_uses_kebab_case_flags():
    args = parser().parse_args(["--train-subset", "10", "--cs-normalize", "--init-iters", "5", "--no-es-restore"])
    config = config_from_args(args)
    assert (config.train_subset, config.cs_normalize, config.init_iters, config.es_restore) == (10, True, 5, False)


def test_cli_without_flags_gives_the_defaults():
    assert config_from_args(parser().parse_args([])) == TrainConfig()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs must be >= 1"),
        ("lr", -1.0, "lr must be > 0"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
        ("val_fraction", 1.5, r"val_fraction must be in \(0, 1\)"),
        ("model", "vgg", "model must be one of cnn1, cnn2, resnet18"),
        ("penalty", "l2", "penalty must be one of none, so, dso"),
        ("early_stop", "loss", "early_stop must be one of none, cwnnk, validation"),
        ("fm_batch", 1, "fm_batch must be >= 2"),
    ],
)
def test_bad_values_raise_clear_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_wrong_type_raises_type_error():
    with pytest.raises(TypeError, match="epochs must be a int"):
        TrainConfig(epochs="3")


def test_parser_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--optimizer", "rmsprop"])
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err


def test_run_reports_a_bad_value_and_returns_2(tmp_path, capsys):
    from convsim.cli import main

    with pytest.raises(ConfigError, match="epochs must be >= 1"):  # train_cli.run raises; main reports it
        train_cli.run(parser().parse_args(["--epochs", "0", "--out", str(tmp_path)]))
    assert main(["train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "convsim train: error: epochs must be >= 1, got 0\n"


def test_incompatible_model_and_dataset_is_a_config_error(tmp_path):
    """cnn1 needs at least 17x17 inputs: on 8x8 digits the error names the combination."""
    with pytest.raises(ConfigError, match="cnn1.*digits"):
        train(make_config(tmp_path, dataset="digits"))


def test_cli_resume_takes_the_stored_config(tmp_path):
    """`convsim train --out D --resume --epochs 2` continues D with its own flags (here lr and optimizer)."""
    from convsim.cli import main

    common = ["--out", str(tmp_path), "--device", "cpu", "--threads", "1", "--no-verbose"]
    first = [
        "train",
        "--dataset",
        "synthetic",
        "--train-subset",
        "128",
        "--test-subset",
        "64",
        "--fm-batch",
        "32",
        "--batch-size",
        "32",
        "--optimizer",
        "adam",
        "--lr",
        "0.002",
        "--epochs",
        "1",
    ] + common
    assert main(first) == 0
    assert main(["train", "--resume", "--epochs", "2"] + common) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["epochs_run"], summary["config"]["lr"], summary["config"]["optimizer"]) == (2, 0.002, "adam")


# ---------------------------------------------------------------- schedule and splits


def test_lr_factor_cosine_and_step():
    e = 10
    assert [lr_factor("cosine", k, e) for k in (1, 6)] == [1.0, pytest.approx(0.5)]
    assert lr_factor("cosine", 10, e) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert [lr_factor("step", k, e) for k in (5, 6, 8, 9)] == [1.0, 0.1, 0.1, 0.01]
    assert lr_factor("none", 7, e) == 1.0


def test_validation_split_is_disjoint_complete_and_stratified():
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[order]
    keep, held = validation_split(labels, 0.2, seed=3)
    assert torch.equal(torch.sort(torch.cat([keep, held])).values, torch.arange(100))
    assert torch.bincount(labels[held]).tolist() == [10, 6, 4]
    assert torch.equal(held, data.subset_indices(labels, 20, seed=3))  # the library's one sampler


def test_validation_split_rounds_the_total_like_the_subsets():
    """round(fraction * N) held out, shared by largest remainder (data.subset_indices), not rounded per class.

    The quick suite's synthetic 256-image training subset has classes of 26 (x6) and 25 (x4): 20%
    is 51.2, so 51 are held out and class 0 (largest remainder, lowest class on ties) gives 6.
    Rounding each class (5.2 and 5.0 -> 5), as the trainer did before, held out 50.
    """
    labels = torch.tensor([c for c in range(10) for _ in range(26 if c < 6 else 25)])
    keep, held = validation_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[held]).tolist() == [6, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    assert len(keep) == 256 - 51
    balanced = torch.arange(250) % 10  # 25 per class: 5 each either way
    assert torch.bincount(balanced[validation_split(balanced, 0.2, seed=0)[1]]).tolist() == [5] * 10


def test_validation_split_of_the_quick_suite_data(tmp_path):
    """The trainer's validation split of the quick suite's data (synthetic, 256 training images, seed 0)."""
    d = load_data(make_config(tmp_path, early_stop="validation"), torch.device("cpu"), torch.contiguous_format)
    assert torch.bincount(d["val_y"]).tolist() == [6, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    assert len(d["train_y"]) == 205


def test_validation_split_refuses_to_empty_a_class_or_the_split():
    with pytest.raises(ConfigError, match=r"every training sample of class\(es\) \[0\]"):
        validation_split(torch.tensor([0] + [1] * 9), 0.5, seed=0)  # 5 held: quotas 0.5, 4.5 -> class 0 gets 1
    with pytest.raises(ConfigError, match="leaves no validation"):
        validation_split(torch.arange(4) % 2, 0.1, seed=0)


# ---------------------------------------------------------------- early stopping


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_freezer_keeps_frozen_filters_bit_identical(optimizer):
    """Momentum and weight decay do not move a frozen filter; the others move."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    opt = (
        torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
        if optimizer == "sgd"
        else torch.optim.Adam(conv.parameters(), lr=0.1, weight_decay=0.1)
    )
    x = torch.randn(4, 2, 6, 6)
    fr = ChannelFreezer(conv)
    for step in range(6):
        if step == 2:
            fr.freeze(torch.tensor([False, True, False]))
            w1, b1, other = conv.weight[1].clone(), conv.bias[1].clone(), conv.weight[0].clone()
        opt.zero_grad()
        conv(x).square().sum().backward()
        fr.zero_frozen_grads()
        opt.step()
        fr.restore_frozen()
    assert torch.equal(conv.weight[1], w1) and torch.equal(conv.bias[1], b1)
    assert not torch.equal(conv.weight[0], other)


def test_validation_stopper_counts_patience():
    es = ValidationEarlyStopping(patience=2)
    steps = [es.step(e, i + 1) for i, e in enumerate([0.5, 0.4, 0.45, 0.38, 0.38, 0.39])]
    assert [s[0] for s in steps] == [True, True, False, True, False, False]
    assert [s[1] for s in steps] == [False, False, False, False, False, True]
    assert (es.best_epoch, es.stop_epoch) == (4, 6)


def scripted_errors(monkeypatch, script):
    """Replace the NNK LOO error by ``script(call_number) -> list of per-channel errors``."""
    import convsim.nnk

    calls = []

    def fake(activations, labels, **nnk_options):
        calls.append(1)
        assert activations.shape[0] == labels.shape[0]
        return torch.tensor(script(len(calls)), dtype=torch.float64)

    monkeypatch.setattr(convsim.nnk, "channel_loo_error", fake, raising=False)
    return calls


def test_cwnnk_freezes_a_channel_that_stops_improving(tmp_path, monkeypatch):
    """Channel 0's error stalls after epoch 1: with patience 1 it freezes at epoch 2 and its filter
    stays bit-identical through epochs 3-4 while the other filters keep training."""
    scripted_errors(monkeypatch, lambda n: [0.5, 1 / n, 1 / n, 1 / n])
    config = make_config(tmp_path, early_stop="cwnnk", patience=1, es_samples=64)
    train(config)
    at_freeze = checkpoint_model(tmp_path)
    summary = train(make_config(tmp_path, early_stop="cwnnk", patience=1, es_samples=64, epochs=4, resume=True))
    final = checkpoint_model(tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["es_frozen"] for r in records] == [[False] * 4] + [[True, False, False, False]] * 3
    assert [r["es_patience"][0] for r in records] == [1, 0, 0, 0]
    assert torch.equal(final["conv4.weight"][0], at_freeze["conv4.weight"][0])
    assert torch.equal(final["conv4.bias"][0], at_freeze["conv4.bias"][0])
    assert not torch.equal(final["conv4.weight"][1], at_freeze["conv4.weight"][1])
    assert summary["status"] == "complete" and summary["early_stop"]["frozen_epoch"] == [2, 0, 0, 0]


def test_cwnnk_stops_when_every_channel_is_frozen(tmp_path, monkeypatch):
    """Constant errors: all channels freeze at epoch 2, training stops and the epoch-1 weights
    (last improvement) are delivered."""
    calls = scripted_errors(monkeypatch, lambda n: [0.3, 0.3, 0.3, 0.3])
    summary = train(make_config(tmp_path, epochs=6, early_stop="cwnnk", patience=1, es_samples=64))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(calls) == 2 and [r["epoch"] for r in records] == [1, 2]
    es = summary["early_stop"]
    assert summary["status"] == "stopped early"
    assert (es["stop_epoch"], es["restore_epoch"]) == (2, 1)
    assert es["test_acc_at_stop"] == records[1]["test_acc"]
    assert summary["test_acc"] == es["test_acc_restored"] == records[0]["test_acc"]


def test_validation_early_stopping_stops_and_restores_the_best_epoch(tmp_path):
    """With a negligible learning rate the validation error never improves after epoch 1: training
    stops at epoch 1 + patience and the delivered weights are exactly those after epoch 1."""
    kw = dict(early_stop="validation", patience=2, optimizer="sgd", lr=1e-12, momentum=0.0, val_fraction=0.25)
    summary = train(make_config(tmp_path / "es", epochs=6, **kw))
    train(make_config(tmp_path / "one", epochs=1, **kw))
    es = summary["early_stop"]
    assert summary["status"] == "stopped early" and (es["stop_epoch"], es["restore_epoch"]) == (3, 1)
    records = read_jsonl(tmp_path / "es" / "metrics.jsonl")
    assert {"val_loss", "val_acc", "val_error", "es_patience"} <= records[0].keys()
    assert_same_state(checkpoint_model(tmp_path / "es"), checkpoint_model(tmp_path / "one"))


def test_cwnnk_with_the_real_loo_error_logs_every_channel(tmp_path):
    """End to end with convsim.nnk: one LOO error in [0, 1] per channel of the last conv, every epoch."""
    train(make_config(tmp_path, early_stop="cwnnk", es_samples=100, es_k=10))
    records = read_jsonl(tmp_path / "metrics.jsonl")
    for r in records:
        assert len(r["es_errors"]) == len(r["es_patience"]) == len(r["es_frozen"]) == 4
        assert all(0.0 <= e <= 1.0 for e in r["es_errors"])


def test_cwnnk_es_solver_reaches_the_nnk_and_is_recorded(tmp_path, monkeypatch):
    """es_solver="pruning": the LOO errors are computed with the pruning solver, and the epoch
    records and the summary name it with its tolerance; the default stays exact."""
    import convsim.nnk

    real, seen = convsim.nnk.channel_loo_error, []

    def spy(*args, **kwargs):
        seen.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(convsim.nnk, "channel_loo_error", spy)
    summary = train(
        make_config(tmp_path / "p", epochs=2, early_stop="cwnnk", es_samples=100, es_k=10, es_solver="pruning")
    )
    assert [(o.solver, o.pruning_tol, o.k, o.duplicates) for o in seen] == [("pruning", 1e-6, 10, "drop")] * 2
    records = read_jsonl(tmp_path / "p" / "metrics.jsonl")
    assert all(r["es_solver"] == "pruning" and r["es_pruning_tol"] == 1e-6 for r in records)
    nnk = summary["early_stop"]["nnk"]
    assert (nnk["solver"], nnk["pruning_tol"], nnk["k"]) == ("pruning", 1e-6, 10)
    assert summary["config"]["es_solver"] == "pruning"
    exact = train(make_config(tmp_path / "e", epochs=1, early_stop="cwnnk", es_samples=100, es_k=10))
    assert exact["early_stop"]["nnk"]["solver"] == "exact" and "pruning_tol" not in exact["early_stop"]["nnk"]
    assert read_jsonl(tmp_path / "e" / "metrics.jsonl")[0]["es_solver"] == "exact"


def test_cwnnk_needs_more_samples_than_neighbours(tmp_path):
    with pytest.raises(ConfigError, match=r"es_k \(25\) must be smaller"):
        train(make_config(tmp_path, early_stop="cwnnk", es_samples=20))
