"""A run's own channel-wise NNK record, kept beside its run files so that no checkpoint is needed later.

The overlap analysis needs a run's weights, and checkpoints are never committed: a study that
spans machines would lose the analysis of every run trained on a machine that is gone. So the
analysis of each run is stored in ``runs/<name>/cwnnk.json``, keyed by the run's ``summary.json``
and the analysis settings that change the numbers; it is written where the checkpoint exists (by
``convsim reproduce`` right after the run, or by ``convsim report``) and committed with the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convsim._internal.files import atomic_write_json
from convsim.reporting.runs import read_json

RUN_RECORD = "cwnnk.json"
# The analysis settings a record depends on, with their defaults (those of overlap_analysis); batch
# size and data folder change no number.
KEYED_DEFAULTS: dict[str, Any] = {
    "n_samples": 2000,
    "k": 25,
    "kernel": "cosine",
    "solver": "exact",
    "pruning_tol": 1e-6,
    "split": "train",
    "layers": None,
    "seed": 0,
}


def overlap_study(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A suite's overlap options (``SUITE_OPTIONS[suite]["overlap"]``) as (the study whose runs are
    analysed, default "main"; the analysis settings). ``skip`` is the caller's to check first."""
    settings = {k: v for k, v in options.items() if k != "study"}
    return options.get("study", "main"), settings


def record_key(run_dir: Path, options: Mapping[str, Any]) -> str:
    """SHA-256 of the run's summary and the keyed settings (defaults filled in): a record is valid only for both."""
    digest = hashlib.sha256((Path(run_dir) / "summary.json").read_bytes())
    keyed = {k: options.get(k, default) for k, default in KEYED_DEFAULTS.items()}
    keyed["layers"] = list(keyed["layers"]) if keyed["layers"] else None
    digest.update(json.dumps(keyed, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def stored_record(run_dir: Path, options: Mapping[str, Any]) -> dict | None:
    """The run's record for these settings, or None (none stored, torn, or for another summary or settings)."""
    stored = read_json(Path(run_dir) / RUN_RECORD)
    if not stored or stored.get("key") != record_key(run_dir, options):
        return None
    return {**stored["record"], "path": str(run_dir)}  # the folder it is read from now


def store_record(run_dir: Path, options: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Write the run's record (atomically) under the key of its summary and these settings."""
    atomic_write_json(Path(run_dir) / RUN_RECORD, {"key": record_key(run_dir, options), "record": dict(record)})
