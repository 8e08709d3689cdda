# The two commands README.md names: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-test demo test lint clean

setup: $(VENV)/.autoseg-installed
setup-test: $(VENV)/.autoseg-installed-test

$(VENV)/.autoseg-installed: setup.py scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

$(VENV)/.autoseg-installed-test: setup.py scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh test

# Plans, preprocesses, trains fold 0 with the Combo loss and validates, on the bundled Hippocampus sample.
demo: setup
	$(VENV)/bin/autoseg plan_and_train --loss combo

# pytest exits 5 when it collected no test; that is reported, not hidden.
test: setup-test
	$(PY) -m pytest -v --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup-test
	$(VENV)/bin/ruff check autoseg tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
