# Two commands set everything up: `make app` and `make test`. Both create .venv on first use and
# re-install only when a requirements file changes.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
# The optional Qwen2.5-VL environment: torch 2.14.1 + torchvision (Qwen's processor needs torchvision, which does
# not import beside requirements.txt's torch 2.13.0 CPU build); ~5.5 GB, so not part of `make test` or CI.
QWEN_VENV ?= .venv-qwen
QWEN_PY := $(QWEN_VENV)/bin/python
QWEN_TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: app test test-slow test-qwen quality format clean

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

## The slow tests: the whole tiny recipe from nothing, every paper recipe at small scale (~11 min on 2 cores)
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -m slow tests/slow

## Optional: the Qwen2.5-VL path (tiny random Qwen2.5-VL) in its own venv with torch 2.14.1 + torchvision
test-qwen: $(QWEN_VENV)/.installed
	$(QWEN_PY) -m pytest -m qwen tests/qwen

$(QWEN_VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(QWEN_PY) || python3 -m venv $(QWEN_VENV)
	grep -v '^torch==' requirements.txt > $(QWEN_VENV)/requirements.txt
	$(QWEN_PY) -m pip install --disable-pip-version-check $(QWEN_TORCH) -r $(QWEN_VENV)/requirements.txt \
		-r requirements-dev.txt
	touch $@

## Lint and check formatting
quality: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Fix what ruff can fix
format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(QWEN_VENV) .pytest_cache .ruff_cache
