# The two commands of the README: `make serve` and `make test`. Both set everything up first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-installed
PYTEST_ARGS ?=

.PHONY: setup serve test test-fast test-oldest lint bench upgrade dist
setup: $(STAMP)

$(STAMP): scripts/setup.sh constraints.txt pyproject.toml $(wildcard plugins/*/pyproject.toml plugins/*/.install-extras)
	bash scripts/setup.sh
	touch $@

serve: $(STAMP)
	$(PY) -m atomr_infer serve $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false \
	  $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# Refresh the lock (constraints.txt) to the newest versions the declared ranges allow,
# reinstall .venv from it and run every test: commit the new lock only if they pass.
upgrade:
	bash scripts/lock.sh
	bash scripts/setup.sh
	touch $(STAMP)
	$(MAKE) test

# Every distribution's wheel and sdist into dist/, checked by twine (the packaging test in
# `make test` does the same into a temporary folder).
dist: $(STAMP)
	$(PY) scripts/build_dists.py dist

# The torch and onnx runtimes on the oldest transformers the ranges allow (own venv).
test-oldest:
	bash scripts/test_oldest.sh
