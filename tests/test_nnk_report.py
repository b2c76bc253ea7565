"""`convsim overlap`: analysis of run directories, overlap.json, figures, markdown and the command."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from scipy import stats

from convsim.cli import main as cli_main
from convsim.reporting.cwnnk_records import RUN_RECORD, stored_record
from convsim.reporting.overlap import MEASURES, overlap_analysis, overlap_markdown
from convsim.training.config import TrainConfig
from convsim.training.loop import build_model

ACCS = (0.61, 0.72, 0.68)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Three run directories laid out as convsim train writes them (checkpoint + summary)."""
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed, acc in enumerate(ACCS):
        d = root / f"cnn1-seed{seed}"
        d.mkdir()
        config = TrainConfig(model="cnn1", dataset="synthetic", width=1.0, seed=seed, out=str(d))
        torch.manual_seed(seed)
        model = build_model(config)
        torch.save({"model": model.state_dict()}, d / "checkpoint.pt")
        (d / "summary.json").write_text(json.dumps({"config": asdict(config), "test_acc": acc, "seed": seed}))
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def result(run_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("overlap")
    return overlap_analysis(run_dirs, out, n_samples=60, k=5)


def test_analysis_covers_every_run_and_conv_layer(result):
    """One entry per run, one summary per conv layer in depth order, the run's test accuracy."""
    assert [r["name"] for r in result["runs"]] == ["cnn1-seed0", "cnn1-seed1", "cnn1-seed2"]
    for r, acc in zip(result["runs"], ACCS, strict=True):
        assert [lay["name"] for lay in r["layers"]] == ["conv1", "conv2", "conv3", "conv4"]
        assert [lay["depth"] for lay in r["layers"]] == [1, 2, 3, 4]
        assert r["test_acc"] == acc
        assert r["last_layer"]["name"] == "conv4"
        assert len(r["last_layer"]["jaccard"]) == r["last_layer"]["channels"]


def test_overlap_json_and_figures_are_written(result):
    """overlap.json holds the returned numbers (NaN-free) and every figure is a PNG."""
    out = result["out_dir"]
    with open(f"{out}/overlap.json") as fh:
        text = fh.read()
    assert "NaN" not in text
    assert json.loads(text)["runs"][0]["layers"] == result["runs"][0]["layers"]
    assert len(result["figures"]) == 4
    for f in result["figures"]:
        with open(f"{out}/{f}", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_correlations_equal_scipy_on_the_stored_values(result):
    """Pearson and Spearman r of each last-layer measure against test accuracy."""
    for m in MEASURES:
        xs = [r["last_layer"][m] for r in result["runs"]]
        c = result["correlations"][m]
        assert c["n"] == 3
        if max(xs) == min(xs):
            assert c["pearson_r"] is None
            continue
        assert math.isclose(c["pearson_r"], stats.pearsonr(xs, ACCS)[0], abs_tol=1e-12)
        assert math.isclose(c["spearman_r"], stats.spearmanr(xs, ACCS)[0], abs_tol=1e-12)


def test_measures_are_consistent_with_their_definitions(result):
    """M2 in [1/C, 1] for live channels, redundancy = 1 - M2, counts within [0, k]."""
    for r in result["runs"]:
        for lay in r["layers"]:
            assert math.isclose(lay["redundancy"], 1 - lay["union_ratio"])
            live = lay["channels"] - lay["dead"]
            if live:
                assert 1 / live - 1e-12 <= lay["union_ratio"] <= 1 + 1e-12
            assert 0 <= lay["mean_channel_count"] <= 5 and 0 <= lay["mean_layer_count"] <= 5


def test_markdown_lists_runs_and_links_figures(result):
    """The section has a row per run and links the figures relative to the report."""
    md = overlap_markdown(result)
    folder = result["out_dir"].rstrip("/").split("/")[-1]
    for name in ("cnn1-seed0", "cnn1-seed1", "cnn1-seed2"):
        assert f"| {name} | conv4 |" in md
    assert f"]({folder}/counts_vs_depth.png)" in md
    assert "](counts_vs_depth.png)" in overlap_markdown(result, figure_dir=".")


def test_too_few_runs_give_no_correlation(run_dirs, tmp_path):
    """Two runs: no r, and the markdown says why."""
    res = overlap_analysis(run_dirs[:2], tmp_path, n_samples=40, k=4, layers=["conv4"], figures=False)
    assert all(c["pearson_r"] is None for c in res["correlations"].values())
    assert "at least 3 runs" in overlap_markdown(res)
    assert [lay["name"] for lay in res["runs"][0]["layers"]] == ["conv4"]


def test_command_writes_json_and_markdown(run_dirs, tmp_path):
    """`convsim overlap RUN_DIR... --out DIR` exits 0 and writes overlap.json and overlap.md."""
    out = tmp_path / "ov"
    code = cli_main(
        [
            "overlap",
            *map(str, run_dirs),
            "--out",
            str(out),
            "--n-samples",
            "40",
            "-k",
            "4",
            "--layers",
            "conv3,conv4",
            "--no-figures",
        ]
    )
    assert code == 0
    assert (out / "overlap.json").exists()
    assert (out / "overlap.md").read_text().startswith("# Channel-wise NNK overlap")


def test_analysis_validates_options(run_dirs, tmp_path):
    """Unknown kernels, solvers and splits, and an empty run list, raise."""
    with pytest.raises(ValueError, match="kernel must be one of"):
        overlap_analysis(run_dirs, tmp_path, kernel="rbf")
    with pytest.raises(ValueError, match="split must be"):
        overlap_analysis(run_dirs, tmp_path, split="val")
    with pytest.raises(ValueError, match="at least one run directory"):
        overlap_analysis([], tmp_path)


def test_runs_at_chance_accuracy_are_left_out_of_the_correlations(run_dirs, tmp_path):
    """A collapsed run (test accuracy at chance) stays in the tables but not in Pearson/Spearman r."""
    import shutil

    dirs = []
    for d, acc in zip(run_dirs, (0.10, 0.72, 0.68), strict=True):
        copy = tmp_path / d.name
        shutil.copytree(d, copy)
        s = json.loads((copy / "summary.json").read_text())
        s["test_acc"] = acc
        (copy / "summary.json").write_text(json.dumps(s))
        dirs.append(copy)
    res = overlap_analysis(dirs, tmp_path / "out", n_samples=60, k=5, figures=False)
    assert [r["collapsed"] for r in res["runs"]] == [True, False, False]
    assert all(c["n"] == 2 for c in res["correlations"].values())
    assert "cnn1-seed0" in overlap_markdown(res).split("left out of the correlations")[1]


def test_correlations_are_also_given_within_each_model(run_dirs, tmp_path):
    """With two architectures, each model's runs get their own correlations (pooling confounds them)."""
    import shutil

    dirs = list(run_dirs)
    for seed, acc in enumerate((0.5, 0.6, 0.7)):
        d = tmp_path / f"cnn2-seed{seed}"
        config = TrainConfig(model="cnn2", dataset="synthetic", width=0.25, seed=seed, out=str(d))
        d.mkdir()
        torch.manual_seed(seed)
        torch.save({"model": build_model(config).state_dict()}, d / "checkpoint.pt")
        (d / "summary.json").write_text(json.dumps({"config": asdict(config), "test_acc": acc, "seed": seed}))
        dirs.append(d)
    res = overlap_analysis(dirs, tmp_path / "out", n_samples=60, k=5, figures=False)
    assert sorted(res["correlations_by_model"]) == ["cnn1", "cnn2"]
    assert all(c["n"] == 3 for corr in res["correlations_by_model"].values() for c in corr.values())
    assert all(c["n"] == 6 for c in res["correlations"].values())
    assert "_Within cnn2 runs only:_" in overlap_markdown(res)
    shutil.rmtree(tmp_path / "out")


def test_pruning_solver_is_named_with_its_tolerance(run_dirs, tmp_path):
    """--nnk-solver pruning: overlap.json records the solver, its tolerance and every NNK setting,
    and the markdown names them; an exact analysis records no tolerance; a bad tolerance raises."""
    out = tmp_path / "pr"
    argv = ["overlap", *map(str, run_dirs), "--out", str(out), "--n-samples", "40", "-k", "4", "--layers", "conv4"]
    assert cli_main([*argv, "--nnk-solver", "pruning", "--pruning-tol", "1e-5", "--no-figures"]) == 0
    res = json.loads((out / "overlap.json").read_text())
    o = res["options"]
    assert (o["solver"], o["pruning_tol"], o["nnk"]["solver"], o["nnk"]["pruning_tol"]) == (
        "pruning",
        1e-5,
        "pruning",
        1e-5,
    )
    assert o["nnk"]["k"] == 4 and o["nnk"]["duplicates"] == "drop"
    assert "pruning solver (the released one-way solver, tolerance 1e-05)" in (out / "overlap.md").read_text()
    exact = overlap_analysis(run_dirs, tmp_path / "ex", n_samples=40, k=4, layers=["conv4"], figures=False)
    assert "pruning_tol" not in exact["options"] and exact["options"]["nnk"]["solver"] == "exact"
    assert "exact solver" in overlap_markdown(exact)
    with pytest.raises(ValueError, match="pruning_tol must be a number in"):
        overlap_analysis(run_dirs, tmp_path, solver="pruning", pruning_tol=2.0)


# ------------------------------------------------------------- a run's stored record (no checkpoint later)


def _copy_runs(run_dirs, root):
    import shutil

    return [Path(shutil.copytree(d, root / d.name)) for d in run_dirs]


def _without_paths(result):
    return [{k: v for k, v in r.items() if k != "path"} for r in result["runs"]]


def test_kept_records_replace_the_checkpoints(run_dirs, tmp_path):
    """With keep_records each run's analysis is stored beside it; without its checkpoint the analysis is unchanged."""
    dirs = _copy_runs(run_dirs, tmp_path / "runs")
    first = overlap_analysis(dirs, tmp_path / "a", n_samples=60, k=5, keep_records=True, figures=False)
    assert all((d / RUN_RECORD).exists() for d in dirs)
    for d in dirs:
        (d / "checkpoint.pt").unlink()
    again = overlap_analysis(dirs, tmp_path / "b", n_samples=60, k=5, keep_records=True, figures=False)
    assert _without_paths(again) == json.loads(json.dumps(_without_paths(first)))
    assert json.dumps(again["correlations"]) == json.dumps(first["correlations"])


def test_a_record_is_ignored_when_the_settings_differ(run_dirs, tmp_path):
    dirs = _copy_runs(run_dirs, tmp_path / "runs")
    overlap_analysis(dirs, tmp_path / "a", n_samples=60, k=5, keep_records=True, figures=False)
    assert stored_record(dirs[0], {"n_samples": 60, "k": 5}) is not None
    assert stored_record(dirs[0], {"n_samples": 60, "k": 6}) is None
    assert stored_record(dirs[0], {"n_samples": 60, "k": 5, "split": "test"}) is None


def test_a_record_is_ignored_when_the_run_changes(run_dirs, tmp_path):
    dirs = _copy_runs(run_dirs, tmp_path / "runs")
    overlap_analysis(dirs, tmp_path / "a", n_samples=60, k=5, keep_records=True, figures=False)
    summary = json.loads((dirs[0] / "summary.json").read_text())
    (dirs[0] / "summary.json").write_text(json.dumps({**summary, "test_acc": 0.99}))
    assert stored_record(dirs[0], {"n_samples": 60, "k": 5}) is None
    assert stored_record(dirs[1], {"n_samples": 60, "k": 5}) is not None


def test_the_default_settings_key_a_record_as_if_they_were_given(run_dirs, tmp_path):
    dirs = _copy_runs(run_dirs, tmp_path / "runs")
    overlap_analysis(dirs[:2], tmp_path / "a", n_samples=60, k=5, keep_records=True, figures=False)
    given = {"n_samples": 60, "k": 5, "kernel": "cosine", "solver": "exact", "split": "train", "seed": 0}
    assert stored_record(dirs[0], given) is not None


def test_without_keep_records_nothing_is_written_into_the_runs(run_dirs, tmp_path):
    dirs = _copy_runs(run_dirs, tmp_path / "runs")
    overlap_analysis(dirs, tmp_path / "a", n_samples=60, k=5, figures=False)
    assert not any((d / RUN_RECORD).exists() for d in dirs)


def _spec(studies):
    from convsim.reporting.suites import RunSpec

    return RunSpec(name="r", group="g", method="baseline", seed=0, overrides={}, studies=studies)


def test_reproduce_stores_the_record_of_a_run_the_overlap_study_covers(run_dirs, tmp_path):
    from convsim.reporting.suites import _keep_overlap_record

    (d,) = _copy_runs(run_dirs[:1], tmp_path)
    note = _keep_overlap_record(_spec(("main",)), d, {"study": "main", "n_samples": 60, "k": 5})
    assert note == "; CW-NNK record stored"
    assert stored_record(d, {"n_samples": 60, "k": 5}) is not None


def test_reproduce_stores_no_record_outside_the_overlap_study(run_dirs, tmp_path):
    from convsim.reporting.suites import _keep_overlap_record

    (d,) = _copy_runs(run_dirs[:1], tmp_path)
    assert _keep_overlap_record(_spec(("width",)), d, {"study": "main", "n_samples": 60, "k": 5}) == ""
    assert _keep_overlap_record(_spec(("main",)), d, {"skip": True}) == ""
    assert not (d / RUN_RECORD).exists()


def test_a_record_that_cannot_be_made_is_reported_not_raised(run_dirs, tmp_path):
    from convsim.reporting.suites import _keep_overlap_record

    (d,) = _copy_runs(run_dirs[:1], tmp_path)
    (d / "checkpoint.pt").unlink()
    note = _keep_overlap_record(_spec(("main",)), d, {"study": "main", "n_samples": 60, "k": 5})
    assert note.startswith("; CW-NNK record not stored (") and not (d / RUN_RECORD).exists()


def test_keep_run_record_rejects_unknown_settings(run_dirs):
    from convsim.reporting.overlap import keep_run_record

    with pytest.raises(ValueError, match="unknown overlap settings"):
        keep_run_record(run_dirs[0], n_sample=60)
