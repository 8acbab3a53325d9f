# Every target creates .venv when missing: torch==2.13.0 (CPU build) first, then the project with its dev extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The suite runs in parallel (pytest-xdist; an idle worker takes tests queued for a busy one), slow tests first;
# TEST_WORKERS=0 runs it in one process. The 15 slowest tests are printed at the end, so that regressions show.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The demo study (nine schedules, 3 seeds, CartPole-v1: 27 runs, about 7 minutes on 2 cores), then its report.
# Re-running skips the completed runs and only redraws the report.
DEMO := runs/studies/demo
demo: $(STAMP)
	$(PY) -m experiments.train -m +experiment=demo
	$(PY) -m analysis.report $(DEMO) --out $(DEMO)/report
	@echo "Demo report: $(DEMO)/report/report.md (figures in $(DEMO)/report/figures)"

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf runs multirun outputs .pytest_cache
