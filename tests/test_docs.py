"""The documentation site builds strictly, and the Python examples on its pages run.

`mkdocs build --strict` fails on a reference to a function that no longer exists, a docstring
griffe cannot parse, a link to a page or figure that is not in the site and a page missing from
the nav, so a change that breaks the site fails here (and in `make test`), not after publishing.

The examples: every ```` ```python ```` block of the pages in docs/site runs on its own, in a
fresh namespace, unless the line right before it says otherwise:

* ``<!-- docs-test: skip (REASON) -->``: not run (it needs torchrun, a compiler, ...);
* ``<!-- docs-test: requires MODULE -->``: skipped when MODULE cannot be imported (an optional extra);
* ``<!-- docs-test: continues the previous example -->``: runs after the previous block, in its namespace.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "site"
MARKER = re.compile(r"^<!-- docs-test: (.*) -->$")
SKIP = re.compile(r"skip \((.+)\)")
REQUIRES = re.compile(r"requires ([\w.]+)")
CONTINUES = "continues the previous example"


@dataclass
class Example:
    """A runnable Python block of a page (with the blocks it continues, in order)."""

    page: str
    line: int
    code: str
    skip: str | None = None
    requires: list[str] = field(default_factory=list)


def _apply_marker(marker: str, example: Example, previous: Example | None) -> None:
    if m := SKIP.fullmatch(marker):
        example.skip = m.group(1)
    elif m := REQUIRES.fullmatch(marker):
        example.requires.append(m.group(1))
    elif marker == CONTINUES:
        if previous is None:
            raise ValueError(f"{example.page}:{example.line}: continues an example, but none comes before it")
        example.code = previous.code + "\n" + example.code
        example.skip = previous.skip
        example.requires = previous.requires + example.requires
    else:
        raise ValueError(f"{example.page}:{example.line}: unknown docs-test marker {marker!r}")


def page_examples(path: Path) -> list[Example]:
    """The ```python blocks of one Markdown page, markers applied."""
    lines = path.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        end = lines.index("```", i + 1)
        example = Example(path.relative_to(PAGES).as_posix(), i + 2, "\n".join(lines[i + 1 : end]))
        if i > 0 and (m := MARKER.match(lines[i - 1].strip())):
            _apply_marker(m.group(1), example, examples[-1] if examples else None)
        examples.append(example)
        i = end + 1
    return examples


EXAMPLES = [example for page in sorted(PAGES.rglob("*.md")) for example in page_examples(page)]


def test_pages_have_examples_to_run():
    # Guards the collection itself: a changed fence or folder would otherwise run nothing and pass.
    assert sum(e.skip is None for e in EXAMPLES) >= 10


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.page}:{e.line}" for e in EXAMPLES])
def test_page_example_runs(example: Example):
    if example.skip:
        pytest.skip(example.skip)
    for module in example.requires:
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    exec(compile(example.code, f"docs/site/{example.page}:{example.line}", "exec"), {"__name__": "__docs__"})


def _needs_docs_tools() -> None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers", "griffe"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install '.[docs]'; make install does)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict`` (any warning fails the build)."""
    _needs_docs_tools()
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return site


def test_site_builds_strictly_with_every_page(site: Path):
    nav = (site / "index.html").read_text(encoding="utf-8")
    for page in sorted(PAGES.rglob("*.md")):
        uri = page.relative_to(PAGES).with_suffix("").as_posix()
        built = site / (uri.removesuffix("index") if uri.endswith("index") else uri + "/") / "index.html"
        assert built.is_file(), uri
    assert "API reference" in nav


def test_committed_reports_are_pages_with_their_figures(site: Path):
    for suite in ("quick", "fmnist"):
        page = site / "experiments" / suite / "report" / "index.html"
        figures = re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text(encoding="utf-8"))
        assert figures, suite
        assert all((page.parent / figure).resolve().is_file() for figure in figures), suite


def test_no_restructuredtext_markup_reaches_the_api_reference(site: Path):
    rst = re.compile(r":(?:math|func|class|meth|mod|data|attr):`|\.\. math::")
    pages = sorted((site / "reference").rglob("*.html"))
    assert pages
    assert [p.parent.name for p in pages if rst.search(p.read_text(encoding="utf-8"))] == []


def test_math_directive_becomes_a_display_block_at_its_indent():
    _needs_docs_tools()
    spec = importlib.util.spec_from_file_location("griffe_docstrings", ROOT / "docs" / "hooks" / "griffe_docstrings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Args:\n    w: the weight\n\n        .. math::\n            a = b\n\n            + c\n\n        and more."
    expected = "Args:\n    w: the weight\n\n        $$\n        a = b\n        + c\n        $$\n\n        and more."
    assert module.rst_to_markdown(text) == expected
