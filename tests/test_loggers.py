"""Training logs (``convsim train --log {none,csv,tensorboard}``) and ``convsim reproduce --log``.

Runs are the trainer tests' tiny run (TINY_RUN); runs several tests read are module fixtures.
The oracles: ``metrics.jsonl`` (the record the logs are made from) read back with ``json``, the CSV
read back with the standard ``csv`` module, TensorBoard's event files read back with TensorBoard's
own ``EventAccumulator``, and per-layer values summed/averaged over layers against the record.
"""

import argparse
import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from convsim._internal.errors import UserError
from convsim._internal.files import read_jsonl
from convsim.cli import main
from convsim.reporting import suites
from convsim.training.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT
from convsim.training.config import LOGS, TrainConfig, add_arguments, config_from_args, to_argv
from convsim.training.distributed import DistEnv
from convsim.training.errors import ConfigError
from convsim.training.loggers import (
    CSV_FILE,
    TENSORBOARD_DIR,
    CsvLogger,
    NullLogger,
    csv_row,
    layer_redundancy,
    make_logger,
)
from convsim.training.loop import train
from test_train import TINY_RUN, store_as_old_run, without_seconds

# TensorBoard is an optional extra: the tests that write or read event files need it, the CSV ones do not.
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)


def make_config(out, **kw):
    return TrainConfig(**{**TINY_RUN, "out": str(out), **kw})


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / CSV_FILE, newline="") as f:
        return list(csv.DictReader(f))


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files: tag -> [(step, value)], as TensorBoard loads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def cell(value) -> str:
    """What csv writes for a python value (floats keep every digit)."""
    return "" if value is None else str(value)


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("csv")
    train(make_config(out, epochs=2, log="csv"))
    return out


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    train(make_config(out, epochs=2, log="tensorboard"))
    return out


# ---------------------------------------------------------------- the option


def test_log_choices_and_a_bad_value_is_a_user_error():
    assert LOGS == ("none", "csv", "tensorboard") and TrainConfig().log == "csv"
    with pytest.raises(ConfigError, match="log must be one of none, csv, tensorboard; got 'wandb'") as e:
        TrainConfig(log="wandb")
    assert isinstance(e.value, UserError)


def test_log_flag_round_trips_through_the_command_line():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = TrainConfig(log="tensorboard")
    assert to_argv(config) == ["--log", "tensorboard"]
    assert config_from_args(parser.parse_args(to_argv(config))) == config


# ---------------------------------------------------------------- csv


def test_csv_has_one_row_per_epoch_holding_the_records_scalars(csv_run):
    """Each row is its metrics.jsonl record: every scalar field, kernel_norm per layer, no per-channel list."""
    records, rows = read_jsonl(csv_run / "metrics.jsonl"), csv_rows(csv_run)
    assert [r["epoch"] for r in records] == [1, 2] and len(rows) == 2
    for record, row in zip(records, rows, strict=True):
        scalar = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        per_layer = {f"kernel_norm/{layer}": v for layer, v in record["kernel_norm"].items()}
        assert row == {k: cell(v) for k, v in {**scalar, **per_layer}.items()}
        assert float(row["test_acc"]) == record["test_acc"]  # every digit survives


def test_csv_row_flattens_dicts_and_drops_lists():
    record = {"epoch": 3, "lr": 0.1, "kernel_norm": {"a": 1.0, "b": 2.0}, "es_frozen": [True, False], "ok": True}
    assert csv_row(record) == {"epoch": 3, "lr": 0.1, "kernel_norm/a": 1.0, "kernel_norm/b": 2.0, "ok": True}


def test_csv_header_grows_when_an_epoch_brings_a_new_column(tmp_path):
    logger = CsvLogger(tmp_path / CSV_FILE)
    logger.start([{"epoch": 1, "lr": 0.1}])
    logger.log_epoch({"epoch": 2, "lr": 0.05, "val_acc": 0.5}, None)
    assert csv_rows(tmp_path) == [
        {"epoch": "1", "lr": "0.1", "val_acc": ""},
        {"epoch": "2", "lr": "0.05", "val_acc": "0.5"},
    ]


def test_resumed_run_has_the_straight_runs_rows_once_each(tmp_path, csv_run):
    """1 epoch, resume, 1 epoch: the CSV equals the straight 2-epoch run's, but for the seconds column."""
    train(make_config(tmp_path, epochs=1))
    train(make_config(tmp_path, epochs=2, resume=True))

    def drop_seconds(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert drop_seconds(csv_rows(tmp_path)) == drop_seconds(csv_rows(csv_run))


def test_resume_from_the_previous_checkpoint_rewrites_the_csv_to_its_epochs(tmp_path):
    """Epoch 2 was logged but its checkpoint is lost: the resumed run retrains it, and the CSV has it once."""
    train(make_config(tmp_path, epochs=2))
    (tmp_path / CHECKPOINT).unlink()  # the run falls back to checkpoint.prev.pt (epoch 1)
    with open(tmp_path / CSV_FILE, "a") as f:
        f.write("torn,li")  # and the crash tore a line
    train(make_config(tmp_path, epochs=2, resume=True))
    rows = csv_rows(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["test_acc"]) for r in rows] == [r["test_acc"] for r in read_jsonl(tmp_path / "metrics.jsonl")]


def test_resuming_a_finished_run_repairs_its_csv(tmp_path):
    train(make_config(tmp_path, epochs=1))
    good = (tmp_path / CSV_FILE).read_text()
    (tmp_path / CSV_FILE).write_text(good + "1,duplicate\n")
    train(make_config(tmp_path, epochs=1, resume=True))
    assert (tmp_path / CSV_FILE).read_text() == good


def test_a_fresh_start_removes_the_csv_of_an_abandoned_one(tmp_path):
    (tmp_path / CSV_FILE).write_text("epoch,lr\n1,0.5\n")
    logger = CsvLogger(tmp_path / CSV_FILE)
    logger.start([])
    assert not (tmp_path / CSV_FILE).exists()


def test_log_none_writes_no_log(tmp_path):
    train(make_config(tmp_path, epochs=1, log="none"))
    assert not (tmp_path / CSV_FILE).exists() and not (tmp_path / TENSORBOARD_DIR).exists()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1  # metrics.jsonl is always written


@needs_tensorboard
def test_only_rank_0_logs(tmp_path):
    for kind in LOGS:
        config = make_config(tmp_path, log=kind)
        assert isinstance(make_logger(config, DistEnv(rank=1, world_size=2)), NullLogger)
        assert isinstance(make_logger(config, DistEnv()), NullLogger) == (kind == "none")


# ---------------------------------------------------------------- tensorboard


@needs_tensorboard
def test_tensorboard_logs_each_epochs_metrics(tb_run):
    """Every numeric field of the record is a scalar at step = epoch, with the record's value (float32)."""
    got, records = scalars(tb_run), read_jsonl(tb_run / "metrics.jsonl")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "cs", "fm_similarity", "lr", "reg_loss"):
        assert got[key] == [(r["epoch"], pytest.approx(r[key], rel=1e-6, abs=1e-12)) for r in records], key
    assert "epoch" not in got and "order_sha256" not in got


@needs_tensorboard
def test_tensorboard_per_layer_values_add_up_to_the_record(tb_run):
    """cs/<layer> sums to the record's cs; fm_similarity(/_centered)/<layer> and kernel_cosine/<layer> average to it."""
    got, records = scalars(tb_run), read_jsonl(tb_run / "metrics.jsonl")
    layers = sorted(records[0]["kernel_norm"])
    assert len(layers) == 4  # cnn1
    for measure, combine in [
        ("cs", sum),
        ("fm_similarity", lambda v: sum(v) / len(v)),
        ("fm_similarity_centered", lambda v: sum(v) / len(v)),
        ("kernel_cosine", lambda v: sum(v) / len(v)),
        ("fm_effective_rank", lambda v: sum(v) / len(v)),
    ]:
        for i, record in enumerate(records):
            values = [got[f"{measure}/{layer}"][i] for layer in layers]
            assert [step for step, _ in values] == [record["epoch"]] * len(layers)
            assert combine([v for _, v in values]) == pytest.approx(record[measure], rel=1e-5), measure
    for layer in layers:
        assert got[f"kernel_norm/{layer}"][-1][1] == pytest.approx(records[-1]["kernel_norm"][layer], rel=1e-6)


def test_layer_redundancy_is_measured_like_the_record():
    """On a fixed model and batch, summing/averaging layer_redundancy gives measure_redundancy's values."""
    from convsim.models import build
    from convsim.training.evaluation import measure_redundancy

    torch.manual_seed(0)
    model, x = build("cnn1", input_size=20), torch.randn(16, 1, 20, 20)
    layers, whole = layer_redundancy(model, x), measure_redundancy(model, x)
    assert sum(layers["cs"].values()) == pytest.approx(whole["cs"], rel=1e-6)
    for key in ("fm_similarity", "fm_similarity_centered", "kernel_cosine", "fm_effective_rank"):
        assert sum(layers[key].values()) / len(layers[key]) == pytest.approx(whole[key], rel=1e-12), key


@needs_tensorboard
def test_tensorboard_shows_each_epoch_once_after_a_fallback_resume(tmp_path):
    """Epoch 2 logged, its checkpoint lost: the retrained epoch 2 replaces the first one in TensorBoard."""
    train(make_config(tmp_path, epochs=2, log="tensorboard"))
    (tmp_path / CHECKPOINT).unlink()
    assert (tmp_path / PREVIOUS_CHECKPOINT).exists()
    train(make_config(tmp_path, epochs=3, log="tensorboard", resume=True))
    got, records = scalars(tmp_path), read_jsonl(tmp_path / "metrics.jsonl")
    assert len(list((tmp_path / TENSORBOARD_DIR).iterdir())) == 2  # one event file per session
    assert [step for step, _ in got["train_loss"]] == [1, 2, 3]
    assert [v for _, v in got["train_loss"]] == [pytest.approx(r["train_loss"], rel=1e-6) for r in records]


def test_missing_tensorboard_is_a_user_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install convsim\[tensorboard\]") as e:
        train(make_config(tmp_path / "run", log="tensorboard"))
    assert isinstance(e.value, UserError)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="tensorboard"):  # every rank refuses alike under DDP
        make_logger(make_config(tmp_path, log="tensorboard"), DistEnv(rank=1, world_size=2))


def test_cli_reports_missing_tensorboard_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    argv = ["train", "--dataset", "synthetic", "--log", "tensorboard", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convsim train: error: ") and "convsim[tensorboard]" in err[0]


# ---------------------------------------------------------------- stored runs and reproduce


@needs_tensorboard
def test_a_run_stored_before_the_log_field_resumes_with_any_log(tmp_path):
    """The committed study's runs have no `log` in their config: they resume under every choice."""
    train(make_config(tmp_path, epochs=1))
    ckpt = torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=True)
    del ckpt["config"]["log"]
    store_as_old_run(ckpt, tmp_path)
    summary = train(make_config(tmp_path, epochs=2, log="tensorboard", resume=True))
    assert summary["epochs_run"] == 2 and [s for s, _ in scalars(tmp_path)["test_acc"]] == [2]


def test_reproduce_passes_the_log_to_every_run_without_making_it_part_of_the_runs_identity(tmp_path):
    """A complete run stored without `log` (as the committed fmnist runs are) is skipped, not flagged as
    trained with other settings; the runs to train get the log; spec.json does not record it."""
    name, other = "cnn1-w1-baseline-s0", "cnn1-w1-baseline-s1"
    spec = next(s for s in suites.SUITES["smoke"] if s.name == name)
    stored = {k: v for k, v in {**dataclasses.asdict(TrainConfig()), **spec.overrides}.items() if k != "log"}
    (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / name / "summary.json").write_text(json.dumps({"status": "complete", "config": stored}))
    opts_seen, lines = {}, []

    def train_one(spec_dict, run_dir, opts):
        opts_seen[spec_dict["name"]] = opts
        Path(run_dir, "summary.json").write_text(json.dumps({"status": "complete", "config": spec_dict["overrides"]}))
        return spec_dict["name"], "complete", 0.0, ""

    res = suites.reproduce(
        "smoke",
        tmp_path,
        only="^cnn1-w1-baseline-s",
        train_log="tensorboard",
        train_one=train_one,
        report=False,
        log=lines.append,
    )
    assert res["skipped"] == [name] and res["trained"] == [other]
    assert not any("other settings" in line for line in lines)
    assert opts_seen[other]["log"] == "tensorboard"
    for run in (name, other):
        assert "log" not in json.loads((tmp_path / "runs" / run / "spec.json").read_text())["overrides"]
    config = suites._config(spec, tmp_path / "runs" / name, opts_seen[other], TrainConfig)
    assert (config.log, config.resume) == ("tensorboard", True)
    with pytest.raises(ValueError, match="train_log must be one of none, csv, tensorboard"):
        suites.reproduce("smoke", tmp_path, only=name, train_log="wandb", train_one=train_one, report=False)


def test_cli_reproduce_log_reaches_reproduce(tmp_path, monkeypatch):
    seen = {}

    def fake_reproduce(suite, out, **kw):
        seen.update(kw)
        return {"failed": {}}

    monkeypatch.setattr("convsim.cli.reproduce.reproduce", fake_reproduce)
    assert main(["reproduce", "--suite", "smoke", "--out", str(tmp_path), "--log", "none"]) == 0
    assert seen["train_log"] == "none"
    assert main(["reproduce", "--suite", "smoke", "--out", str(tmp_path)]) == 0
    assert seen["train_log"] is None  # the trainer's default


@needs_tensorboard
def test_resumed_log_choice_leaves_the_training_alone(tmp_path, csv_run):
    """metrics.jsonl of a run resumed under another log equals the straight run's: the log is not the math."""
    train(make_config(tmp_path, epochs=1, log="none"))
    train(make_config(tmp_path, epochs=2, log="tensorboard", resume=True))
    assert without_seconds(read_jsonl(tmp_path / "metrics.jsonl")) == without_seconds(
        read_jsonl(csv_run / "metrics.jsonl")
    )


def test_the_log_is_no_setting_of_a_reports_groups(tmp_path):
    """A run stored with `log` and one stored before it existed differ in no setting the report shows."""
    from convsim.reporting.runs import group_runs, load_runs
    from convsim.reporting.tables import settings_table

    base = {"model": "cnn1", "lr": 0.01, "beta": 0.0, "penalty": "none", "init_iters": 0}
    for name, extra in (("old-s0", {}), ("new-s0", {"log": "csv"})):
        (tmp_path / name).mkdir()
        summary = {"status": "complete", "config": {**base, **extra, "seed": 0}, "test_acc": 0.5}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    groups = list(group_runs(load_runs(tmp_path)).values())
    assert len(groups) == 2 and all("log" not in g.config for g in groups)
    assert settings_table(groups)[1] == {"old": {}, "new": {}}
