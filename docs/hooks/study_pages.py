"""mkdocs hook: committed reports become pages of the site at build time, never copied by hand.

The site's own pages live in ``docs/site``. The study reports stay where ``convsim reproduce`` and
``scripts/splice_report.py`` write them (``docs/quick``, ``docs/fmnist``), next to hundreds of run
files that must not reach the site, so the docs folder cannot simply be ``docs/``. This hook adds
each suite's ``report.md`` and the figures it links (every ``.png`` of the suite folder outside
``runs/``) under ``experiments/<suite>/``, keeping their relative paths so the report's image links
work unchanged, and the repository's ``BENCHMARKS.md`` and ``RELIABILITY.md`` as pages.

Configured in mkdocs.yml under ``hooks``; ``mkdocs build --strict`` fails on a report link that
does not resolve, like on any page of the site.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

# suite folder under docs/ -> folder of the site
SUITES = {
    "quick": "experiments/quick",
    "fmnist": "experiments/fmnist",
    "analyze": "experiments/analyze",
    "generative": "experiments/generative",
}
# file at the repository root -> page of the site
ROOT_PAGES = {"BENCHMARKS.md": "benchmarks.md", "RELIABILITY.md": "reliability.md"}


def _sources(root: Path) -> dict[str, Path]:
    """Site path -> file on disk, for every report, figure and root page that exists."""
    found: dict[str, Path] = {}
    for suite, dest in SUITES.items():
        folder = root / "docs" / suite
        if not (folder / "report.md").is_file():
            continue
        found[f"{dest}/report.md"] = folder / "report.md"
        for figure in sorted(folder.rglob("*.png")):
            rel = figure.relative_to(folder)
            if rel.parts[0] != "runs":
                found[f"{dest}/{rel.as_posix()}"] = figure
    for name, dest in ROOT_PAGES.items():
        if (root / name).is_file():
            found[dest] = root / name
    return found


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    root = Path(config.config_file_path).resolve().parent
    for uri, path in _sources(root).items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
