# The two commands: `make run` and `make test`. Each does all of its own set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint typecheck link migrate install browsers clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Full install, redone only when the dependency files change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e '.[dev]' --config-settings editable_mode=strict
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
	$(VENV)/bin/ruff check platform feedback retrain migrations tests bench wsgi.py
	$(VENV)/bin/ruff format --check platform feedback retrain migrations tests bench wsgi.py

typecheck: install
	$(VENV)/bin/mypy

test: install browsers lint typecheck
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Debian's chromium for the dashboard's browser tests (Playwright drives it; Playwright's own browser download
# cannot work air-gapped). Installed only when missing; without it the browser tests skip and say why.
browsers:
	@test -x /usr/bin/chromium || { apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "could not install chromium: the browser tests will skip" >&2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
