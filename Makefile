PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test demo study bench docs clean data

install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

# Fashion-MNIST from Debian's package where apt is available and we are root;
# elsewhere `convsim.data.load(..., download=True)` fetches and verifies it.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
		&& echo "Fashion-MNIST: installed dataset-fashion-mnist" \
		|| echo "Fashion-MNIST: apt install failed; use download=True"; \
	else \
		echo "Fashion-MNIST: not installed (no apt or not root); the loader can download it"; \
	fi

# Lint, formatting, the layer rule (import-linter contracts) and types; configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# The 6-minute demo: the quick suite into runs/quick, its report copied to docs/quick and spliced into README.
demo: install
	$(VENV)/bin/convsim reproduce --suite quick --out runs/quick
	$(PY) scripts/splice_report.py runs/quick quick

# The powered study (hours on 2 CPU cores; resumes from the runs committed in docs/fmnist/runs).
study: install
	$(VENV)/bin/convsim reproduce --suite fmnist --out docs/fmnist --jobs 2 --threads 1 --log none
	$(PY) scripts/splice_report.py docs/fmnist fmnist

# The documentation site (pages in docs/site, mkdocs.yml) into site/, strictly: any warning
# (a broken reference, a docstring griffe cannot parse, a link to a missing page) fails the build.
# `make test` builds it too (tests/test_docs.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_cs_step.py
	$(PY) benchmarks/bench_nnk.py
	$(PY) benchmarks/bench_nnk_solvers.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/collect.py

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
