"""Assemble BENCHMARKS.md from the tables the benchmark scripts wrote under benchmarks/results/.

    python benchmarks/bench_similarity.py && python benchmarks/bench_nnk.py \
        && python benchmarks/bench_training.py && python benchmarks/collect.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    ("similarity.md", "CS core (issue: core library)"),
    ("nnk.md", "NNK and channel-wise NNK (issue: convsim.nnk)"),
    ("training.md", "Training on a CPU (issue: experiments)"),
]
HEADER = """# Benchmarks

Every table below was written by a script under `benchmarks/` (medians of repeats, ratios against
a baseline timed in the same run); this file is assembled by `benchmarks/collect.py`, so no number
here is typed by hand. Targets come from the issues. Re-run with `make bench`.
"""


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
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
