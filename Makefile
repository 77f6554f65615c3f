# The two commands: `make run` and `make test`. Each does all of its own set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
LINTED := platform feedback retrain sim migrations tests bench wsgi.py clients/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast screenshots lint typecheck link migrate install browsers clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Full install, redone only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt clients/python/pyproject.toml | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[dev,sim]' --config-settings editable_mode=strict
	$(PIP) install -q -c constraints.txt -e clients/python
	touch $(STAMP)

install: $(STAMP) link

# The strict editable install links files that existed at install time; re-link so new modules are seen (seconds).
link: | $(STAMP)
	@$(PIP) install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict >/dev/null 2>&1

migrate: install
	$(VENV)/bin/flywheel db upgrade

run: install
	$(VENV)/bin/flywheel up

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

typecheck: install
	$(VENV)/bin/mypy
	cd clients/python && ../../$(VENV)/bin/mypy

test: install browsers lint typecheck
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The development loop: everything but the slow tests (training, real-text quality, processes, the browser).
test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The README's dashboard pictures, regenerated on purpose (a test run writes its screenshots to a temporary folder).
screenshots: install browsers
	FLYWHEEL_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(VENV)/bin/python -m pytest tests/dashboard/test_browser.py

# Debian's chromium for the dashboard's browser tests (Playwright drives it; Playwright's own browser download
# cannot work air-gapped). Installed only when missing; without it the browser tests skip and say why.
browsers:
	@test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "could not install chromium: the browser tests will skip" >&2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
