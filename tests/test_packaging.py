"""A wheel built from the repository is complete and works on its own, in a fresh virtual environment.

The wheel is built from a copy of the package sources (not in the repository, where setuptools
would reuse a stale ``build/`` folder) and installed into a new virtual environment without
downloading anything: the dependencies (torch, numpy, ...) are the test environment's, made
visible by a ``.pth`` file. The test environment holds an editable install of convsim, and a
path added by a ``.pth`` line does not run that folder's own ``.pth`` files, so the editable
finder stays off there; the tests check that ``convsim`` is imported from the new environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import oracles

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "src" / "convsim"
# What the build reads besides the package: the project table and the files it names.
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _source_modules() -> set[str]:
    """Every module file of the package, as a path inside the wheel (``convsim/...py``)."""
    return {
        path.relative_to(SOURCES.parent).as_posix() for path in SOURCES.rglob("*.py") if "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the repository's package, built offline with the installed setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    project = tmp / "project"
    shutil.copytree(SOURCES, project / "src" / "convsim", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip, "--wheel-dir", str(dist), str(project)], cwd=tmp)
    (built,) = dist.glob("convsim-*.whl")
    return built


@pytest.fixture(scope="module")
def environment(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed and this environment's packages visible."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=env_dir)
    ours = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (Path(purelib.stdout.strip()) / "test_environment.pth").write_text("\n".join(ours) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index"]
    _run([*pip, str(wheel)], cwd=env_dir)
    return env_dir


def test_wheel_ships_every_module_and_py_typed(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "convsim/py.typed" in names
    assert _source_modules() <= names, sorted(_source_modules() - names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "convsim = convsim.cli:entry" in archive.read(entry_points).decode()


def test_installed_wheel_runs_the_cli_and_computes_cs(environment: Path):
    bin_dir = environment / ("Scripts" if os.name == "nt" else "bin")
    helped = _run([str(bin_dir / "convsim"), "--help"], cwd=environment)
    assert "usage: convsim" in helped.stdout
    w = oracles.rand(5, 2, 3, 3, seed=3)
    script = (
        "import json, sys, torch, convsim\n"
        "w = torch.tensor(json.loads(sys.argv[1]), dtype=torch.float64)\n"
        "print(json.dumps([convsim.__file__, convsim.conv_similarity(w).item()]))\n"
    )
    done = _run([str(bin_dir / "python"), "-c", script, json.dumps(w.tolist())], cwd=environment)
    imported_from, cs = json.loads(done.stdout)
    assert Path(imported_from).resolve().is_relative_to(environment.resolve())
    assert cs == pytest.approx(oracles.cs_loss(w), rel=1e-10)
