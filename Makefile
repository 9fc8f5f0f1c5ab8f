# Two commands on a fresh machine with only Python 3.11: `make run` and `make test`.
# Both create .venv and install the project into it (again only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint migrate install clean bench browser screenshots

run: $(INSTALLED)
	$(BIN)/rekey run

# Both cores (pytest-xdist): a module's tests stay on one worker (module-scoped workers, brokers and
# servers); worker gwN uses Redis db REKEY_TEST_REDIS_DB + N. `make test XDIST_ARGS=` runs serially.
XDIST_ARGS ?= -n 2 --dist loadfile
test: $(INSTALLED)
	$(BIN)/pytest $(XDIST_ARGS) $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy app tasks integrations

# Debian's Chromium for the browser tests (needs root; CI's .ci/run does the same), and Playwright.
CHROMIUM ?= /usr/bin/chromium
browser: $(INSTALLED)
	@if [ ! -x $(CHROMIUM) ]; then apt-get update && apt-get install -y chromium chromium-driver; fi
	$(BIN)/python -m pip install -e '.[browser]'
	@$(CHROMIUM) --version

# A screenshot of every page into docs/screenshots/ (PostgreSQL, Redis and Chromium needed).
screenshots: $(INSTALLED)
	$(BIN)/pytest -q -p no:cacheprovider tests/browser/test_screenshots.py --screenshots docs/screenshots

bench: $(INSTALLED)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

migrate: $(INSTALLED)
	$(BIN)/rekey db upgrade

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
