"""`convsim verify`: every section printed, exit code tied to the exact relations."""

import argparse
import json

import torch

from convsim import theory
from convsim.cli import main, verify


def args(**kw):
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    ns = parser.parse_args(["--seeds", "2", "--steps", "20"])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_run_prints_every_section_and_passes(capsys):
    """run() prints the identity, counterexample and toy tables and returns 0."""
    assert verify.run(args()) == 0
    out = capsys.readouterr().out
    for text in ("## 1. Identity", "## 2. Shifted-delta", "## 3. Kernel orthogonality vs CS", "PASS"):
        assert text in out
    for padding in ("full", "circular", "same", "valid"):
        assert f"| {padding}" in out
    assert out.count("| uniform ") == 2 and out.count("| smooth ") == 2


def test_run_writes_json(tmp_path, capsys):
    """--json writes every number, including the toy rows and the pass flag."""
    path = tmp_path / "verify.json"
    assert verify.run(args(json=str(path))) == 0
    data = json.loads(path.read_text())
    assert data["passed"] is True and len(data["toy"]["rows"]) == 4
    assert all(r["rel_error"] < 1e-12 for r in data["identity"] if r["exact"])


def test_run_fails_when_identity_breaks(monkeypatch, capsys):
    """A wrong prediction (off by 1e-6 relative) makes the command exit non-zero."""
    real = theory.predicted_feature_map_gram
    monkeypatch.setattr(theory, "predicted_feature_map_gram", lambda x, w, p="full": real(x, w, p) * (1 + 1e-6))
    assert verify.run(args()) == 1
    assert "FAIL" in capsys.readouterr().out


def test_run_restores_thread_count(capsys):
    """run() limits torch to one thread while it runs and restores the setting."""
    before = torch.get_num_threads()
    verify.run(args())
    assert torch.get_num_threads() == before


def test_cli_dispatch(capsys):
    """`convsim verify` reaches run() through the dispatcher."""
    assert main(["verify", "--seeds", "1", "--steps", "2"]) == 0
    assert "## 3." in capsys.readouterr().out


def test_table_columns_are_aligned():
    """Every line of a table has the same length (padded columns)."""
    lines = verify.table(["a", "long header"], [["xxxxxx", "1"], ["y", "22"]]).splitlines()
    assert len({len(line) for line in lines}) == 1 and lines[1].startswith("|---")
