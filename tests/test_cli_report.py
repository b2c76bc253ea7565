"""`convsim report DIR [--out DIR]`: a suite's report rebuilt from its run files alone."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from convsim import cli
from convsim._internal.files import atomic_write_json
from convsim.reporting import report
from convsim.reporting.runs import group_runs, load_runs
from convsim.reporting.suites import SUITE_OPTIONS, SUITES
from test_report import make_run

SMOKE = SUITES["smoke"]


def _smoke_folder(root: Path) -> Path:
    """A folder as `convsim reproduce --suite smoke` leaves it once committed: suite.json and the run
    files of every smoke run (synthetic numbers), no checkpoints."""
    atomic_write_json(root / "suite.json", {"suite": "smoke", "jobs": 1, "threads": 1})
    for i, s in enumerate(SMOKE):
        o = dict(s.overrides)
        make_run(
            root / "runs",
            s.name,
            seed=s.seed,
            studies=s.studies,
            method=s.method,
            config=o,
            epochs=int(o["epochs"]),
            init_steps=int(o.get("init_iters") or 0),
            test_acc=0.6 + 0.01 * (i % 7),
            kernel_norm=1.0,
        )
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_rebuilds_the_report_from_run_files_alone(tmp_path, capsys):
    src = _smoke_folder(tmp_path / "suite")
    runs_before = _snapshot(src / "runs")
    assert not list(src.rglob("checkpoint.pt"))
    assert cli.main(["report", str(src)]) == 0
    out = capsys.readouterr().out
    for name in ("report.md", "results.json", "summary.csv"):
        assert (src / name).stat().st_size > 0
    results = json.loads((src / "results.json").read_text())
    assert results["suite"] == "smoke" and results["incomplete"] == []
    assert sorted(r["name"] for r in results["runs"]) == sorted(s.name for s in SMOKE)
    assert results["design"] == SUITE_OPTIONS["smoke"]["claims"].as_dict()
    assert {k: results["study"][k] for k in ("jobs", "threads")} == {"jobs": 1, "threads": 1}  # from suite.json
    assert results["study"]["description"].startswith("Seconds per run")  # the smoke suite's docstring
    groups = list(csv.DictReader((src / "summary.csv").open()))
    assert sorted(r["group"] for r in groups) == sorted({s.group for s in SMOKE})
    assert _snapshot(src / "runs") == runs_before  # the run files are only read
    for c in results["claims"]:
        assert f"({c['id']}) {c['verdict']}: {c['claim']}" in out
    md = (src / "report.md").read_text()
    assert "suite `smoke`" in md and "have neither a checkpoint" in md


def test_report_out_writes_elsewhere_and_reuses_the_stored_overlap_cache(tmp_path):
    src = _smoke_folder(tmp_path / "suite")
    # The suite's committed overlap analysis: a cache that matches its runs and the suite's options.
    calls = []
    stand_ins = [d / "checkpoint.pt" for d in (src / "runs").iterdir()]
    for ckpt in stand_ins:  # the analysis ran while the weights were there (the fake never opens them)
        ckpt.write_bytes(b"")
    groups = group_runs(load_runs(src / "runs"))
    report.overlap_section(
        groups,
        src,
        SUITE_OPTIONS["smoke"]["overlap"],
        analysis=lambda dirs, out, **kw: calls.append(kw) or {"pearson_r": 0.25},
        markdown=lambda res: f"stored overlap, r = {res['pearson_r']}\n",
    )
    assert len(calls) == 1
    for ckpt in stand_ins:  # checkpoints are not committed
        ckpt.unlink()
    before = _snapshot(src)
    dest = tmp_path / "elsewhere"
    assert cli.main(["report", str(src), "--out", str(dest)]) == 0
    assert _snapshot(src) == before  # nothing written into the source folder
    assert not (src / "report.md").exists()
    md = (dest / "report.md").read_text()
    assert "stored overlap, r = 0.25" in md
    results = json.loads((dest / "results.json").read_text())
    assert results["overlap"] == {"pearson_r": 0.25}
    assert (dest / "summary.csv").exists() and (dest / "figures").is_dir()


def _without_suite_json(root: Path) -> Path:
    (root / "runs").mkdir(parents=True)
    return root


def _unknown_suite(root: Path) -> Path:
    (root / "runs").mkdir(parents=True)
    atomic_write_json(root / "suite.json", {"suite": "no-such-suite"})
    return root


def _torn_suite_json(root: Path) -> Path:
    (root / "runs").mkdir(parents=True)
    (root / "suite.json").write_text('{"suite": ')
    return root


def _suite_json(value):
    def make(root: Path) -> Path:
        (root / "runs").mkdir(parents=True)
        (root / "suite.json").write_text(json.dumps(value))
        return root

    return make


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p / "missing",
        _without_suite_json,
        _unknown_suite,
        _torn_suite_json,
        _suite_json(["smoke"]),
        _suite_json({"suite": ["smoke"]}),
    ],
    ids=["missing-folder", "no-suite-json", "unknown-suite", "torn-suite-json", "not-an-object", "suite-not-a-name"],
)
def test_report_usage_errors_exit_2_with_one_line(tmp_path, capsys, make):
    folder = make(tmp_path / "suite")
    assert cli.main(["report", str(folder)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convsim report: error:")
    assert not (tmp_path / "suite" / "report.md").exists()


def test_report_error_has_no_traceback_from_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "convsim", "report", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convsim report: error:"), out.stderr
    assert "Traceback" not in out.stderr
