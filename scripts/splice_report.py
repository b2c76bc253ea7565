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


def tables_and_claims(report: str) -> str:
    """The report's sections that hold tables or the claims verdicts, figure links dropped."""
    keep = []
    for section in re.split(r"(?m)^(?=## )", report):
        if section.startswith("## ") and ("|" in section or "claim" in section.lower()):
            # Demote headings one level so they nest under the README's own section.
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
