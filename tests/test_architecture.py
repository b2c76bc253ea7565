"""Properties of the package's shape that review would otherwise have to remember.

The layer rule (which package may import which) is checked by import-linter in `make lint`
(contracts in pyproject.toml); these are the rules it cannot express.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

import pytest

import convsim

PACKAGE = Path(convsim.__file__).resolve().parent
MAX_FUNCTION_LINES = 80
# numba kernels are long, flat loops compiled as a whole; splitting them costs speed.
LENGTH_EXEMPT = {"convsim.nnk._numba"}
_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def module_files() -> dict[str, Path]:
    """Dotted name -> file, for every module of the installed convsim package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every module, class and function docstring."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment, not part of a docstring."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _NOT_CODE:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - docstring_lines(ast.parse(source))


def function_lengths(source: str) -> dict[str, int]:
    """Qualified name of every function and method (nested ones included) -> its lines of code.

    A function's lines run from its ``def`` to its last statement, nested functions included.
    """
    tree = ast.parse(source)
    code = code_lines(source)
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                span = range(child.lineno, (child.end_lineno or child.lineno) + 1)
                out[name] = sum(1 for n in span if n in code)
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def stdlib_clashes(modules: list[str] | dict[str, Path]) -> list[str]:
    """The dotted names (the package itself aside) with a part that names a standard-library module."""
    return [
        m
        for m in modules
        if any(not part.startswith("__") and part in sys.stdlib_module_names for part in m.split(".")[1:])
    ]


# ---------------------------------------------------------------- the checks themselves


def test_code_lines_skip_docstrings_comments_and_blank_lines():
    source = '''
def f(x):
    """A docstring
    over two lines."""
    # a comment

    y = (x +
         1)  # trailing comment
    text = """a string that is
    not a docstring"""
    return y
'''
    assert function_lengths(source) == {"f": 1 + 2 + 2 + 1}  # def, y = (2 lines), text = (2 lines), return


def test_nested_functions_and_methods_are_counted_with_qualified_names():
    source = "class A:\n    def m(self):\n        def inner():\n            return 1\n        return inner()\n"
    assert function_lengths(source) == {"A.m": 4, "A.m.inner": 2}


def test_stdlib_clashes_are_found_in_modules_and_packages():
    names = [
        "convsim",
        "convsim.io",  # a module
        "convsim.training.types",  # a module in a subpackage
        "convsim.logging.runs",  # a subpackage
        "convsim.data",
        "convsim.__main__",
    ]
    assert stdlib_clashes(names) == ["convsim.io", "convsim.training.types", "convsim.logging.runs"]


# ---------------------------------------------------------------- the package


def test_no_function_is_longer_than_the_limit():
    """Functions outside the numba kernels have at most MAX_FUNCTION_LINES lines of code."""
    too_long = []
    for module, path in module_files().items():
        if module in LENGTH_EXEMPT:
            continue
        for name, n in function_lengths(path.read_text(encoding="utf-8")).items():
            if n > MAX_FUNCTION_LINES:
                too_long.append(f"{module}.{name}: {n} lines")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines of code: " + ", ".join(sorted(too_long))


def test_no_module_is_named_after_a_standard_library_module():
    """A module called e.g. ``io`` or ``types`` is confusing to read and to import beside the real one."""
    clashes = stdlib_clashes(module_files())
    assert not clashes, f"modules named after standard-library modules: {clashes}"


def test_package_ships_py_typed():
    """PEP 561: the marker that tells type checkers to use the package's annotations."""
    assert (PACKAGE / "py.typed").is_file()


def test_py_typed_is_declared_as_package_data():
    """The wheel carries py.typed only when setuptools is told to include it."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    pyproject = PACKAGE.parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["convsim"]
