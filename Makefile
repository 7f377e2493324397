# Two commands set everything up: `make app` and `make test`. Both create .venv on first use and
# re-install only when a requirements file changes.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check

.PHONY: app test test-slow quality format clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) -r requirements-dev.txt
	touch $@

## Serve the app on http://127.0.0.1:7860
app: $(VENV)/.installed
	$(PY) app.py

## Run the fast test suite (doctests included)
test: $(VENV)/.installed-dev
	$(PY) -m pytest

## The slow tests: the whole tiny recipe from nothing (~10 min on 2 cores)
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -m slow tests/slow

## Lint and check formatting
quality: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Fix what ruff can fix
format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
