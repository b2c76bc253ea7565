"""Splice a real `convsim reproduce` report into the repository's README (and copy it into docs/).

    python scripts/splice_report.py runs/quick quick     # copies the report to docs/quick/ first
    python scripts/splice_report.py docs/fmnist fmnist   # the study's report already lives there

replaces the text between the README markers `<!-- NAME-report:start -->` and
`<!-- NAME-report:end -->` with the report's claims and main tables, so the README never carries a
number typed by hand. When the source folder is not `docs/NAME`, `report.md`, its figures,
`results.json`, `summary.csv` and the cached overlap analysis are copied there first.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# The report's sections shown in the README, per suite (the rest, per-run and per-layer tables
# included, stays in docs/NAME/report.md).
README_SECTIONS = {
    "quick": (
        "Claims",
        "Kernel orthogonality versus feature-map similarity",
        "Figure 4: ResNet18",
        "Figure 5: test accuracy versus initialisation iterations",
        "Smaller models",
        "Momentum",
        "Early stopping",
    ),
    "fmnist": ("Claims", "Setup", "Claim (d) at matched strength"),
    "generative": ("Claims",),
}
# Within the overlap section only the correlation table is shown.
OVERLAP = "Channel-wise NNK overlap"
CORRELATION = "**Correlation with test accuracy"


def tables_and_claims(report: str, sections: tuple[str, ...]) -> str:
    """The report's claims and the ``sections`` given, headings demoted one level, figure links dropped."""
    keep = []
    for section in re.split(r"(?m)^(?=## )", report):
        title = section.splitlines()[0][3:].strip() if section.startswith("## ") else ""
        if title == OVERLAP and CORRELATION in section:
            part = section[section.index(CORRELATION) :]
            part = part.split("\n**", 1)[0] if "\n**" in part[2:] else part
            section = f"## {title}: last conv layer against test accuracy\n\n" + part
        elif title not in sections:
            continue
        section = re.sub(r"(?m)^(#+) ", lambda m: "#" + m.group(1) + " ", section)
        keep.append(re.sub(r"(?m)^!\[.*\]\(.*\)\s*$", "", section).strip())
    return "\n\n".join(keep)


def copy_report(src: Path, dest: Path) -> None:
    """Replace ``dest`` with the report files of ``src`` (no run folders, no checkpoints)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in list(src.glob("*.png")) + list(src.glob("*.md")) + list(src.glob("*.json")) + list(src.glob("*.csv")):
        shutil.copy2(f, dest / f.name)
    for sub in ("figures", "overlap"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dest / sub, ignore=shutil.ignore_patterns("*.pt"))


def main(run_dir: str, name: str) -> int:
    if name not in README_SECTIONS:
        raise SystemExit(f"unknown report name {name!r}; expected one of {sorted(README_SECTIONS)}")
    src, dest = Path(run_dir), ROOT / "docs" / name
    if src.resolve() != dest.resolve():
        copy_report(src, dest)
    report = (dest / "report.md").read_text()
    start, end = f"<!-- {name}-report:start -->", f"<!-- {name}-report:end -->"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    body = f"{start}\n{tables_and_claims(report, README_SECTIONS[name])}\n{end}"
    text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    readme.write_text(text)
    print(f"spliced the tables of {dest / 'report.md'} into README.md")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/splice_report.py SUITE_DIR NAME   (NAME: quick or fmnist)")
    sys.exit(main(sys.argv[1], sys.argv[2]))
