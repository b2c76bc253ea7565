"""Copy a real `convsim reproduce` result into the repository's docs and README.

    python scripts/splice_report.py runs/quick

copies `report.md`, its PNG figures and `results.json` to `docs/quick/`, and replaces the text
between the README markers `<!-- quick-report:start -->` and `<!-- quick-report:end -->` with the
report's tables, so the README never carries a number typed by hand.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- quick-report:start -->", "<!-- quick-report:end -->"


# The report's sections shown in the README (the rest, per-run and per-layer tables included,
# stays in docs/quick/report.md).
README_SECTIONS = (
    "Claims",
    "Kernel orthogonality versus feature-map similarity",
    "Figure 4: ResNet18",
    "Figure 5: test accuracy versus initialisation iterations",
    "Smaller models",
    "Momentum",
    "Early stopping",
)
# Within the overlap section only the correlation table is shown.
OVERLAP = "Channel-wise NNK overlap"
CORRELATION = "**Correlation with test accuracy"


def tables_and_claims(report: str) -> str:
    """The report's claims and main tables, headings demoted one level, figure links dropped."""
    keep = []
    for section in re.split(r"(?m)^(?=## )", report):
        title = section.splitlines()[0][3:].strip() if section.startswith("## ") else ""
        if title == OVERLAP and CORRELATION in section:
            part = section[section.index(CORRELATION):]
            part = part.split("\n**", 1)[0] if "\n**" in part[2:] else part
            section = f"## {title}: last conv layer against test accuracy\n\n" + part
        elif title not in README_SECTIONS:
            continue
        section = re.sub(r"(?m)^(#+) ", lambda m: "#" + m.group(1) + " ", section)
        keep.append(re.sub(r"(?m)^!\[.*\]\(.*\)\s*$", "", section).strip())
    return "\n\n".join(keep)


def main(run_dir: str) -> int:
    src = Path(run_dir)
    report = (src / "report.md").read_text()
    dest = ROOT / "docs" / "quick"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in list(src.glob("*.png")) + list(src.glob("*.md")) + list(src.glob("*.json")) + list(src.glob("*.csv")):
        shutil.copy2(f, dest / f.name)
    for sub in ("figures", "overlap"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dest / sub, ignore=shutil.ignore_patterns("*.pt"))
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    body = f"{START}\n{tables_and_claims(report)}\n{END}"
    text = text[: text.index(START)] + body + text[text.index(END) + len(END) :]
    readme.write_text(text)
    print(f"copied {src} -> {dest} and spliced the tables into README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/quick"))
