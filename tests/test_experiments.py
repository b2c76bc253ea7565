"""Suites as data and `convsim reproduce`: spec validity, skip/resume logic, and the smoke suite end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from convsim._internal.files import append_jsonl, atomic_write_json
from convsim.reporting import report
from convsim.reporting import suites as ex
from convsim.reporting.cwnnk_records import RUN_RECORD
from convsim.reporting.runs import infer_method

REPORT_STUDIES = {"main", "width", "iters", "resnet", "momentum", "early_stop"}


# ---------------------------------------------------------------- suites as data


@pytest.mark.parametrize("suite", sorted(ex.SUITES))
def test_suite_overrides_are_valid_train_configs(suite):
    from convsim.training import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for spec in ex.SUITES[suite]:
        assert set(spec.overrides) <= known, (spec.name, set(spec.overrides) - known)
        TrainConfig(**spec.overrides, out="unused")  # validates every value


@pytest.mark.parametrize("suite", sorted(ex.SUITES))
def test_suite_names_are_unique_and_group_by_seed(suite):
    specs = ex.SUITES[suite]
    assert len({s.name for s in specs}) == len(specs)
    seeds_per_group: dict[str, set] = {}
    for s in specs:
        assert s.name == f"{s.group}-s{s.seed}" and s.overrides["seed"] == s.seed
        seeds_per_group.setdefault(s.group, set()).add(s.seed)
    assert min(len(v) for v in seeds_per_group.values()) >= (2 if suite == "smoke" else 3)


@pytest.mark.parametrize("suite", ["smoke", "quick", "paper"])  # fmnist: cnn1 only, its own sections
def test_suite_feeds_every_report_study(suite):
    studies = {st for s in ex.SUITES[suite] for st in s.studies}
    assert studies >= REPORT_STUDIES


@pytest.mark.parametrize("suite", sorted(ex.SUITES))
def test_suite_method_labels_match_their_configs(suite):
    for s in ex.SUITES[suite]:
        assert infer_method(s.overrides) == s.method, s.name


@pytest.mark.parametrize("suite", sorted(ex.SUITES))
def test_width_study_includes_the_main_study_width(suite):
    """Claim (c) compares each width with the next one up: the sweep must not skip the main study's width."""
    specs = ex.SUITES[suite]
    swept: dict[str, set] = {}
    for s in specs:
        if "width" in s.studies:
            swept.setdefault(s.overrides["model"], set()).add(float(s.overrides["width"]))
    for s in specs:
        if "main" in s.studies and s.overrides["model"] in swept:
            assert float(s.overrides["width"]) in swept[s.overrides["model"]], s.name


def test_quick_and_paper_compare_main_methods_on_cnn1_and_cnn2():
    for suite in ("quick", "paper"):
        main = {(s.overrides["model"], s.method) for s in ex.SUITES[suite] if "main" in s.studies}
        for model in ("cnn1", "cnn2"):
            assert {(model, m) for m in ("baseline", "cs-init", "cs-reg")} <= main


def test_paper_suite_sweeps_init_iterations_and_beta():
    specs = ex.SUITES["paper"]
    iters = {s.overrides["init_iters"] for s in specs if "iters" in s.studies}
    betas = {s.overrides["beta"] for s in specs if "beta" in s.studies}
    assert iters == {0, 100, 500, 1000, 2000} and betas == {0.001, 0.01, 0.1}


def test_grid_is_the_product_of_its_axes():
    specs = ex.grid(
        "width",
        {"cnn1": {"epochs": 1}},
        methods=("baseline", "cs-reg"),
        widths=(0.5, 1.0, 2.0),
        seeds=(0, 1, 2),
        hp=ex.Hyper(),
    )
    assert len(specs) == 2 * 3 * 3
    assert {s.group for s in specs} >= {"cnn1-w0.5-baseline", "cnn1-w2-cs-reg-b0.01"}


def test_method_overrides_select_the_method():
    hp = ex.Hyper(beta=0.1, init_iters=7, penalty_betas={"so": 0.3, "ocnn": 1, "srip": 1, "decov": 1})
    assert ex.method_overrides("cs-init+reg", hp) == {
        "beta": 0.1,
        "init_iters": 7,
        "penalty": "none",
        "penalty_beta": 0.0,
    }
    assert ex.method_overrides("so", hp)["penalty_beta"] == 0.3
    with pytest.raises(ValueError, match="unknown method"):
        ex.method_overrides("dropout", hp)


def test_merge_keeps_shared_runs_once_with_all_studies():
    a = ex.grid("main", {"cnn1": {}}, methods=("baseline",), seeds=(0,), hp=ex.Hyper())
    b = ex.grid("width", {"cnn1": {}}, methods=("baseline",), seeds=(0,), hp=ex.Hyper())
    merged = ex.merge(a, b)
    assert len(merged) == 1 and merged[0].studies == ("main", "width")


def test_merge_rejects_conflicting_definitions():
    a = ex.grid("main", {"cnn1": {"epochs": 1}}, methods=("baseline",), seeds=(0,), hp=ex.Hyper())
    b = ex.grid("main", {"cnn1": {"epochs": 2}}, methods=("baseline",), seeds=(0,), hp=ex.Hyper())
    with pytest.raises(ValueError, match="defined twice"):
        ex.merge(a, b)


def test_validate_specs_rejects_unknown_fields():
    @dataclasses.dataclass
    class Cfg:
        model: str = "cnn1"

    spec = ex.RunSpec("r-s0", "r", "baseline", 0, {"model": "cnn1", "dropout": 0.5})
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        ex.validate_specs([spec], Cfg)


# ---------------------------------------------------------------- reproduce with a fake trainer


def _fake_trainer(calls, fail=()):
    """Writes a complete run directory like convsim.training.loop does (or fails for names in ``fail``)."""

    def train_one(spec, run_dir, opts):
        calls.append(spec["name"])
        if spec["name"] in fail:
            return spec["name"], "failed", 0.0, "RuntimeError: boom"
        d = Path(run_dir)
        append_jsonl(d / "metrics.jsonl", {"epoch": 1, "train_loss": 1.0, "test_acc": 0.5, "cs": 1.0})
        atomic_write_json(d / "summary.json", {"status": "complete", "config": spec["overrides"], "test_acc": 0.5})
        return spec["name"], "complete", 0.0, ""

    return train_one


def _picklable_fake_train_one(spec, run_dir, opts):
    """Module-level (picklable) fake trainer for worker processes; records its torch thread option."""
    d = Path(run_dir)
    atomic_write_json(
        d / "summary.json", {"status": "complete", "config": spec["overrides"], "threads": opts["threads"]}
    )
    return spec["name"], "complete", 0.0, ""


def test_reproduce_with_two_jobs_trains_every_run_in_workers(tmp_path):
    res = ex.reproduce(
        "smoke",
        tmp_path,
        only="^cnn1-w1-(baseline|so)-s",
        jobs=2,
        report=False,
        log=lambda s: None,
        train_one=_picklable_fake_train_one,
    )
    assert res["trained"] == ["cnn1-w1-baseline-s0", "cnn1-w1-baseline-s1", "cnn1-w1-so-s0", "cnn1-w1-so-s1"]
    summary = json.loads((tmp_path / "runs" / "cnn1-w1-so-s1" / "summary.json").read_text())
    assert summary["threads"] >= 1


def test_reproduce_trains_missing_runs_then_skips_them(tmp_path):
    calls = []
    kw = dict(only="^cnn1-w1-baseline-s", train_one=_fake_trainer(calls), report=False, log=lambda s: None)
    first = ex.reproduce("smoke", tmp_path, **kw)
    assert first["trained"] == calls == ["cnn1-w1-baseline-s0", "cnn1-w1-baseline-s1"]
    spec = json.loads((tmp_path / "runs" / "cnn1-w1-baseline-s0" / "spec.json").read_text())
    assert spec["method"] == "baseline" and "main" in spec["studies"]
    second = ex.reproduce("smoke", tmp_path, **kw)
    assert second["trained"] == [] and len(calls) == 2 and len(second["skipped"]) == 2


def test_reproduce_resumes_interrupted_runs(tmp_path):
    calls = []
    d = tmp_path / "runs" / "cnn1-w1-baseline-s0"
    append_jsonl(d / "metrics.jsonl", {"epoch": 1, "train_loss": 1.0})
    atomic_write_json(d / "summary.json", {"status": "interrupted"})
    assert ex.run_status(d) == "interrupted"
    ex.reproduce(
        "smoke",
        tmp_path,
        only="^cnn1-w1-baseline-s0$",
        train_one=_fake_trainer(calls),
        report=False,
        log=lambda s: None,
    )
    assert calls == ["cnn1-w1-baseline-s0"] and ex.run_status(d) == "complete"


def test_reproduce_counts_a_stopped_early_run_as_complete(tmp_path):
    d = tmp_path / "r"
    atomic_write_json(d / "summary.json", {"status": "stopped early"})
    assert ex.run_status(d) == "complete"


def test_reproduce_records_failures_and_continues(tmp_path):
    calls = []
    res = ex.reproduce(
        "smoke",
        tmp_path,
        only="^cnn1-w1-baseline-s",
        report=False,
        log=lambda s: None,
        train_one=_fake_trainer(calls, fail={"cnn1-w1-baseline-s0"}),
    )
    assert res["failed"] == {"cnn1-w1-baseline-s0": "RuntimeError: boom"}
    assert res["trained"] == ["cnn1-w1-baseline-s1"]


def test_reproduce_warns_about_runs_trained_with_other_settings(tmp_path):
    d = tmp_path / "runs" / "cnn1-w1-baseline-s0"
    atomic_write_json(d / "summary.json", {"status": "complete", "config": {"lr": 123.0}})
    lines = []
    ex.reproduce(
        "smoke", tmp_path, only="^cnn1-w1-baseline-s0$", train_one=_fake_trainer([]), report=False, log=lines.append
    )
    assert any("other settings" in s and "lr" in s for s in lines)


@pytest.mark.parametrize("kw,match", [({"suite": "huge"}, "unknown suite"), ({"jobs": 0}, "jobs")])
def test_reproduce_rejects_bad_arguments(tmp_path, kw, match):
    args = {"suite": "smoke", "out": tmp_path, **kw}
    with pytest.raises(ValueError, match=match):
        ex.reproduce(args.pop("suite"), args.pop("out"), **args)


def test_cli_list_prints_runs_and_status(tmp_path, capsys):
    from convsim.cli import main

    assert main(["reproduce", "--suite", "smoke", "--out", str(tmp_path), "--list", "--only", "so-s0$"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].split()[:2] == ["cnn1-w1-so-s0", "missing"]


# ---------------------------------------------------------------- the smoke suite, for real


def results_figures(out):
    return json.loads((out / "results.json").read_text())["figures"].values()


@pytest.mark.slow
def test_smoke_suite_end_to_end_writes_full_report_and_second_run_only_reaggregates(tmp_path):
    from convsim.cli import main

    args = ["reproduce", "--suite", "smoke", "--out", str(tmp_path), "--threads", "1"]
    assert main(args) == 0
    md = (tmp_path / "report.md").read_text()
    for section in report.SECTIONS:
        if section.heading not in (
            "Claim (d) at matched strength",
            "Shrinkage or decorrelation",
            "Regularisation strength",
        ):  # the fmnist suite's sections
            assert f"\n## {section.heading}\n" in md, section.heading
    for name in results_figures(tmp_path):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["figures"]) >= {"cs_loss", "train_loss", "width"}
    assert len(results["runs"]) == len(ex.SUITES["smoke"]) and all(r["complete"] for r in results["runs"])
    assert results["overlap"] is not None and (tmp_path / "summary.csv").exists()
    # Each run the overlap study covers keeps its CW-NNK record, so the report needs no checkpoint.
    study = ex.SUITE_OPTIONS["smoke"]["overlap"]["study"]
    covered = [s.name for s in ex.SUITES["smoke"] if study in s.studies]
    assert covered and all((tmp_path / "runs" / n / RUN_RECORD).exists() for n in covered)
    for ckpt in (tmp_path / "runs").glob("*/checkpoint*.pt"):
        ckpt.unlink()
    (tmp_path / "overlap" / "cache.json").unlink()
    assert main(["report", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["overlap"] == results["overlap"]
    # The second run only re-aggregates: it trains nothing and rewrites no run's summary. (How long
    # that takes is a benchmark's business, not a test's.)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/summary.json")}
    res = ex.reproduce("smoke", tmp_path, threads=1, log=lambda s: None)
    assert res["trained"] == [] and len(res["skipped"]) == len(ex.SUITES["smoke"])
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
