"""Aggregation over seeds, claim verdicts and report.md on synthetic run directories."""
from __future__ import annotations

import csv
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats

from convsim.reporting import report
from convsim._internal.files import append_jsonl, atomic_write_json
from convsim.reporting.report import Estimate, combine, contrast, mean_ci, verdict

T_975_DOF2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (table value)


# ---------------------------------------------------------------- synthetic run directories

def make_run(root, name, *, seed, studies=("main",), method=None, config=None, test_acc=0.8, epochs=3,
             train_loss=1.0, cs=10.0, kernel_cosine=0.3, fm=0.6, fmc=0.4, init_steps=0, complete=True):
    """A run directory as convsim.training.loop writes it (plus the spec.json of convsim reproduce)."""
    cfg = {"model": "cnn1", "width": 1.0, "dataset": "synthetic", "epochs": epochs, "optimizer": "sgd",
           "lr": 0.01, "momentum": 0.0, "beta": 0.0, "init_iters": init_steps, "penalty": "none",
           "penalty_weight": 0.0, "early_stop": "none", "seed": seed}
    cfg.update(config or {})
    d = root / name
    d.mkdir(parents=True)
    group = name.rsplit("-s", 1)[0]
    atomic_write_json(d / "spec.json", {"name": name, "group": group, "method": method or report.infer_method(cfg),
                                        "seed": seed, "studies": list(studies)})
    for e in range(1, epochs + 1):
        append_jsonl(d / "metrics.jsonl", {
            "epoch": e, "train_loss": train_loss / e, "train_acc": test_acc * e / epochs, "test_loss": 0.5,
            "test_acc": test_acc if e == epochs else test_acc * 0.9, "cs": cs * (1 + 1 / e),
            "kernel_cosine": kernel_cosine, "fm_similarity": fm, "fm_similarity_centered": fmc,
            "seconds": 0.5, "lr": 0.01})
    for s in range(init_steps):
        append_jsonl(d / "init.jsonl", {"step": s, "cs": 100.0 / (s + 1)})
    atomic_write_json(d / "summary.json", {
        "config": cfg, "seed": seed, "status": "complete" if complete else "running",
        "versions": {"torch": "x"}, "device": "cpu", "wall_time": 1.5 * epochs, "epochs_run": epochs,
        "initial": {"cs": 3 * cs}, "test_acc": test_acc})
    return d


def make_group(root, group, values, **kw):
    """One run per seed; ``values`` maps metric name -> list of per-seed values."""
    n = len(next(iter(values.values())))
    for s in range(n):
        make_run(root, f"{group}-s{s}", seed=s, **{k: v[s] for k, v in values.items()}, **kw)


# ---------------------------------------------------------------- statistics

def test_mean_ci_matches_hand_formula():
    x = [0.81, 0.84, 0.79]
    m = sum(x) / 3
    s = math.sqrt(sum((v - m) ** 2 for v in x) / 2)
    e = mean_ci(x)
    assert e.mean == pytest.approx(m, abs=1e-12)
    assert e.half_width == pytest.approx(T_975_DOF2 * s / math.sqrt(3), rel=1e-9)
    assert (e.n, e.method) == (3, "t")


def test_mean_ci_single_value_has_no_interval():
    e = mean_ci([0.7])
    assert (e.mean, e.low, e.high, e.n) == (0.7, None, None, 1)
    assert "no CI" in e.fmt()


@pytest.mark.parametrize("bad,match", [([], "non-empty"), ([[1.0, 2.0]], "1-D")])
def test_mean_ci_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(bad)


def test_mean_ci_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_paired_contrast_equals_scipy_ttest_rel_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 5), rng.normal(0.82, 0.02, 5)
    e = contrast([(1.0, dict(enumerate(b))), (-1.0, dict(enumerate(a)))])
    ci = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert e.method == "paired"
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_contrast_equals_scipy_welch_interval():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.01, 4), rng.normal(0.83, 0.03, 6)
    e = contrast([(1.0, dict(enumerate(b))), (-1.0, {10 + i: v for i, v in enumerate(a)})])
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert e.method == "welch"
    assert e.mean == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_four_term_contrast_paired_is_per_seed_difference_of_differences():
    rng = np.random.default_rng(2)
    g = [dict(enumerate(rng.normal(size=3))) for _ in range(4)]
    e = contrast([(1.0, g[0]), (-1.0, g[1]), (-1.0, g[2]), (1.0, g[3])])
    per_seed = [g[0][s] - g[1][s] - g[2][s] + g[3][s] for s in range(3)]
    ref = mean_ci(per_seed)
    assert (e.mean, e.low, e.high) == pytest.approx((ref.mean, ref.low, ref.high), rel=1e-12)


def test_contrast_with_one_seed_has_no_interval():
    e = contrast([(1.0, {0: 0.9}), (-1.0, {0: 0.8})])
    assert e.low is None and e.mean == pytest.approx(0.1)


def test_contrast_rejects_empty_group():
    with pytest.raises(ValueError, match="non-empty"):
        contrast([(1.0, {}), (-1.0, {0: 1.0})])


@pytest.mark.parametrize("est,expected", [
    (Estimate(0.05, 0.02, 0.08, 3), "holds"),
    (Estimate(-0.05, -0.08, -0.02, 3), "does not hold"),
    (Estimate(0.01, -0.02, 0.04, 3), "inconclusive (CI overlaps)"),
    (Estimate(0.01, None, None, 1), report.TOO_FEW),
    (None, "not tested"),
])
def test_verdict_rule(est, expected):
    assert verdict(est) == expected


@pytest.mark.parametrize("verdicts,expected", [
    (["holds", "inconclusive (CI overlaps)"], "holds"),
    (["does not hold", "inconclusive (CI overlaps)"], "does not hold"),
    (["holds", "does not hold"], "inconclusive (mixed: some comparisons hold, some do not)"),
    (["inconclusive (CI overlaps)", report.TOO_FEW], "inconclusive (CI overlaps)"),
    ([], "not tested"),
])
def test_combine_rule(verdicts, expected):
    assert combine(verdicts) == expected


# ---------------------------------------------------------------- claims on synthetic results

def test_clear_accuracy_win_holds(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.81, 0.79]})
    make_group(tmp_path, "cnn1-cs-reg", {"test_acc": [0.85, 0.86, 0.84]}, config={"beta": 0.01})
    c = report.claim_accuracy(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "holds"
    assert c["comparisons"][0]["estimate"]["mean"] == pytest.approx(0.05)


def test_overlapping_accuracy_is_inconclusive(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.84, 0.78]})
    make_group(tmp_path, "cnn1-cs-reg", {"test_acc": [0.83, 0.79, 0.82]}, config={"beta": 0.01})
    c = report.claim_accuracy(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "inconclusive (CI overlaps)"


def test_clear_accuracy_loss_does_not_hold(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.81, 0.79]})
    make_group(tmp_path, "cnn1-cs-init", {"test_acc": [0.70, 0.71, 0.69]}, init_steps=5)
    c = report.claim_accuracy(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "does not hold"


def test_accuracy_claim_compares_only_matching_training_settings(tmp_path):
    make_group(tmp_path, "cnn1-baseline-lr", {"test_acc": [0.5, 0.5, 0.5]}, config={"lr": 0.1})
    make_group(tmp_path, "cnn1-cs-reg", {"test_acc": [0.85, 0.86, 0.84]}, config={"beta": 0.01})
    c = report.claim_accuracy(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "not tested"


def test_faster_convergence_uses_first_epoch_training_loss(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"train_loss": [1.0, 1.1, 0.9]})
    make_group(tmp_path, "cnn1-cs-reg", {"train_loss": [0.5, 0.6, 0.4]}, config={"beta": 0.01})
    c = report.claim_convergence(report.group_runs(report.load_runs(tmp_path)), 1.0)
    assert c["verdict"] == "holds"
    assert c["comparisons"][0]["estimate"]["mean"] == pytest.approx(0.5)


def _width_groups(root, cs_small):
    for w, accs in ((0.5, [0.70, 0.71, 0.69]), (1.0, [0.80, 0.81, 0.79])):
        make_group(root, f"cnn1-w{w:g}-baseline", {"test_acc": accs}, studies=("width",), config={"width": w})
    make_group(root, "cnn1-w0.5-cs-reg", {"test_acc": cs_small}, studies=("width",),
               config={"width": 0.5, "beta": 0.01})


def test_smaller_model_claim_holds_when_cs_small_reaches_larger_baseline(tmp_path):
    _width_groups(tmp_path, [0.81, 0.82, 0.80])
    groups = report.group_runs(report.load_runs(tmp_path))
    assert report.claim_smaller(groups, 100.0)["verdict"] == "holds"
    _, found = report.smaller_models(groups, 100.0)
    assert found[0]["smallest_width"] == 0.5


def test_smaller_model_claim_fails_when_cs_small_stays_below(tmp_path):
    _width_groups(tmp_path, [0.72, 0.73, 0.71])
    groups = report.group_runs(report.load_runs(tmp_path))
    assert report.claim_smaller(groups, 100.0)["verdict"] == "does not hold"
    assert report.smaller_models(groups, 100.0)[1][0]["smallest_width"] is None


def test_orthogonality_claim_holds_when_so_lowers_kernel_but_not_feature_maps(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"kernel_cosine": [0.30, 0.31, 0.29], "fm": [0.60, 0.61, 0.59]})
    make_group(tmp_path, "cnn1-so", {"kernel_cosine": [0.05, 0.06, 0.04], "fm": [0.58, 0.59, 0.57],
                                     "fmc": [0.40, 0.41, 0.39]}, config={"penalty": "so", "penalty_weight": 0.01})
    make_group(tmp_path, "cnn1-cs-reg", {"kernel_cosine": [0.2, 0.2, 0.2], "fm": [0.30, 0.31, 0.29],
                                         "fmc": [0.20, 0.21, 0.19]}, config={"beta": 0.01})
    c = report.claim_orthogonality(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "holds"
    assert len(c["comparisons"]) == 2  # uncentred and centred


def test_orthogonality_claim_not_tested_when_penalty_does_not_lower_kernel_cosine(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"kernel_cosine": [0.30, 0.31, 0.29]})
    make_group(tmp_path, "cnn1-so", {"kernel_cosine": [0.30, 0.32, 0.29]},
               config={"penalty": "so", "penalty_weight": 0.01})
    make_group(tmp_path, "cnn1-cs-reg", {"fm": [0.3, 0.31, 0.29]}, config={"beta": 0.01})
    assert report.claim_orthogonality(report.group_runs(report.load_runs(tmp_path)), 100.0)["verdict"] == "not tested"


def test_momentum_claim_not_tested_without_momentum_runs(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.8, 0.8, 0.8]})
    c = report.claim_momentum(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "not tested"


def test_momentum_claim_holds_when_gain_vanishes_under_momentum(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.81, 0.79]})
    make_group(tmp_path, "cnn1-cs-init", {"test_acc": [0.85, 0.86, 0.84]}, init_steps=3)
    mom = {"momentum": 0.9, "lr": 0.001}  # the same step size as lr 0.01 without momentum
    make_group(tmp_path, "cnn1-baseline-m", {"test_acc": [0.82, 0.83, 0.81]}, studies=("momentum",), config=mom)
    make_group(tmp_path, "cnn1-cs-init-m", {"test_acc": [0.82, 0.825, 0.815]}, studies=("momentum",),
               config=mom, init_steps=3)
    c = report.claim_momentum(report.group_runs(report.load_runs(tmp_path)), 100.0)
    assert c["verdict"] == "holds"
    assert c["comparisons"][0]["estimate"]["mean"] == pytest.approx(0.05)


# ---------------------------------------------------------------- runs, groups, report

def test_incomplete_runs_are_not_aggregated(tmp_path):
    make_run(tmp_path, "cnn1-baseline-s0", seed=0)
    make_run(tmp_path, "cnn1-baseline-s1", seed=1, complete=False)
    groups = report.group_runs(report.load_runs(tmp_path))
    assert [r.seed for r in groups["cnn1-baseline"].runs] == [0]


def test_final_accuracy_prefers_summary_over_last_epoch(tmp_path):
    d = make_run(tmp_path, "r-s0", seed=0, test_acc=0.9)
    s = json.loads((d / "summary.json").read_text())
    s["test_acc"] = 0.7  # e.g. an early-stopping checkpoint restored at the end
    atomic_write_json(d / "summary.json", s)
    assert report.read_run(d).final("test_acc") == 0.7
    assert report.read_run(d).final("cs") == pytest.approx(10.0 * (1 + 1 / 3))


def test_infer_method_from_config():
    assert report.infer_method({"beta": 0.0, "init_iters": 0}) == "baseline"
    assert report.infer_method({"beta": 0.01, "init_iters": 500}) == "cs-init+reg"
    assert report.infer_method({"penalty": "ocnn", "penalty_weight": 0.1}) == "ocnn"


def test_load_runs_rejects_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        report.load_runs(tmp_path / "nope")


def _fake_overlap(calls):
    def analysis(run_dirs, out_dir, **kw):
        calls.append((sorted(str(p) for p in run_dirs), kw))
        return {"pearson_r": 0.5, "runs": len(run_dirs)}

    return analysis, lambda res: f"fake overlap over {res['runs']} runs, r = {res['pearson_r']}\n"


def _suite_like(root):
    runs = root / "runs"
    make_group(runs, "cnn1-baseline", {"test_acc": [0.80, 0.81]}, studies=("main", "iters", "width"))
    make_group(runs, "cnn1-cs-init", {"test_acc": [0.83, 0.84]}, studies=("main", "iters"), init_steps=4)
    make_group(runs, "cnn1-cs-reg", {"test_acc": [0.82, 0.84]}, config={"beta": 0.01}, studies=("main", "width"))
    make_group(runs, "cnn2-baseline", {"test_acc": [0.85, 0.86]}, config={"model": "cnn2"})
    make_group(runs, "resnet18-baseline", {"test_acc": [0.6, 0.62]}, config={"model": "resnet18"},
               studies=("resnet",))
    make_group(runs, "cnn1-es-cwnnk", {"test_acc": [0.78, 0.8]}, config={"early_stop": "cwnnk"},
               studies=("early_stop",))


def test_write_report_has_every_section_figure_and_data_file(tmp_path):
    _suite_like(tmp_path)
    calls = []
    res = report.write_report(tmp_path, suite="synthetic", overlap={"k": 5}, overlap_fns=_fake_overlap(calls))
    md = (tmp_path / "report.md").read_text()
    for header in report.SECTIONS:
        assert f"\n{header}\n" in md, header
    for name in report.FIGURES.values():
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and f"figures/{name}" in md
    assert "fake overlap over 8 runs" in md and calls[0][1] == {"k": 5}
    assert {c["id"] for c in res["claims"]} == set("abcde")
    assert json.loads((tmp_path / "results.json").read_text())["suite"] == "synthetic"
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    base = next(r for r in rows if r["group"] == "cnn1-baseline")
    assert float(base["test_acc_mean"]) == pytest.approx(0.805)
    assert int(base["test_acc_n"]) == 2


def test_report_numbers_are_computed_from_the_runs(tmp_path):
    _suite_like(tmp_path)
    report.write_report(tmp_path, overlap={"skip": True})
    md = (tmp_path / "report.md").read_text()
    e = mean_ci([0.83, 0.84])
    assert f"{e.mean * 100:.2f} ± {e.half_width * 100:.2f}" in md


def test_overlap_result_is_cached_between_reports(tmp_path):
    _suite_like(tmp_path)
    calls = []
    fns = _fake_overlap(calls)
    report.write_report(tmp_path, overlap_fns=fns)
    report.write_report(tmp_path, overlap_fns=fns)
    assert len(calls) == 1


def test_iters_series_start_at_the_shared_baseline(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.81]}, studies=("iters",))
    make_group(tmp_path, "cnn1-cs-init-I5", {"test_acc": [0.7, 0.7]}, studies=("iters",), init_steps=5)
    make_group(tmp_path, "cnn1-cs-init-I5-norm", {"test_acc": [0.9, 0.9]}, studies=("iters",), init_steps=5,
               config={"cs_normalize": True})
    series = report.iters_series(report.group_runs(report.load_runs(tmp_path)))
    assert len(series) == 2
    for by_i in series.values():
        assert list(by_i) == [0.0, 5.0] and by_i[0.0].name == "cnn1-baseline"


def test_include_limits_the_report_to_named_runs(tmp_path):
    _suite_like(tmp_path)
    res = report.write_report(tmp_path, overlap={"skip": True}, include=["cnn1-baseline-s0", "cnn1-baseline-s1"])
    assert [g["group"] for g in res["groups"]] == ["cnn1-baseline"]
    assert "resnet18-baseline-s0" in res["ignored"]


class _CurveRun:
    """The two methods figures.curve reads, over fixed per-epoch values."""

    def __init__(self, values):
        self.values = values

    def curve(self, key):
        return dict(enumerate(self.values))

    def init_curve(self):
        return dict(enumerate(self.values))


def test_log_curve_is_geometric_mean_with_a_log_scale_interval():
    """Three seeds at one point: exp(mean log), exp(mean log -/+ t s/sqrt n); always positive."""
    from convsim.reporting.figures import curve

    vals = [1e-4, 1e-1, 2.0]  # an arithmetic CI would reach far below zero
    _, m, lo, hi = curve([_CurveRun([v]) for v in vals], "cs", log=True)
    logs = np.log(vals)
    h = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert m[0] == pytest.approx(math.exp(logs.mean()))
    assert (lo[0], hi[0]) == pytest.approx((math.exp(logs.mean() - h), math.exp(logs.mean() + h)))
    _, m_lin, lo_lin, _ = curve([_CurveRun([v]) for v in vals], "cs")
    assert m_lin[0] == pytest.approx(np.mean(vals)) and lo_lin[0] < 0 < lo[0]


def test_log_curve_leaves_non_positive_points_out():
    from convsim.reporting.figures import curve

    _, m, lo, hi = curve([_CurveRun([1.0, 0.0]), _CurveRun([2.0, 1.0])], "cs", log=True)
    assert m[0] == pytest.approx(math.sqrt(2)) and all(math.isnan(v) for v in (m[1], lo[1], hi[1]))
