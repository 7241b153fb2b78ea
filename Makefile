# The two commands a fresh machine needs:  make demo  (set up + run the demo)  and  make test  (set up + tests).
# Set-up is idempotent: it re-installs only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast contract bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/setup.sh
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/mmapps demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

contract: setup
	$(VENV)/bin/python ../shared/check/contract.py

bench: setup
	$(VENV)/bin/mmapps bench medical && $(VENV)/bin/mmapps bench driving && $(VENV)/bin/mmapps bench assistant

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache demo_out
