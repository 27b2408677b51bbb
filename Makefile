# `make train` and `make test` create .venv on first use with Python 3.13 and
# reinstall only when pyproject.toml changes. PYTHON=/path/to/python3.13 overrides.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed

# python3.13 on PATH if it runs, else pyenv's 3.13, else nothing (and a clear error below).
PYTHON ?= $(shell \
  if python3.13 -c '' >/dev/null 2>&1; then echo python3.13; \
  elif command -v pyenv >/dev/null 2>&1; then \
    for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.[0-9]+)?$$' | sort -rV); do \
      p="$$(pyenv root)/versions/$$v/bin/python3.13"; \
      if "$$p" -c '' >/dev/null 2>&1; then echo "$$p"; break; fi; \
    done; \
  fi)

.PHONY: train test lint clean-venv

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: Python 3.13 not found; install it (e.g. 'pyenv install 3.13') or run 'make PYTHON=/path/to/python3.13'" >&2; \
	  exit 1; \
	fi
	@[ -x $(VENV)/bin/python ] || "$(PYTHON)" -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/mario train

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
