"""The generative suite's report on synthetic run directories: claims, tables, figures, rebuild."""

import json

import pytest

from convsim._internal.files import append_jsonl, atomic_write_json
from convsim.reporting.generative import generative_claims, write_generative_report
from convsim.reporting.runs import group_runs, load_runs
from convsim.reporting.suites import SUITES, generative_primary

PRIMARY = generative_primary()
CLASSIFIER = {"dataset": "fashion-mnist", "sha256": "ab" * 32, "test_acc": 0.92, "recipe": {}}


def _run(root, group, seed, *, fd, fm, nelbo=None, epochs=2):
    name = f"{group}-s{seed}"
    d = root / name
    d.mkdir(parents=True)
    model = group.split("-")[0]
    method = "baseline" if "baseline" in group else ("cs-init" if "cs-init" in group else "cs-reg")
    atomic_write_json(d / "spec.json", {"name": name, "group": group, "method": method, "seed": seed, "studies": []})
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "fd": fd + (epochs - e), "fm_similarity": fm, "cs": 1.0, "cs_normalized": 2.0}
        if nelbo is not None:
            rec["test_nelbo"] = nelbo + (epochs - e)
        append_jsonl(d / "metrics.jsonl", rec)
    summary = {
        "config": {"model": model, "seed": seed, "epochs": epochs},
        "status": "complete",
        "initial": {"fd": fd + 10, "fd_classifier": CLASSIFIER},
        "fd": fd,
        "fm_similarity": fm,
        "epochs_run": epochs,
    }
    atomic_write_json(d / "summary.json", summary)
    return name


def _suite(root, *, cs_fd_gain, cs_fm_gain):
    """Every group of the vae part with 3 seeds; CS groups better than the baseline by the given gains."""
    names = []
    for i, group in enumerate(sorted({s.group for s in SUITES["generative"] if s.group.startswith("vae-")})):
        for seed in range(3):
            noise = 0.01 * ((seed + i) % 3 - 1)  # differs between groups: paired differences vary
            better = 0 if "baseline" in group else 1
            names.append(
                _run(
                    root,
                    group,
                    seed,
                    fd=10 - better * cs_fd_gain + noise,
                    fm=0.5 - better * cs_fm_gain + noise / 10,
                    nelbo=250,
                )
            )
    return names


def test_a_consistent_drop_in_fd_and_similarity_makes_both_claims_hold(tmp_path):
    _suite(tmp_path, cs_fd_gain=2.0, cs_fm_gain=0.1)
    claims = {c["id"]: c for c in generative_claims(group_runs(load_runs(tmp_path)), PRIMARY)}
    assert claims["vae-fd"]["verdict"] == "holds" and claims["vae-fm"]["verdict"] == "holds"
    assert claims["vae-fd"]["primary"]["estimate"]["mean"] == pytest.approx(2.0)
    assert claims["dcgan-fd"]["verdict"] == "not tested"


def test_differences_inside_the_margins_read_as_no_meaningful_effect(tmp_path):
    _suite(tmp_path, cs_fd_gain=0.01, cs_fm_gain=0.001)
    claims = {c["id"]: c for c in generative_claims(group_runs(load_runs(tmp_path)), PRIMARY)}
    assert claims["vae-fd"]["verdict"] == "no meaningful effect"
    assert claims["vae-fm"]["verdict"] == "no meaningful effect"


def test_secondary_comparisons_are_holm_adjusted_and_include_stride_against_plain(tmp_path):
    _suite(tmp_path, cs_fd_gain=2.0, cs_fm_gain=0.1)
    claim = next(c for c in generative_claims(group_runs(load_runs(tmp_path)), PRIMARY) if c["id"] == "vae-fd")
    labels = [s["label"] for s in claim["comparisons"]]
    assert f"{PRIMARY['vae']} − {PRIMARY['vae']}-stride" in labels
    assert all(s["p_holm"] is None or s["p_holm"] >= (s["p"] or 0) for s in claim["comparisons"])


def test_the_report_is_written_from_run_files_alone(tmp_path):
    runs = tmp_path / "runs"
    names = _suite(runs, cs_fd_gain=2.0, cs_fm_gain=0.1)
    result = write_generative_report(tmp_path, runs, PRIMARY, include=names, pending=["dcgan-w1-baseline-s0"])
    text = (tmp_path / "report.md").read_text()
    assert "Suite not complete: 1 runs missing" in text and "vae-w1-baseline" in text
    assert (tmp_path / "figures" / "fd_curves.png").exists() and (tmp_path / "figures" / "nelbo_curves.png").exists()
    assert json.loads((tmp_path / "results.json").read_text())["claims"] == json.loads(json.dumps(result["claims"]))
    assert result["fd_classifiers"] == [CLASSIFIER]
