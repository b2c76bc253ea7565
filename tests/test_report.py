"""Aggregation over seeds, claim verdicts and report.md on synthetic run directories."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from convsim._internal.files import append_jsonl, atomic_write_json
from convsim.reporting import report
from convsim.reporting.claims import ClaimDesign, claims, matched_settings, strongest_within_margin
from convsim.reporting.figures import FIGURES, curve
from convsim.reporting.intervals import contrast, mean_ci
from convsim.reporting.runs import group_runs, infer_method, iters_series, load_runs, method_label, read_run, strength
from convsim.reporting.tables import smaller_models

T_975_DOF2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (table value)


# ---------------------------------------------------------------- synthetic run directories


def make_run(
    root,
    name,
    *,
    seed,
    studies=("main",),
    method=None,
    config=None,
    test_acc=0.8,
    epochs=3,
    train_loss=1.0,
    cs=10.0,
    kernel_cosine=0.3,
    fm=0.6,
    fmc=0.4,
    init_steps=0,
    complete=True,
    kernel_norm=None,
    spec=True,
):
    """A run directory as convsim.training.loop writes it (plus the spec.json of convsim reproduce)."""
    cfg = {
        "model": "cnn1",
        "width": 1.0,
        "dataset": "synthetic",
        "epochs": epochs,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.0,
        "beta": 0.0,
        "init_iters": init_steps,
        "penalty": "none",
        "penalty_beta": 0.0,
        "early_stop": "none",
        "seed": seed,
    }
    cfg.update(config or {})
    d = root / name
    d.mkdir(parents=True)
    group = name.rsplit("-s", 1)[0]
    if spec:
        atomic_write_json(
            d / "spec.json",
            {
                "name": name,
                "group": group,
                "method": method or infer_method(cfg),
                "seed": seed,
                "studies": list(studies),
            },
        )
    for e in range(1, epochs + 1):
        rec = {
            "epoch": e,
            "train_loss": train_loss / e,
            "train_acc": test_acc * e / epochs,
            "test_loss": 0.5,
            "test_acc": test_acc if e == epochs else test_acc * 0.9,
            "cs": cs * (1 + 1 / e),
            "kernel_cosine": kernel_cosine,
            "fm_similarity": fm,
            "fm_similarity_centered": fmc,
            "seconds": 0.5,
            "lr": 0.01,
        }
        if kernel_norm is not None:
            rec.update(kernel_norm={"conv1": kernel_norm / e, "conv2": 2 * kernel_norm / e}, cs_normalized=cs / 10)
        append_jsonl(d / "metrics.jsonl", rec)
    for s in range(init_steps):
        append_jsonl(d / "init.jsonl", {"step": s, "cs": 100.0 / (s + 1)})
    atomic_write_json(
        d / "summary.json",
        {
            "config": cfg,
            "seed": seed,
            "status": "complete" if complete else "running",
            "versions": {"torch": "x"},
            "device": "cpu",
            "wall_time": 1.5 * epochs,
            "epochs_run": epochs,
            "initial": {"cs": 3 * cs},
            "test_acc": test_acc,
        },
    )
    return d


def make_group(root, group, values, **kw):
    """One run per seed; ``values`` maps metric name -> list of per-seed values."""
    n = len(next(iter(values.values())))
    for s in range(n):
        make_run(root, f"{group}-s{s}", seed=s, **{k: v[s] for k, v in values.items()}, **kw)


def _groups(root):
    return group_runs(load_runs(root))


def _claim(root, cid, design=None):
    """Claim ``cid`` of :func:`claims` on the runs under ``root``."""
    return next(c for c in claims(_groups(root), design or ClaimDesign()) if c["id"] == cid)


BASE = [0.80, 0.81, 0.79]
CS = "cnn1-w1-cs-reg-b0.01"  # ClaimDesign's default group names, as the suites name them
B = "cnn1-w1-baseline"
REG = {"beta": 0.01}


# ---------------------------------------------------------------- statistics


def test_mean_ci_matches_hand_formula():
    x = [0.81, 0.84, 0.79]
    m = sum(x) / 3
    s = math.sqrt(sum((v - m) ** 2 for v in x) / 2)
    e = mean_ci(x)
    assert e.mean == pytest.approx(m, abs=1e-12)
    assert e.half_width == pytest.approx(T_975_DOF2 * s / math.sqrt(3), rel=1e-9)
    assert (e.n, e.method) == (3, "t")
    assert (e.se, e.dof) == (pytest.approx(s / math.sqrt(3), rel=1e-12), 2.0)


def test_mean_ci_single_value_has_no_interval():
    e = mean_ci([0.7])
    assert (e.mean, e.low, e.high, e.n, e.se, e.dof) == (0.7, None, None, 1, None, None)
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
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert e.method == "welch"
    assert e.mean == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert e.dof == pytest.approx(res.df, rel=1e-9)


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


# ---------------------------------------------------------------- (a) accuracy


def test_clear_accuracy_win_holds(tmp_path):
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, CS, {"test_acc": [0.85, 0.87, 0.84]}, config=REG)
    c = _claim(tmp_path, "a")
    assert c["verdict"] == "holds" == c["primary"]["verdict"]
    assert c["primary"]["estimate"]["mean"] == pytest.approx(0.16 / 3)
    assert c["primary"]["p"] == pytest.approx(stats.ttest_rel([0.85, 0.87, 0.84], BASE).pvalue, rel=1e-9)


def test_overlapping_accuracy_is_inconclusive(tmp_path):
    make_group(tmp_path, B, {"test_acc": [0.80, 0.84, 0.78]})
    make_group(tmp_path, CS, {"test_acc": [0.83, 0.79, 0.82]}, config=REG)
    assert _claim(tmp_path, "a")["verdict"] == "inconclusive"


def test_tiny_accuracy_difference_is_no_meaningful_effect(tmp_path):
    base = [0.800, 0.810, 0.790, 0.805]
    make_group(tmp_path, B, {"test_acc": base})
    tiny = [v + d for v, d in zip(base, (2e-4, -1e-4, 1e-4, 3e-4), strict=True)]
    make_group(tmp_path, CS, {"test_acc": tiny}, config=REG)
    c = _claim(tmp_path, "a")
    est = c["primary"]["estimate"]
    assert est["low"] > -0.005 and est["high"] < 0.005  # inside the accuracy margin
    assert c["verdict"] == "no meaningful effect"


def test_clear_accuracy_loss_does_not_hold(tmp_path):
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, CS, {"test_acc": [0.70, 0.72, 0.69]}, config=REG)
    assert _claim(tmp_path, "a")["verdict"] == "does not hold"


def test_one_seed_is_inconclusive_too_few_seeds(tmp_path):
    make_group(tmp_path, B, {"test_acc": [0.80]})
    make_group(tmp_path, CS, {"test_acc": [0.90]}, config=REG)
    assert _claim(tmp_path, "a")["verdict"] == "inconclusive (too few seeds)"


def test_primary_is_chosen_by_group_name(tmp_path):
    """The design names the primary groups; a different CS group with a larger gain does not replace it."""
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, CS, {"test_acc": [0.70, 0.72, 0.69]}, config=REG)
    make_group(tmp_path, "cnn1-w1-cs-init-I5", {"test_acc": [0.90, 0.91, 0.89]}, init_steps=5)
    assert _claim(tmp_path, "a")["verdict"] == "does not hold"
    assert _claim(tmp_path, "a", ClaimDesign(cs="cnn1-w1-cs-init-I5"))["verdict"] == "holds"


def test_accuracy_claim_not_tested_when_the_primary_group_is_missing(tmp_path):
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, "cnn1-w1-cs-init-I5", {"test_acc": [0.90, 0.91, 0.89]}, init_steps=5)
    c = _claim(tmp_path, "a")
    assert c["verdict"] == "not tested" == c["primary"]["verdict"]
    assert c["primary"]["label"] == "`cnn1-w1-cs-reg-b0.01` − `cnn1-w1-baseline`, test accuracy"
    assert c["primary"]["estimate"] is None and c["primary"]["p"] is None
    assert [x["verdict"] for x in c["comparisons"]] == ["holds"]  # the other CS group is a secondary


def test_secondary_comparisons_use_only_baselines_with_matching_training_settings(tmp_path):
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, CS, {"test_acc": [0.85, 0.87, 0.84]}, config=REG)
    make_group(tmp_path, "cnn1-w1-cs-init-I5", {"test_acc": [0.70, 0.71, 0.69]}, init_steps=5)
    make_group(tmp_path, "cnn1-w1-cs-init-I5-lr", {"test_acc": [0.9, 0.9, 0.9]}, init_steps=5, config={"lr": 0.1})
    c = _claim(tmp_path, "a")
    assert len(c["comparisons"]) == 1  # no baseline was trained at lr 0.1
    assert c["comparisons"][0]["estimate"]["mean"] == pytest.approx(-0.1)
    assert c["comparisons"][0]["verdict"] == "does not hold"
    assert c["verdict"] == "holds"  # the claim's verdict is its primary's


# ---------------------------------------------------------------- (b) convergence


def test_faster_convergence_uses_first_epoch_training_loss(tmp_path):
    make_group(tmp_path, B, {"train_loss": [1.0, 1.1, 0.9]})
    make_group(tmp_path, CS, {"train_loss": [0.5, 0.6, 0.45]}, config=REG)
    c = _claim(tmp_path, "b")
    assert c["verdict"] == "holds"
    # make_run logs train_loss / epoch: epoch 1 holds the values above, the last epoch a third of them
    assert c["primary"]["estimate"]["mean"] == pytest.approx((0.5 + 0.5 + 0.45) / 3)


# ---------------------------------------------------------------- (c) smaller models

SMALL = ClaimDesign(cs="cnn1-w0.5-cs-reg-b0.01", baseline="cnn1-w0.5-baseline", larger_baseline="cnn1-w1-baseline")


def _width_groups(root, cs_small, larger=(0.80, 0.81, 0.79)):
    for w, accs in ((0.5, [0.70, 0.71, 0.69]), (1.0, list(larger))):
        make_group(root, f"cnn1-w{w:g}-baseline", {"test_acc": accs}, studies=("width",), config={"width": w})
    make_group(
        root, "cnn1-w0.5-cs-reg-b0.01", {"test_acc": cs_small}, studies=("width",), config={"width": 0.5, "beta": 0.01}
    )


def test_smaller_model_claim_holds_when_cs_small_reaches_larger_baseline(tmp_path):
    _width_groups(tmp_path, [0.811, 0.818, 0.802])
    c = _claim(tmp_path, "c", SMALL)
    assert c["verdict"] == "holds" and c["primary"]["kind"] == "non-inferiority"
    _, found = smaller_models(_groups(tmp_path), 100.0)
    assert found[0]["smallest_width"] == 0.5


def test_smaller_model_claim_fails_when_cs_small_stays_below(tmp_path):
    _width_groups(tmp_path, [0.72, 0.735, 0.71])
    assert _claim(tmp_path, "c", SMALL)["verdict"] == "does not hold"
    assert smaller_models(_groups(tmp_path), 100.0)[1][0]["smallest_width"] is None


def test_smaller_model_claim_not_tested_when_larger_baseline_is_not_better(tmp_path):
    """Without a width gap there is nothing for CS to close: the primary would hold, yet is not tested."""
    _width_groups(tmp_path, [0.70, 0.715, 0.695], larger=(0.70, 0.712, 0.69))
    c = _claim(tmp_path, "c", SMALL)
    assert c["verdict"] == "not tested" == c["primary"]["verdict"]
    assert c["primary"]["p"] < 0.05  # the non-inferiority test itself rejects
    assert any("width gap" in line for line in c["evidence"])


# ---------------------------------------------------------------- (d) orthogonality at matched strength


def _ortho_groups(root, so_accs=(None, None)):
    """Baseline, SO at penalty_beta 0.01 and 0.1, CS-reg at beta 0.01 and 0.1 (the latter losing accuracy)."""
    near = lambda d: [b + x for b, x in zip(BASE, d, strict=True)]  # noqa: E731
    make_group(root, B, {"test_acc": BASE, "fm": [0.60, 0.61, 0.59], "kernel_cosine": [0.30, 0.31, 0.29]})
    for pb, fm, acc in ((0.01, [0.59, 0.60, 0.58], so_accs[0]), (0.1, [0.57, 0.58, 0.565], so_accs[1])):
        make_group(
            root,
            f"cnn1-w1-so-p{pb:g}",
            {"test_acc": acc or near((0.001, 0.0, 0.001)), "fm": fm, "kernel_cosine": [0.05, 0.06, 0.04]},
            config={"penalty": "so", "penalty_beta": pb},
        )
    make_group(
        root,
        "cnn1-w1-cs-reg-b0.01",
        {"test_acc": near((0.001, 0.001, 0.0)), "fm": [0.40, 0.41, 0.39]},
        config={"beta": 0.01},
    )
    make_group(
        root, "cnn1-w1-cs-reg-b0.1", {"test_acc": [0.70, 0.71, 0.69], "fm": [0.20, 0.21, 0.19]}, config={"beta": 0.1}
    )


def test_matched_setting_is_the_strongest_non_inferior_in_accuracy(tmp_path):
    _ortho_groups(tmp_path)
    assert matched_settings(_groups(tmp_path), ClaimDesign()) == {
        "cs-reg": "cnn1-w1-cs-reg-b0.01",
        "so": "cnn1-w1-so-p0.1",
    }


def test_orthogonality_claim_compares_the_matched_settings(tmp_path):
    _ortho_groups(tmp_path)
    c = _claim(tmp_path, "d")
    # fm(SO at 0.1) − fm(CS-reg at 0.01), per seed
    assert c["primary"]["estimate"]["mean"] == pytest.approx(np.mean([0.17, 0.17, 0.175]))
    assert c["primary"]["metric"] == "fm_similarity"
    assert c["verdict"] == "holds"


def test_orthogonality_claim_not_tested_when_no_penalty_setting_keeps_accuracy(tmp_path):
    _ortho_groups(tmp_path, so_accs=([0.70, 0.71, 0.69], [0.60, 0.61, 0.59]))
    groups = _groups(tmp_path)
    assert matched_settings(groups, ClaimDesign())["so"] is None
    c = _claim(tmp_path, "d")
    assert c["verdict"] == "not tested"
    why = "no setting of so keeps test accuracy within the margin of the baseline"
    assert c["evidence"][0].endswith(f": {why} → not tested")


def test_strongest_within_margin_leaves_out_collapsed_groups(tmp_path):
    """At chance-level accuracy (10 synthetic classes) every group is non-inferior to a collapsed baseline,
    yet none is matched: their networks did not train."""
    make_group(tmp_path, B, {"test_acc": [0.10, 0.11, 0.09]})
    make_group(tmp_path, CS, {"test_acc": [0.10, 0.11, 0.09]}, config=REG)
    groups = _groups(tmp_path)
    assert strongest_within_margin([groups[CS]], groups[B]) is None


# ---------------------------------------------------------------- (e) momentum


def _momentum_groups(root):
    mom = {"momentum": 0.9, "lr": 0.001}  # the same step size as lr 0.01 without momentum
    make_group(root, B, {"test_acc": BASE})
    make_group(root, CS, {"test_acc": [0.85, 0.86, 0.84]}, config=REG)
    make_group(root, f"{B}-m0.9", {"test_acc": [0.82, 0.83, 0.81]}, studies=("momentum",), config=mom)
    make_group(root, f"{CS}-m0.9", {"test_acc": [0.82, 0.825, 0.815]}, studies=("momentum",), config={**mom, **REG})


def test_momentum_claim_not_tested_without_momentum_runs(tmp_path):
    make_group(tmp_path, B, {"test_acc": BASE})
    make_group(tmp_path, CS, {"test_acc": [0.85, 0.86, 0.84]}, config=REG)
    assert _claim(tmp_path, "e")["verdict"] == "not tested"


def test_momentum_claim_holds_when_gain_vanishes_under_momentum(tmp_path):
    _momentum_groups(tmp_path)
    c = _claim(tmp_path, "e")
    assert c["verdict"] == "holds"
    assert c["primary"]["estimate"]["mean"] == pytest.approx(0.05)


def test_momentum_secondary_pairs_another_cs_method_with_its_no_momentum_twin(tmp_path):
    _momentum_groups(tmp_path)
    make_group(tmp_path, "cnn1-w1-cs-init-I5", {"test_acc": [0.83, 0.84, 0.82]}, init_steps=5)
    make_group(
        tmp_path,
        "cnn1-w1-cs-init-I5-m0.9",
        {"test_acc": [0.83, 0.84, 0.82]},
        init_steps=5,
        studies=("momentum",),
        config={"momentum": 0.9, "lr": 0.001},
    )
    (sec,) = _claim(tmp_path, "e")["comparisons"]
    # (cs-init − baseline) − (cs-init_m − baseline_m) = 0.03 − 0.01
    assert sec["estimate"]["mean"] == pytest.approx(0.02)


def test_decoupled_cs_under_momentum_is_compared_with_cs_reg_only(tmp_path):
    _momentum_groups(tmp_path)
    mom = {"momentum": 0.9, "lr": 0.001}
    decoupled = {**mom, **REG, "cs_mode": "decoupled"}
    make_group(tmp_path, "cnn1-w1-cs-decoupled-b0.01-m0.9", {"test_acc": [0.84, 0.85, 0.83]}, config=decoupled)
    both = {**mom, **REG}
    make_group(tmp_path, "cnn1-w1-cs-init+reg-I5-m0.9", {"test_acc": [0.8, 0.8, 0.8]}, init_steps=5, config=both)
    recovers = [c for c in _claim(tmp_path, "e")["comparisons"] if c["label"].startswith("decoupling recovers")]
    (only,) = recovers
    assert only["estimate"]["mean"] == pytest.approx(0.02)  # decoupled − cs-reg under momentum, per seed


# ---------------------------------------------------------------- runs and groups


def test_incomplete_runs_are_not_aggregated(tmp_path):
    make_run(tmp_path, "cnn1-baseline-s0", seed=0)
    make_run(tmp_path, "cnn1-baseline-s1", seed=1, complete=False)
    groups = _groups(tmp_path)
    assert [r.seed for r in groups["cnn1-baseline"].runs] == [0]


def test_final_accuracy_prefers_summary_over_last_epoch(tmp_path):
    d = make_run(tmp_path, "r-s0", seed=0, test_acc=0.9)
    s = json.loads((d / "summary.json").read_text())
    s["test_acc"] = 0.7  # e.g. an early-stopping checkpoint restored at the end
    atomic_write_json(d / "summary.json", s)
    assert read_run(d).final("test_acc") == 0.7
    assert read_run(d).final("cs") == pytest.approx(10.0 * (1 + 1 / 3))


def test_infer_method_from_config():
    assert infer_method({"beta": 0.0, "init_iters": 0}) == "baseline"
    assert infer_method({"beta": 0.01, "init_iters": 500}) == "cs-init+reg"
    assert infer_method({"beta": 0.01, "init_iters": 0, "cs_mode": "decoupled"}) == "cs-decoupled"
    assert infer_method({"penalty": "ocnn", "penalty_beta": 0.1}) == "ocnn"
    assert infer_method({"penalty": "ocnn", "penalty_beta": 0.0}) == "baseline"


def test_run_stored_with_the_legacy_penalty_weight_key_keeps_its_method_and_strength(tmp_path):
    """summary.json of runs trained before the rename says penalty_weight (TrainConfig's LEGACY_FIELDS)."""
    for s in range(2):
        d = make_run(tmp_path, f"cnn1-so-s{s}", seed=s, spec=False, config={"penalty": "so", "penalty_beta": 0.1})
        summary = json.loads((d / "summary.json").read_text())
        summary["config"]["penalty_weight"] = summary["config"].pop("penalty_beta")
        atomic_write_json(d / "summary.json", summary)
    assert read_run(tmp_path / "cnn1-so-s0").method == "so"
    g = _groups(tmp_path)["cnn1-so"]
    assert strength(g) == 0.1 and method_label(g) == "so β=0.1"


def test_load_runs_rejects_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_runs(tmp_path / "nope")


def test_iters_series_start_at_the_shared_baseline(tmp_path):
    make_group(tmp_path, "cnn1-baseline", {"test_acc": [0.80, 0.81]}, studies=("iters",))
    make_group(tmp_path, "cnn1-cs-init-I5", {"test_acc": [0.7, 0.7]}, studies=("iters",), init_steps=5)
    make_group(
        tmp_path,
        "cnn1-cs-init-I5-norm",
        {"test_acc": [0.9, 0.9]},
        studies=("iters",),
        init_steps=5,
        config={"cs_normalize": True},
    )
    series = iters_series(_groups(tmp_path))
    assert len(series) == 2
    for by_i in series.values():
        assert list(by_i) == [0.0, 5.0] and by_i[0.0].name == "cnn1-baseline"


# ---------------------------------------------------------------- the report


def _fake_overlap(calls):
    def analysis(run_dirs, out_dir, **kw):
        calls.append((sorted(str(p) for p in run_dirs), kw))
        return {"pearson_r": 0.5, "runs": len(run_dirs)}

    return analysis, lambda res: f"fake overlap over {res['runs']} runs, r = {res['pearson_r']}\n"


def _suite_like(root, full=True):
    """Two seeds per configuration; ``full`` gives every report section data, else only the main study."""
    runs = root / "runs"
    kn = {"kernel_norm": 2.0} if full else {}
    make_group(runs, B, {"test_acc": [0.80, 0.81]}, studies=("main", "iters", "width") if full else ("main",), **kn)
    make_group(
        runs, CS, {"test_acc": [0.82, 0.84]}, config=REG, studies=("main", "width", "beta") if full else ("main",), **kn
    )
    make_group(runs, "cnn2-w1-baseline", {"test_acc": [0.85, 0.86]}, config={"model": "cnn2"})
    if not full:
        return
    make_group(runs, "cnn1-w1-cs-init-I4", {"test_acc": [0.83, 0.84]}, studies=("main", "iters"), init_steps=4)
    make_group(runs, "cnn1-w1-so", {"test_acc": [0.80, 0.815]}, config={"penalty": "so", "penalty_beta": 0.05}, **kn)
    make_group(runs, "cnn1-w0.5-baseline", {"test_acc": [0.70, 0.72]}, config={"width": 0.5}, studies=("width",))
    make_group(
        runs, "cnn1-w0.5-cs-reg-b0.01", {"test_acc": [0.81, 0.82]}, config={"width": 0.5, **REG}, studies=("width",)
    )
    make_group(runs, "resnet18-baseline", {"test_acc": [0.6, 0.62]}, config={"model": "resnet18"}, studies=("resnet",))
    make_group(
        runs, f"{B}-m0.9", {"test_acc": [0.8, 0.81]}, config={"momentum": 0.9, "lr": 0.001}, studies=("momentum",)
    )
    for es in ("cwnnk", "validation"):
        make_group(runs, f"{B}-es-{es}", {"test_acc": [0.78, 0.8]}, config={"early_stop": es}, studies=("early_stop",))


def _touch_checkpoints(root):
    """Stand-ins for the weights the overlap analysis reads (the fake analysis never opens them)."""
    for d in (root / "runs").iterdir():
        (d / "checkpoint.pt").write_bytes(b"")


def _headings(md):
    return [line[3:] for line in md.splitlines() if line.startswith("## ")]


# Sections that only appear when the suite has their data (the others always do).
OPTIONAL = {
    "Figure 4: ResNet18",
    "Figure 5: test accuracy versus initialisation iterations",
    "Claim (d) at matched strength",
    "Shrinkage or decorrelation",
    "Smaller models",
    "Regularisation strength",
    "Momentum",
    "Early stopping",
}


def test_optional_sections_are_sections_of_the_report():
    assert OPTIONAL.issubset({s.heading for s in report.SECTIONS}) and len(OPTIONAL) < len(report.SECTIONS)


def test_write_report_has_every_section_figure_and_data_file(tmp_path):
    _suite_like(tmp_path)
    _touch_checkpoints(tmp_path)
    calls = []
    design = ClaimDesign(larger_baseline="cnn1-w0.5-baseline")
    res = report.write_report(
        tmp_path, suite="synthetic", overlap={"k": 5}, overlap_fns=_fake_overlap(calls), design=design
    )
    md = (tmp_path / "report.md").read_text()
    assert _headings(md) == [s.heading for s in report.SECTIONS]  # each once, in order
    for name in FIGURES.values():
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and f"figures/{name}" in md
    specs = [json.loads((p / "spec.json").read_text()) for p in (tmp_path / "runs").iterdir()]
    n_main = sum("main" in spec["studies"] for spec in specs)
    assert f"fake overlap over {n_main} runs" in md and calls[0][1] == {"k": 5, "keep_records": True}
    assert [c["id"] for c in res["claims"]] == list("abcde")
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["suite"] == "synthetic" and stored["design"] == design.as_dict()
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    base = next(r for r in rows if r["group"] == B)
    assert float(base["test_acc_mean"]) == pytest.approx(0.805)
    assert int(base["test_acc_n"]) == 2
    so = next(r for r in rows if r["group"] == "cnn1-w1-so")
    assert (so["method"], float(so["penalty_beta"])) == ("so", 0.05)


def test_sections_without_data_are_left_out(tmp_path):
    _suite_like(tmp_path, full=False)
    report.write_report(tmp_path, overlap={"skip": True})
    headings = _headings((tmp_path / "report.md").read_text())
    assert headings == [s.heading for s in report.SECTIONS if s.heading not in OPTIONAL]


def test_report_states_each_claims_verdict(tmp_path):
    _suite_like(tmp_path, full=False)
    res = report.write_report(tmp_path, overlap={"skip": True})
    md = (tmp_path / "report.md").read_text()
    claims_part = md.split("<!-- claims:start -->")[1].split("<!-- claims:end -->")[0]
    for c in res["claims"]:
        assert f"**({c['id']}) {c['claim']}** — {c['verdict']}." in claims_part


def test_setup_states_the_wall_time_of_runs_trained_in_parallel(tmp_path):
    _suite_like(tmp_path, full=False)
    summaries = list((tmp_path / "runs").glob("*/summary.json"))
    for p in summaries:  # an hour each, so the sum is the number of runs in hours
        atomic_write_json(p, {**json.loads(p.read_text()), "wall_time": 3600.0})
    report.write_report(tmp_path, overlap={"skip": True}, study={"jobs": 2})
    md = (tmp_path / "report.md").read_text()
    n = len(summaries)
    assert f"{n:.2f} h summed over {n} runs, trained 2 at a time: about {n / 2:.1f} h of wall time" in md


def test_report_numbers_are_computed_from_the_runs(tmp_path):
    _suite_like(tmp_path)
    report.write_report(tmp_path, overlap={"skip": True})
    md = (tmp_path / "report.md").read_text()
    e = mean_ci([0.83, 0.84])
    assert f"{e.mean * 100:.2f} ± {e.half_width * 100:.2f}" in md


def test_overlap_result_is_cached_between_reports(tmp_path):
    _suite_like(tmp_path, full=False)
    _touch_checkpoints(tmp_path)
    calls = []
    fns = _fake_overlap(calls)
    report.write_report(tmp_path, overlap_fns=fns)
    report.write_report(tmp_path, overlap_fns=fns)
    assert len(calls) == 1


def test_overlap_cache_is_invalidated_when_a_run_changes(tmp_path):
    _suite_like(tmp_path, full=False)
    _touch_checkpoints(tmp_path)
    calls = []
    fns = _fake_overlap(calls)
    report.write_report(tmp_path, overlap_fns=fns)
    p = tmp_path / "runs" / f"{B}-s0" / "summary.json"
    s = json.loads(p.read_text())
    s["test_acc"] = 0.5
    atomic_write_json(p, s)
    report.write_report(tmp_path, overlap_fns=fns)
    assert len(calls) == 2


def test_overlap_without_checkpoints_or_cache_says_so_and_does_not_run(tmp_path):
    _suite_like(tmp_path, full=False)
    calls = []
    res = report.write_report(tmp_path, overlap_fns=_fake_overlap(calls))
    md = (tmp_path / "report.md").read_text()
    assert calls == [] and res["overlap"] is None
    assert "have neither a checkpoint" in md.split("## Channel-wise NNK overlap")[1]


def test_include_limits_the_report_to_named_runs(tmp_path):
    _suite_like(tmp_path)
    res = report.write_report(tmp_path, overlap={"skip": True}, include=[f"{B}-s0", f"{B}-s1"])
    assert [g["group"] for g in res["groups"]] == [B]
    assert "resnet18-baseline-s0" in res["ignored"]


# ---------------------------------------------------------------- figures


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
    vals = [1e-4, 1e-1, 2.0]  # an arithmetic CI would reach far below zero
    _, m, lo, hi = curve([_CurveRun([v]) for v in vals], "cs", log=True)
    logs = np.log(vals)
    h = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert m[0] == pytest.approx(math.exp(logs.mean()))
    assert (lo[0], hi[0]) == pytest.approx((math.exp(logs.mean() - h), math.exp(logs.mean() + h)))
    _, m_lin, lo_lin, _ = curve([_CurveRun([v]) for v in vals], "cs")
    assert m_lin[0] == pytest.approx(np.mean(vals)) and lo_lin[0] < 0 < lo[0]


def test_log_curve_leaves_non_positive_points_out():
    _, m, lo, hi = curve([_CurveRun([1.0, 0.0]), _CurveRun([2.0, 1.0])], "cs", log=True)
    assert m[0] == pytest.approx(math.sqrt(2)) and all(math.isnan(v) for v in (m[1], lo[1], hi[1]))
