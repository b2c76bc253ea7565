"""Assemble BENCHMARKS.md from the tables the benchmark scripts wrote under benchmarks/results/.

    python benchmarks/bench_similarity.py && python benchmarks/bench_cs_step.py && python benchmarks/bench_nnk.py \
        && python benchmarks/bench_nnk_solvers.py && python benchmarks/bench_training.py \
        && python benchmarks/collect.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    ("cs_step.md", "CS inside a training step (issue 13): the headline"),
    ("similarity.md", "CS core (issue: core library)"),
    ("nnk.md", "NNK and channel-wise NNK (issue: convsim.nnk)"),
    ("nnk_solvers.md", "NNK solvers: exact against the released pruning solver (issue 14)"),
    ("training.md", "Training on a CPU (issue: experiments)"),
]
HEADER = """# Benchmarks

Every table below was written by a script under `benchmarks/` (medians of repeats, ratios against
a baseline timed in the same run); this file is assembled by `benchmarks/collect.py`, so no number
here is typed by hand. Targets come from the issues. Re-run with `make bench`.

The headline is what a user pays: a ResNet18 training step with the CS regulariser against the
same step without it, measured by alternating steps in one process (first section).
"""


def quick_cost() -> str:
    """What the committed `quick` run (docs/quick/results.json, from `make demo`) cost, per model."""
    path = ROOT / "docs" / "quick" / "results.json"
    if not path.exists():
        return "_no docs/quick/results.json: run `make demo` and `scripts/splice_report.py` first_\n"
    runs = [r for r in json.loads(path.read_text())["runs"] if r.get("complete")]
    by_model = defaultdict(list)
    for r in runs:
        by_model[r["group"].split("-")[0]].append(r["wall_time"])
    rows = ["| model | runs | wall time per run (s, mean) | total (s) |", "|---|---:|---:|---:|"]
    for model, times in sorted(by_model.items()):
        rows.append(f"| {model} | {len(times)} | {sum(times) / len(times):.1f} | {sum(times):.0f} |")
    total = sum(sum(t) for t in by_model.values())
    rows.append(f"| **all** | {len(runs)} | | **{total:.0f}** |")
    return (
        "Training wall time of the runs of the committed `quick` suite (`make demo`), from each run's "
        "`summary.json`; the report, figures and the NNK overlap analysis come on top.\n\n" + "\n".join(rows) + "\n"
    )


def main() -> int:
    parts = [HEADER]
    for name, title in SECTIONS:
        path = ROOT / "benchmarks" / "results" / name
        if not path.exists():
            print(f"missing {path}: run its benchmark first", file=sys.stderr)
            return 1
        body = path.read_text().strip()
        # Nest each file's headings under its section.
        body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
        parts.append(f"## {title}\n\n{body}\n")
    parts.append("## Cost of `make demo` (suite `quick`)\n\n" + quick_cost())
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
